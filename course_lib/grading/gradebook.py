"""The only door to nbgrader's gradebook (SQLite by default, any SQLAlchemy URL such as
PostgreSQL for a large course).

The pipeline reads the assignment's trusted cells from it (:func:`source_info`), writes final
automatic scores into the course's gradebook (:func:`write_final_scores`) and, in a worker's
private shard, the final scores as overrides so that nbgrader's feedback shows them
(:func:`write_feedback_scores`). Rows the grader could not grade get no score at all.
"""
from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from course_lib.grading.model import SourceInfo, Submission


class GradebookUnavailable(RuntimeError):
    """The gradebook URL cannot be opened; the message says what to check."""


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{Path(path)}"


@contextmanager
def opened(db_url: str):
    from nbgrader.api import Gradebook

    with Gradebook(db_url) as gb, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SQLAlchemy's autoflush notices from nbgrader's API
        yield gb


def check(db_url: str) -> None:
    """Open the gradebook once, before any grading, so that a wrong ``--db`` fails in seconds
    with a message instead of after the batch (nbgrader creates its tables on first use)."""
    try:
        with opened(db_url):
            pass
    except Exception as exc:  # SQLAlchemy's errors (no server, no database, no driver, bad URL)
        shown = re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", db_url)  # never print a password
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        hint = ("check that the folder exists and is writable" if db_url.startswith("sqlite")
                else "check that the server runs and accepts connections from this host, that "
                "the database exists (`createdb gradebook`) and the user may use it; URLs look "
                "like postgresql://USER@HOST:5432/gradebook (driver: psycopg, in "
                "requirements.txt)")
        raise GradebookUnavailable(f"cannot open the gradebook {shown} ({type(exc).__name__}: "
                                   f"{first}): {hint}.") from None


def has_assignment(db_url: str, assignment: str) -> bool:
    from nbgrader.api import MissingEntry

    with opened(db_url) as gb:
        try:
            gb.find_assignment(assignment)
            return True
        except MissingEntry:
            return False


def source_info(db_url: str, assignment: str, release: Path, notebook: str) -> SourceInfo:
    """The trusted cells of ``assignment``'s notebook, as the gradebook recorded them when the
    release was generated; ``release``: the release notebook (for the cells' order)."""
    with opened(db_url) as gb:
        nb = gb.find_notebook(notebook, assignment)
        cells = {c.name: {"cell_type": c.cell_type, "locked": bool(c.locked), "source": c.source}
                 for c in nb.source_cells}
        solutions = {c.name for c in nb.solution_cells}
        # A grade cell that is also a solution cell (or markdown) is a manually graded answer.
        points = {c.name: float(c.max_score) for c in nb.grade_cells
                  if c.cell_type == "code" and c.name not in solutions}
        manual = {c.name: float(c.max_score) for c in nb.grade_cells if c.name not in points}
    order = [c.metadata.get("nbgrader", {}).get("grade_id")
             for c in nbformat.read(release, as_version=4).cells]
    return SourceInfo(assignment, notebook, [g for g in order if g], cells, points, solutions,
                      manual)


def nbgrader_scores(db_url: str, assignment: str, student: str,
                    cells: dict[str, float]) -> dict[str, float] | None:
    """nbgrader's automatic scores of one student's test ``cells``, or None if it has none."""
    from nbgrader.api import MissingEntry

    with opened(db_url) as gb:
        try:
            submission = gb.find_submission(assignment, student)
        except MissingEntry:
            return None
        found = {grade.name: float(grade.score) for nb in submission.notebooks
                 for grade in nb.grades if grade.name in cells}
    return found or None


def write_feedback_scores(db_url: str, assignment: str, student: str,
                          final: dict[str, float]) -> None:
    """In a worker's shard: the final scores as manual overrides, which nbgrader's feedback
    shows (the automatic score stays what nbgrader computed)."""
    with opened(db_url) as gb:
        submission = gb.find_submission(assignment, student)
        for nb in submission.notebooks:
            for grade in nb.grades:
                if grade.name in final:
                    value = final[grade.name]
                    if grade.auto_score is None or float(grade.auto_score) != value:
                        grade.manual_score = value
                    grade.needs_manual_grade = False
        gb.db.commit()


def write_final_scores(db_url: str, assignment: str, subs: list[Submission],
                       pending: set[str] = frozenset()) -> None:
    """In the course's gradebook: each scored submission's final automatic scores (ungradable
    ones as zeros); rows the grader could not grade are not written at all; ``pending`` test
    cells (GPU parts without a GPU) are left without a score, marked as needing grading."""
    with opened(db_url) as gb:
        for sub in subs:
            if sub.status is None or not sub.status.scored:
                continue
            gb.update_or_create_student(sub.student)
            submission = gb.update_or_create_submission(assignment, sub.student)
            for nb in submission.notebooks:
                for grade in nb.grades:
                    if grade.name in pending:
                        grade.auto_score, grade.manual_score = None, None
                        grade.needs_manual_grade = True
                    if grade.name not in sub.final:
                        continue
                    grade.auto_score, grade.manual_score = sub.final[grade.name], None
                    grade.needs_manual_grade = False
        gb.db.commit()


@dataclass
class SubmissionScore:
    student: str
    score: float
    max_score: float
    cells: dict[str, tuple[float, float]] = field(default_factory=dict)  # cell -> (score, max)


def scores(course: Path, assignment: str) -> dict[str, SubmissionScore]:
    """Scores recorded in a course's gradebook, per student and per graded cell."""
    from nbgrader.api import MissingEntry

    db = Path(course) / "gradebook.db"
    if not db.is_file():
        raise FileNotFoundError(f"no gradebook at {db}: run new_course/autograde first")
    result: dict[str, SubmissionScore] = {}
    with opened(sqlite_url(db)) as gb:
        for student in gb.students:
            try:
                submission = gb.find_submission(assignment, student.id)
            except MissingEntry:
                continue
            cells = {}
            for nb in submission.notebooks:
                for grade in nb.grades:
                    cells[grade.name] = (float(grade.score), float(grade.max_score))
            result[student.id] = SubmissionScore(student.id, float(submission.score),
                                                 float(submission.max_score), cells)
    return result
