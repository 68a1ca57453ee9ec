"""Build nbgrader *source* notebooks (solutions/exNN_topic/exNN_topic.ipynb) from Python.

Instructors write an exercise as a list of cells; this module attaches the nbgrader metadata
(schema 3) so that ``nbgrader generate_assignment`` strips the solutions and hides the hidden tests.
Conventions every exercise follows:

* the first code cell (:func:`setup_cell`) imports the exercise's checks *before* any student code
  runs, so the checks capture their PyTorch references first;
* test cells are one-line calls into ``course_lib.checks``, with hidden tests between
  ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS``;
* written answers are manually graded markdown cells (:func:`manual_answer`) whose model answer
  and rubric sit in the solution region, so only graders see them;
* notebooks are stored without outputs, with a python3 kernelspec.
"""
from __future__ import annotations

from pathlib import Path

import nbformat

KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def _meta(grade_id: str, *, grade: bool, solution: bool, locked: bool,
          points: float | None = None) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3,
            "solution": solution}
    if points is not None:
        meta["points"] = points
    return {"nbgrader": meta}


def markdown(grade_id: str, text: str) -> nbformat.NotebookNode:
    """Read-only instructions."""
    return nbformat.v4.new_markdown_cell(text.strip("\n"), metadata=_meta(
        grade_id, grade=False, solution=False, locked=True))


def readonly_code(grade_id: str, source: str) -> nbformat.NotebookNode:
    """Code the student runs but may not edit (imports, given data)."""
    return nbformat.v4.new_code_cell(source.strip("\n"), metadata=_meta(
        grade_id, grade=False, solution=False, locked=True))


# Where Colab installs course_lib from (keep equal to _config.yml's repository.url).
REPOSITORY_URL = "https://github.com/efficient-convolutions/efficient-convolutions"


def setup_cell(assignment: str, extra: str = "") -> nbformat.NotebookNode:
    """First cell: install course_lib if it is missing (Colab), then import the checks.

    Importing the checks before any student cell runs lets them capture their PyTorch references
    first (see course_lib.checks)."""
    source = f'''
# Setup: run this cell first. Where course_lib is missing (e.g. on Colab) it installs the course's
# package from its repository; everywhere else it does nothing.
import importlib.util, subprocess, sys
if importlib.util.find_spec("course_lib") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "git+{REPOSITORY_URL}"], check=True)
import course_lib.checks.{assignment} as checks
{extra}'''
    return readonly_code("setup", source)


def solution(grade_id: str, source: str) -> nbformat.NotebookNode:
    """Student's code cell. Wrap the answer in ### BEGIN SOLUTION / ### END SOLUTION."""
    return nbformat.v4.new_code_cell(source.strip("\n"), metadata=_meta(
        grade_id, grade=False, solution=True, locked=False))


def tests(grade_id: str, points: float, visible: str, hidden: str = "") -> nbformat.NotebookNode:
    """Autograded test cell: visible lines, then hidden ones (removed from the release)."""
    source = visible.strip("\n")
    if hidden.strip():
        source += "\n### BEGIN HIDDEN TESTS\n" + hidden.strip("\n") + "\n### END HIDDEN TESTS"
    return nbformat.v4.new_code_cell(source, metadata=_meta(
        grade_id, grade=True, solution=False, locked=True, points=points))


def manual_answer(grade_id: str, points: float, model_answer: str,
                  rubric: str) -> nbformat.NotebookNode:
    """A manually graded written answer (nbgrader's "Manually graded answer"): a markdown cell
    the student edits. In the release its solution region becomes "YOUR ANSWER HERE"; in the
    source it holds the model answer and the grading rubric (put the question in the markdown
    cell before it: that one is released)."""
    if not points > 0:
        raise ValueError(f"a manually graded answer needs points > 0, got {points!r}")
    source = ("### BEGIN SOLUTION\n**Model answer.** " + model_answer.strip() +
              f"\n\n**Rubric ({points:g} points).**\n\n" + rubric.strip() + "\n### END SOLUTION")
    return nbformat.v4.new_markdown_cell(source, metadata=_meta(
        grade_id, grade=True, solution=True, locked=False, points=points))


def write_notebook(path: Path, cells: list[nbformat.NotebookNode]) -> Path:
    """Validate and write a source notebook (no outputs, python3 kernel)."""
    ids = [c.metadata["nbgrader"]["grade_id"] for c in cells if "nbgrader" in c.metadata]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise ValueError(f"duplicate grade_id(s): {sorted(duplicates)}")
    nb = nbformat.v4.new_notebook(cells=cells, metadata={
        "kernelspec": KERNELSPEC,
        "language_info": {"name": "python"},
    })
    for i, cell in enumerate(nb.cells):
        cell["id"] = cell.metadata.get("nbgrader", {}).get("grade_id", f"cell-{i}")
    nbformat.validate(nb)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path
