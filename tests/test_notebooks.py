"""Every exercise, through the real nbgrader: the committed release is exactly what nbgrader
generates from the source (no drift), the solution passes ``nbgrader validate`` and scores full
marks on every autograded cell when autograded (its written answers wait for a person), and the
blank release scores 0."""
from __future__ import annotations

import json
import os

import nbformat
import pytest

from course_lib import grading
from conftest import ASSIGNMENTS, BACKGROUND, BLANK_STUDENT, REPO, SOLUTION_STUDENT

pytestmark = pytest.mark.slow


def test_there_are_assignments():
    if os.environ.get("COURSE_ASSIGNMENTS"):
        pytest.skip("COURSE_ASSIGNMENTS limits the run to some assignments")
    assert "ex01_standard" in ASSIGNMENTS and len(ASSIGNMENTS) == len(grading.assignments(REPO))


def _notebooks(folder: str) -> list:
    return sorted((REPO / folder).glob("ex*/*.ipynb"))


@pytest.mark.parametrize("path", _notebooks("solutions") + _notebooks("exercises"),
                         ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_notebook_is_stored_clean(path):
    """Valid nbformat, no outputs, no execution counts, a python3 kernel."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: cell {cell.get('id')} has stored outputs"
            assert cell.execution_count is None, f"{path.name}: cell {cell.get('id')} was run"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_source_follows_conventions(assignment):
    """One notebook named after the assignment; setup cell first; test cells carry points and
    call course_lib.checks; every solution cell has a solution region."""
    folder = REPO / "solutions" / assignment
    assert [p.name for p in folder.glob("*.ipynb")] == [grading.notebook_name(assignment)]
    nb = nbformat.read(folder / grading.notebook_name(assignment), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert f"course_lib.checks.{assignment}" in code[0].source, "first code cell imports checks"
    graded = [c for c in code if c.metadata.get("nbgrader", {}).get("grade")]
    assert graded, "no autograded test cells"
    for cell in graded:
        assert cell.metadata.nbgrader["points"] > 0
        assert "checks." in cell.source
    for cell in code:
        if cell.metadata.get("nbgrader", {}).get("solution"):
            assert "### BEGIN SOLUTION" in cell.source and "### END SOLUTION" in cell.source


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_release_has_no_drift(graded_course, assignment):
    """exercises/ is exactly what nbgrader generate_assignment makes from solutions/."""
    committed = json.loads((REPO / "exercises" / assignment /
                            grading.notebook_name(assignment)).read_text())
    generated = json.loads(grading.release_path(graded_course, assignment).read_text())
    assert committed == generated, (
        f"exercises/{assignment} is out of date: run `nbgrader generate_assignment {assignment} "
        f"--force` at the repository root and commit the result")


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_release_hides_solutions_and_hidden_tests(assignment):
    text = (REPO / "exercises" / assignment / grading.notebook_name(assignment)).read_text()
    assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
    assert "raise NotImplementedError()" in text


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solution_passes_nbgrader_validate(assignment):
    """``grading.validate`` on the solution (started in the background at collection:
    conftest.BACKGROUND)."""
    result = BACKGROUND.result("solutions")[assignment]
    assert result.passed, result.output


def _manual_cells(assignment: str) -> dict[str, float]:
    """grade_id -> points of the source notebook's manually graded written answers."""
    nb = nbformat.read(REPO / "solutions" / assignment / grading.notebook_name(assignment),
                       as_version=4)
    return {c.metadata.nbgrader["grade_id"]: float(c.metadata.nbgrader["points"])
            for c in nb.cells if c.cell_type == "markdown"
            and c.metadata.get("nbgrader", {}).get("grade")}


def _pending_manual_grades(course, assignment: str, student: str) -> set[str]:
    """Cells nbgrader's autograde left for a person (needs_manual_grade in the gradebook)."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        submission = gradebook.find_submission(assignment, student)
        return {g.name for nb in submission.notebooks for g in nb.grades if g.needs_manual_grade}


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solution_scores_full_marks(graded_course, assignment):
    """Every autograded cell full; every written answer waits for a person, with no automatic
    score (nbgrader cannot grade prose), and nothing else does."""
    score = grading.scores(graded_course, assignment)[SOLUTION_STUDENT]
    manual = _manual_cells(assignment)
    auto = {cell: s for cell, s in score.cells.items() if cell not in manual}
    lost = {cell: s for cell, s in auto.items() if s[0] != s[1]}
    assert sum(s[1] for s in auto.values()) > 0
    assert not lost, f"solution lost points in {lost}"
    assert set(score.cells) >= set(manual), "a written answer is missing from the gradebook"
    assert score.max_score == sum(s[1] for s in auto.values()) + sum(manual.values())
    assert _pending_manual_grades(graded_course, assignment, SOLUTION_STUDENT) == set(manual)
    assert score.score == sum(s[1] for s in auto.values()), "written answers scored by a machine"


# Test cells that give full marks on a grader without a GPU, whatever the notebook holds (a student
# is never penalised for a missing GPU; see ex07's part 6).
GPU_ONLY_CELLS = {("ex07_mobilenet", "part6-tests")}


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_blank_release_scores_zero(graded_course, assignment):
    import torch

    score = grading.scores(graded_course, assignment)[BLANK_STUDENT]
    earned = {cell: s for cell, s in score.cells.items() if s[0] > 0}
    if not torch.cuda.is_available():
        free = {cell for a, cell in GPU_ONLY_CELLS if a == assignment}
        assert all(score.cells[cell][0] == score.cells[cell][1] for cell in free), score.cells
        earned = {cell: s for cell, s in earned.items() if cell not in free}
    assert not earned, f"a blank notebook earned points in {earned}"
    # an unanswered written answer scores 0 without a person (nbgrader sees it unchanged)
    assert not _pending_manual_grades(graded_course, assignment, BLANK_STUDENT)
