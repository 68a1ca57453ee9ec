"""nbgrader kept warm (course_lib.grading.nbgrader_runner): what it writes is what nbgrader writes."""
from __future__ import annotations

import os

import pytest

from conftest import ASSIGNMENTS, SOLUTION_STUDENT
from course_lib import grading
from course_lib.grading.nbgrader_runner import NbgraderRunner

pytestmark = pytest.mark.slow


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
