"""What the warm servers preload before forking (course_lib.grading.inside.warm): a warm-up may
make a child faster, never change what it shows."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

# One IPython shell runs a failing check and prints its traceback text, in a fresh interpreter
# ("cold") or in a child forked after inside.warm.preload ("warm", as a kernel of the nursery).
FIRST_TRACEBACK = textwrap.dedent("""
    import contextlib, io, json, os, sys

    def traceback_text():
        from IPython.core.interactiveshell import InteractiveShell
        shell = InteractiveShell.instance()
        shell.run_line_magic("colors", "Linux")
        shell.run_cell("from course_lib.checks import ex01_standard as checks\\n"
                       "def size(*args):\\n    raise NotImplementedError()")
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            shell.run_cell("checks.check_output_size(size)")
        return out.getvalue()

    if sys.argv[1] == "cold":
        print(json.dumps(traceback_text()))
    else:
        from course_lib.grading.inside.warm import preload
        preload(["course_lib.checks.ex01_standard"])
        r, w = os.pipe()
        if os.fork() == 0:
            os.write(w, json.dumps(traceback_text()).encode())
            os._exit(0)
        os.close(w)
        print(os.read(r, 1 << 20).decode())
""")


@pytest.mark.slow
def test_the_traceback_warm_up_changes_no_text():
    texts = {}
    for mode in ("cold", "warm"):
        proc = subprocess.run([sys.executable, "-c", FIRST_TRACEBACK, mode], capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        texts[mode] = json.loads(proc.stdout)
    assert "NotImplementedError" in texts["cold"] and "check_output_size" in texts["cold"]
    assert texts["warm"] == texts["cold"]


# In a child forked after the nursery's preloads, ipykernel's own start (IPKernelApp.initialize,
# as each forked kernel runs it) prints the modules it still had to import.
KERNEL_START_IMPORTS = textwrap.dedent("""
    import json, os, sys, tempfile
    from jupyter_client.connect import write_connection_file
    from course_lib.grading.inside.nursery import preload_kernel
    from course_lib.grading.inside.warm import preload
    preload_kernel()
    preload(["course_lib.checks.ex01_standard"])
    folder = tempfile.mkdtemp()
    connection, _ = write_connection_file(os.path.join(folder, "c.json"), transport="ipc",
                                          ip=os.path.join(folder, "kernel"))
    r, w = os.pipe()
    if os.fork() == 0:
        before = set(sys.modules)
        from ipykernel.kernelapp import IPKernelApp
        IPKernelApp.instance().initialize(["-f", connection])
        os.write(w, json.dumps(sorted(set(sys.modules) - before)).encode())
        os._exit(0)
    os.close(w)
    print(os.read(r, 1 << 20).decode())
""")


@pytest.mark.slow
def test_a_forked_kernel_imports_nothing_to_start():
    """The nursery imports what ipykernel's start imports (nursery.KERNEL_MODULES): a kernel
    forked from it starts without importing ipykernel's kernel, shell or debugger again."""
    proc = subprocess.run([sys.executable, "-c", KERNEL_START_IMPORTS], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not [m for m in imported if m.startswith(("ipykernel", "IPython", "debugpy", "zmq",
                                                     "tornado", "jupyter_client"))], imported


# The re-check server's imports, then its grades for a few cells' outputs (points, an error,
# stderr text, the cell's result), before and after nbgrader's package is imported the usual way.
RECHECK_RULE = textwrap.dedent("""
    import json, sys
    from course_lib.grading.inside import recheck

    recheck._import_checks([])
    cases = [(2.0, False, "", None), (2.0, True, "", None), (2.0, False, "a warning", None),
             (3.0, False, "", "0.5"), (3.0, False, "", "1"), (3.0, False, "", "'a text'"),
             (3.0, True, "", "0.5")]
    alone = [recheck.grade(*case) for case in cases]
    imported = "nbgrader" in sys.modules
    import nbgrader.utils
    recheck.nbgrader_utils.cache_clear()
    assert recheck.nbgrader_utils() is nbgrader.utils
    print(json.dumps({"imported": imported, "alone": alone,
                      "package": [recheck.grade(*case) for case in cases]}))
""")


def test_the_recheck_grades_by_nbgraders_rule_without_importing_its_package():
    """The re-check server loads nbgrader's utils from their file alone (the package's __init__
    imports its Jupyter server extensions: 2 s of CPU per server): nbgrader's package is not
    imported, and every grade is the one nbgrader's utils give when imported the usual way."""
    out = subprocess.run([sys.executable, "-c", RECHECK_RULE], capture_output=True, text=True,
                         timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["imported"] is False
    assert found["alone"] == found["package"]
    assert found["alone"][:3] == [2.0, 0.0, 0.0]  # full marks; an error or stderr: none


def test_the_graders_processes_leave_out_the_parser_jsonschema_does_not_need():
    """jsonschema imports `rfc3987_syntax` (a parser built at import: over a second of CPU) in
    every process that imports nbformat; the grader's processes and its nbgrader commands leave
    it out, and nbformat still validates notebooks (and still refuses a broken one)."""
    code = textwrap.dedent("""
        import json, sys
        import course_lib.grading
        import nbformat
        from course_lib.grading.course import NBGRADER_MAIN
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")])
        nbformat.validate(nb)
        nb.cells[0]["outputs"] = "not a list"
        try:
            nbformat.validate(nb)
            refused = False
        except nbformat.ValidationError:
            refused = True
        print(json.dumps({"loaded": sys.modules.get("rfc3987_syntax") is not None,
                          "refused": refused, "main": NBGRADER_MAIN}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found == {"loaded": False, "refused": True, "main": found["main"]}
    nbgrader = subprocess.run([sys.executable, "-c", found["main"], "--version"],
                              capture_output=True, text=True, timeout=120, cwd="/")
    assert nbgrader.returncode == 0 and nbgrader.stdout.strip(), nbgrader.stderr[-2000:]
