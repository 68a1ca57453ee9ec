"""nbgrader kept warm (course_lib.grading.nbgrader_runner): what it writes is what nbgrader writes."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import ASSIGNMENTS, REPO, SOLUTION_STUDENT
from course_lib import grading
from course_lib.grading.nbgrader_runner import NbgraderRunner

# nbgrader's executor with the pipeline's settings (and the sandbox's kernel transport and client,
# without the sandbox) runs a notebook whose cell writes a line into every descriptor of its kernel,
# sockets included, as the hostile `forge_recheck` submission does; prints the seconds it took.
EXECUTE_FORGER = textwrap.dedent("""
    import sys, time
    import nbformat
    from nbgrader.preprocessors import Execute
    from traitlets.config import Config
    from course_lib.grading.nbgrader_runner import nbgrader_settings

    config = Config()
    settings = {**nbgrader_settings(3), "KernelManager.transport": "ipc",
                "KernelManager.ip": sys.argv[1] + "/kernel",
                "KernelManager.client_class": "course_lib.grading.sandbox.SandboxKernelClient"}
    for dotted, value in settings.items():
        section, _, name = dotted.rpartition(".")
        config[section][name] = value
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3",
                                                            "display_name": "Python 3",
                                                            "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell(
        "import os\\nfor fd in range(3, 64):\\n    try:\\n"
        "        os.write(fd, b'{\\"event\\": \\"cell\\"}\\\\n')\\n"
        "    except OSError:\\n        pass")]
    started = time.monotonic()
    try:
        Execute(config=config).preprocess(nb, {"metadata": {"path": sys.argv[1]}})
    except Exception as exc:  # the broken channels may fail the run: that is not the point
        print(type(exc).__name__, file=sys.stderr)
    print(round(time.monotonic() - started, 1))
""")


@pytest.mark.slow
def test_a_kernel_that_broke_its_own_channels_does_not_hold_nbgrader(tmp_path):
    """The pipeline stops kernels by signal: with a graceful shutdown, jupyter_client's request on
    the broken control channel blocked for good (seen in the suite as a hostile notebook holding
    its task until the nbgrader runner's deadline; here, every time)."""
    proc = subprocess.run([sys.executable, "-c", EXECUTE_FORGER, str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert float(proc.stdout.split()[-1]) < 60, proc.stdout + proc.stderr[-3000:]


@pytest.mark.slow
def test_warm_feedback_pages_are_nbgraders_own(graded_course):
    """The runner compiles the feedback templates once per process: its pages, the first and
    the ones after it (from the compiled code), are byte for byte `nbgrader generate_feedback`'s."""
    assignment = ASSIGNMENTS[0]
    page = (graded_course / "feedback" / SOLUTION_STUDENT / assignment
            / grading.notebook_name(assignment).replace(".ipynb", ".html"))
    grading.run_nbgrader(["generate_feedback", assignment, "--student", SOLUTION_STUDENT,
                          "--force"], cwd=graded_course)
    stock = page.read_bytes()
    page.unlink()
    with NbgraderRunner(graded_course, assignment, {}, dict(os.environ)) as runner:
        for _ in range(2):
            ok, log = runner.run("feedback", SOLUTION_STUDENT, deadline_s=600)
            assert ok, log
            assert page.read_bytes() == stock
            page.unlink()


def test_the_compiled_schema_check_raises_what_jsonschema_raises():
    """The runner's cached validation (nbgrader_runner.compiled_schema_validate) against
    jsonschema's own validate on nbgrader's cell-metadata schema: valid metadata passes both;
    every broken one fails both, with the same message and path."""
    import json
    from pathlib import Path

    import jsonschema
    import nbgrader.nbgraderformat as formats

    from course_lib.grading.nbgrader_runner import compiled_schema_validate

    schema = json.loads((Path(formats.__file__).parent / "v3.json").read_text())
    good = {"schema_version": 3, "grade": True, "solution": False, "locked": True,
            "points": 2, "grade_id": "part1-tests"}
    cases = [good, {**good, "points": "two"}, {**good, "grade": "yes"},
             {k: v for k, v in good.items() if k != "grade_id"}, {**good, "task": 1},
             {**good, "grade_id": 7}, {}, {"schema_version": 3}]
    validate = compiled_schema_validate()
    outcomes = set()
    for metadata in cases * 2:  # the second round uses the compiled validator
        try:
            jsonschema.validate(metadata, schema)
            expected = None
        except jsonschema.ValidationError as exc:
            expected = (exc.message, list(exc.path))
        try:
            validate(metadata, schema)
            got = None
        except jsonschema.ValidationError as exc:
            got = (exc.message, list(exc.path))
        assert got == expected, metadata
        outcomes.add(expected is None)
    assert outcomes == {True, False}  # both kinds were seen
