"""No surprises: for every student variant of tests/exercise_variants.py (alternative valid
solutions, typical wrong answers, partly right notebooks), ``nbgrader validate`` (what a student
sees before handing in) and ``nbgrader autograde`` (what the grade is) agree on every test cell: a
cell validate passes scores full marks, a cell it fails scores less.

Cost: the variants ride along in the shared graded course (one ``nbgrader autograde`` for the whole
suite, tests/conftest.py); their validation (one process, one nbgrader import, one kernel per
notebook: exercise_variants.validate_variants) starts in the background when the session's tests
are collected (conftest.BACKGROUND), on the core the other tests leave idle.
"""
from __future__ import annotations

import pytest

from course_lib import grading
from conftest import ASSIGNMENTS, BACKGROUND, REPO
from exercise_variants import autograded_cells

pytestmark = pytest.mark.slow


def test_validate_and_autograde_agree_on_every_cell(graded_course):
    notebooks, validated = BACKGROUND.result("variants")
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
        # issue 22's wrong verdicts, now refused
        ("ex02_pointwise__course_einsum", "ex02_pointwise"): {"part1-tests"},
        ("ex02_pointwise__partly_right", "ex02_pointwise"): {"part2-tests", "part3-tests",
                                                             "part4-tests"},
        ("ex03_depthwise__block_diagonal", "ex03_depthwise"): {"part1-tests"},
        ("ex06_atrous__shortcuts", "ex06_atrous"): {"part1-tests", "part3-tests"},
        ("ex08_autoencoder__cheats", "ex08_autoencoder"): {"part2-tests", "part4-tests"},
        ("ex09_capstone__elu_design", "ex09_capstone"): set(),   # any activation is allowed
    }
    for (student, assignment), failing in expected_failures.items():
        if assignment not in ASSIGNMENTS:
            continue
        lost = {cell for cell, (score, maximum) in cells(student, assignment).items()
                if score < maximum and cell in autograded_cells(assignment)}
        assert lost == failing, f"{student} lost points in {sorted(lost)}"
