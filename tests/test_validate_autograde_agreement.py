"""No surprises: for every student variant of tests/exercise_variants.py (alternative valid
solutions, typical wrong answers, partly right notebooks), ``nbgrader validate`` (what a student
sees before handing in) and the grade (the grading pipeline's: nbgrader's autograde and the
re-check) agree on every test cell: a cell validate passes scores full marks, a cell it fails
scores less. And the pipeline reports nothing for any of them: they are honest work.

Cost: the variants are graded in the shared graded course (tests/conftest.py: one pipeline class
per assignment, into the same gradebook); their validation (one process, one nbgrader import, one
kernel per notebook: exercise_variants.validate_variants) starts in the background when the
session's tests are collected (conftest.BACKGROUND), on the core the other tests leave idle.
"""
from __future__ import annotations

import pytest

from course_lib import grading
from conftest import ASSIGNMENTS, BACKGROUND, PIPELINE_SOLUTION_STUDENT, REPO, variant_reports
from exercise_variants import autograded_cells, variant_students

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


def test_the_pipeline_reports_nothing_for_any_variant(graded_course):
    """Every variant and every solution graded by ``grade_class`` is a row with status ok and no
    problem, each solution scores full marks, and each assignment's problems.txt is its summary
    line ("0 with problems") and the batch's notes alone (ex07: its GPU parts graded on CPU, as
    asked)."""
    expected: dict[str, set[str]] = {a: {PIPELINE_SOLUTION_STUDENT} for a in ASSIGNMENTS}
    for student, (assignment, _) in variant_students(ASSIGNMENTS).items():
        expected[assignment].add(student)
    reports = variant_reports(graded_course)
    assert set(reports) == set(expected)
    for assignment, report in reports.items():
        assert set(report["rows"]) == expected[assignment], assignment
        flagged = {student: row for student, row in report["rows"].items()
                   if row["status"] != "ok" or row["problems"]}
        assert not flagged, (assignment, flagged)
        assert report["rows"][PIPELINE_SOLUTION_STUDENT]["score"] == report["max_score"], \
            (assignment, report["rows"][PIPELINE_SOLUTION_STUDENT])
        lines = report["problems.txt"].strip().splitlines()
        assert f"{len(expected[assignment])} submissions, 0 with problems" in lines[0], lines
        assert lines[1:] == [f"NOTE: {note}" for note in report["notes"]], lines
