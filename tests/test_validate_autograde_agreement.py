"""No surprises: for every student variant of tests/exercise_variants.py (alternative valid
solutions, typical wrong answers, partly right notebooks), ``nbgrader validate`` (what a student
sees before handing in) and ``nbgrader autograde`` (what the grade is) agree on every test cell: a
cell validate passes scores full marks, a cell it fails scores less.

Cost: the variants ride along in the shared graded course (one ``nbgrader autograde`` for the whole
suite, tests/conftest.py); validation runs the variants in two background processes (one nbgrader
import each, one kernel per notebook), so they use the 2 cores together.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import nbformat
import pytest

from course_lib import grading
from conftest import ASSIGNMENTS, REPO
from exercise_variants import autograded_cells, variant_notebook, variant_students

pytestmark = pytest.mark.slow

# Runs nbgrader's own Validator (the code behind `nbgrader validate`) on each notebook given, with
# the course's nbgrader_config.py, and prints {notebook: [grade ids of failed test cells]}.
VALIDATE_ALL = textwrap.dedent('''
    import json, sys
    import nbformat
    from traitlets.config.loader import PyFileConfigLoader
    from nbgrader.validator import Validator

    config = PyFileConfigLoader("nbgrader_config.py", path=sys.argv[1]).load_config()
    results = {}
    for path in sys.argv[2:]:
        nb = nbformat.read(path, as_version=4)
        ids = {c.source.strip(): c.metadata["nbgrader"]["grade_id"] for c in nb.cells
               if c.metadata.get("nbgrader", {}).get("grade")}
        found = Validator(config=config).validate(path)
        unexpected = set(found) - {"failed"}
        results[path] = {"failed": sorted(ids[c["source"]] for c in found.get("failed", [])),
                         "other": sorted(unexpected)}
    print(json.dumps(results))
''')


@pytest.fixture(scope="module")
def validation(tmp_path_factory):
    """Starts validating every variant in the background; the test collects the result after the
    shared autograde has run. (The reference solutions need no run here: tests/test_notebooks.py
    proves they pass validate and score full marks.)"""
    folder = tmp_path_factory.mktemp("validate")
    notebooks = {}
    for student, (assignment, changes) in variant_students(ASSIGNMENTS).items():
        path = folder / student / grading.notebook_name(assignment)
        path.parent.mkdir()
        nbformat.write(variant_notebook(assignment, changes), path)
        notebooks[student] = (assignment, path)
    # Two processes, one per core: the test itself only waits for them.
    paths = [str(p) for _, p in notebooks.values()]
    procs = [subprocess.Popen(
        [sys.executable, "-c", VALIDATE_ALL, str(REPO)] + paths[half::2],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=folder,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(REPO)] + os.environ.get("PYTHONPATH", "").split(os.pathsep))))
        for half in (0, 1)]
    return notebooks, procs


def test_validate_and_autograde_agree_on_every_cell(validation, graded_course):
    notebooks, procs = validation
    validated = {}
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=1800)
        assert proc.returncode == 0, stderr[-4000:]
        validated.update(json.loads(stdout.strip().splitlines()[-1]))
    disagreements, checked = [], 0
    for student, (assignment, path) in notebooks.items():
        result = validated[str(path)]
        assert result["other"] == [], f"{student}: validate reported {result['other']}"
        cells = grading.scores(graded_course, assignment)[student].cells
        for cell, (score, maximum) in cells.items():
            if cell not in autograded_cells(assignment):
                continue   # a written answer: graded by a person, by neither tool
            validate_passes = cell not in result["failed"]
            autograde_passes = score == maximum
            checked += 1
            if validate_passes != autograde_passes:
                disagreements.append(f"{student} {cell}: validate "
                                     f"{'passes' if validate_passes else 'fails'}, autograde "
                                     f"{score}/{maximum}")
    assert checked and not disagreements, "\n".join(disagreements)


def test_variants_score_what_they_deserve(graded_course):
    """The variants are not all-pass or all-fail: the cells the variant breaks lose their points,
    the others keep them (spot checks of the issue's cases)."""
    def cells(student, assignment):
        return grading.scores(graded_course, assignment)[student].cells

    expected_failures = {
        ("ex01_standard__logs_to_stderr", "ex01_standard"): set(),   # logging never costs points
        ("ex01_standard__alternative", "ex01_standard"): set(),
        ("ex01_standard__alias_of_conv2d", "ex01_standard"): {"part4-tests"},
        ("ex06_atrous__square_kernels_only", "ex06_atrous"): {"part1-tests", "part3-tests"},
        ("ex07_mobilenet__gpu_stub_left", "ex07_mobilenet"): set(),   # no GPU: full marks
        ("ex07_mobilenet__shortcuts", "ex07_mobilenet"): {"part1-tests", "part3-tests",
                                                          "part4-tests"},
        ("ex08_autoencoder__other_names", "ex08_autoencoder"): {"part4-tests"},
    }
    for (student, assignment), failing in expected_failures.items():
        if assignment not in ASSIGNMENTS:
            continue
        lost = {cell for cell, (score, maximum) in cells(student, assignment).items()
                if score < maximum and cell in autograded_cells(assignment)}
        assert lost == failing, f"{student} lost points in {sorted(lost)}"
