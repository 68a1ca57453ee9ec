"""Shared fixtures. The expensive ones (a graded nbgrader course, a built book) are session-scoped
and built once, so every test that needs them reads the same result."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from course_lib import grading

REPO = Path(__file__).resolve().parents[1]
# COURSE_ASSIGNMENTS="ex02_pointwise,ex03_depthwise" limits the notebook tests to those (for a quick
# local run while writing an exercise); CI runs them all.
ASSIGNMENTS = [a for a in grading.assignments(REPO)
               if a in os.environ.get("COURSE_ASSIGNMENTS", a).split(",")]

# Student ids used in the graded course fixture.
SOLUTION_STUDENT = "reference_solution"
BLANK_STUDENT = "blank_release"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def graded_course(tmp_path_factory) -> Path:
    """A temporary nbgrader course with every assignment generated, its solution submitted by one
    student, its blank release by another and each student variant of tests/exercise_variants.py
    by one more, all autograded in one real ``nbgrader autograde``."""
    import nbformat
    from exercise_variants import variant_notebook, variant_students

    course = tmp_path_factory.mktemp("course")
    shutil.copy(REPO / "nbgrader_config.py", course / "nbgrader_config.py")
    for assignment in ASSIGNMENTS:
        shutil.copytree(REPO / "solutions" / assignment, course / "solutions" / assignment,
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    # One nbgrader process per step for all assignments: its start-up is the slow part.
    grading.run_nbgrader(["generate_assignment", "ex*", "--force"], cwd=course)
    for assignment in ASSIGNMENTS:
        grading.submit(course, assignment, SOLUTION_STUDENT,
                       REPO / "solutions" / assignment / grading.notebook_name(assignment))
        grading.submit(course, assignment, BLANK_STUDENT,
                       grading.release_path(course, assignment))
    variants = tmp_path_factory.mktemp("variants")
    for student, (assignment, changes) in variant_students(ASSIGNMENTS).items():
        path = variants / student / grading.notebook_name(assignment)
        path.parent.mkdir()
        nbformat.write(variant_notebook(assignment, changes), path)
        grading.submit(course, assignment, student, path)
    grading.run_nbgrader(["autograde", "ex*", "--create", "--force"], cwd=course, timeout=3000)
    return course


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> Path:
    """Build the whole book once, exactly as the README says (warnings are errors), into a
    temporary folder; returns the HTML folder."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("book")
    proc = subprocess.run(
        [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(REPO), "-W", "-n", "--keep-going",
         "--path-output", str(out)],
        capture_output=True, text=True, timeout=1800, cwd=REPO)
    if proc.returncode != 0:
        pytest.fail(f"jupyter-book build failed (exit {proc.returncode}):\n"
                    f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return out / "_build" / "html"
