"""The student variants of the deeper parts (issue 22, items 11-12: ex04's backward part, the
ex10 lab) score what they deserve in the shared graded course; validate == autograde for them is
tests/test_validate_autograde_agreement.py's job."""
from __future__ import annotations

import pytest

from course_lib import grading
from conftest import ASSIGNMENTS
from exercise_variants import autograded_cells

pytestmark = pytest.mark.slow

EXPECTED_FAILURES = {
    ("ex04_separable__backward_unfold_fold", "ex04_separable"): set(),
    ("ex04_separable__backward_classmate", "ex04_separable"): {
        "backward-depthwise-tests", "backward-pointwise-tests", "backward-numerical-tests"},
    ("ex10_tradeoffs__lab_classmate", "ex10_tradeoffs"): {"part3-tests", "part4-tests"},
}


@pytest.mark.parametrize("student,assignment", list(EXPECTED_FAILURES))
def test_deeper_variants_lose_exactly_the_parts_they_break(graded_course, student, assignment):
    if assignment not in ASSIGNMENTS:
        pytest.skip(f"{assignment} is not among COURSE_ASSIGNMENTS")
    cells = grading.scores(graded_course, assignment)[student].cells
    lost = {cell for cell, (score, maximum) in cells.items()
            if score < maximum and cell in autograded_cells(assignment)}
    assert lost == EXPECTED_FAILURES[(student, assignment)], f"{student} lost {sorted(lost)}"
