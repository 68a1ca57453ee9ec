"""The only door to nbgrader's gradebook (SQLite by default, any SQLAlchemy URL such as
PostgreSQL for a large course).

The pipeline reads the assignment's trusted cells from it (:func:`source_info`), writes final
automatic scores into the course's gradebook (:func:`write_final_scores`) and, in a worker's
private shard, the final scores as overrides so that nbgrader's feedback shows them
(:func:`write_feedback_scores`). Rows the grader could not grade get no score at all.

The gradebook also keeps who is who: a table of its own (``course_lib_identities``: each submitted
name, in full, with the student id it was given, :mod:`.identities`) beside nbgrader's, in the same
database, so that every later batch gives a name the same id and never gives that id to another
name, with SQLite or PostgreSQL alike. nbgrader's ``Student`` has only 128-character name fields,
which belong to the instructor (``nbgrader db student add``, LMS imports); a student this pipeline
creates gets the submitted name as ``last_name`` (cut to 128 characters) for formgrader's list.

Writing scores never touches what a person graded: formgrader's manual scores, comments and extra
credit survive every re-run (:func:`write_final_scores` writes ``auto_score`` only).
"""
from __future__ import annotations

import os
import re
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from course_lib.grading import identities
from course_lib.grading.model import SourceInfo, Submission

IDENTITIES = "course_lib_identities"


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
        if isinstance(exc, FileNotFoundError) and "alembic" in str(exc):
            raise GradebookUnavailable(
                f"cannot create the gradebook {shown}: nbgrader runs the `alembic` command, "
                f"which is not on PATH ({os.environ.get('PATH', '')}). It is installed with "
                f"nbgrader next to the interpreter: run the grader with the Python of the "
                f"environment that has nbgrader (`{sys.executable} -m course_lib.grade_class "
                f"...`), or `{sys.executable} -m pip install -r requirements.txt`.") from None
        hint = ("check that the folder exists and is writable" if db_url.startswith("sqlite")
                else "check that the server runs and accepts connections from this host, that "
                "the database exists (`createdb gradebook`) and the user may use it; URLs look "
                "like postgresql://USER@HOST:5432/gradebook (driver: psycopg, in "
                "requirements.txt)")
        raise GradebookUnavailable(f"cannot open the gradebook {shown} ({type(exc).__name__}: "
                                   f"{first}): {hint}.") from None


def _identity_table():
    import sqlalchemy as sa

    return sa.Table(IDENTITIES, sa.MetaData(),
                    sa.Column("name_sha256", sa.String(64), primary_key=True),
                    sa.Column("student_id", sa.String(128), nullable=False, unique=True),
                    sa.Column("name", sa.Text, nullable=False))


def identify(db_url: str, names: list[str], attempts: int = 3) -> dict[str, str]:
    """The student id of each submitted name: the one recorded by an earlier batch, else a new
    one distinct from every id in the gradebook (:func:`.identities.assign`), recorded now, before
    any grading, so that a concurrent run on the same gradebook cannot give it to another name."""
    import sqlalchemy as sa
    from nbgrader.api import Student

    table = _identity_table()
    stored = {identities.stored_name(n): n for n in names}
    for attempt in range(attempts):
        with opened(db_url) as gb:
            table.create(gb.engine, checkfirst=True)
            known = {row.name: row.student_id for row in gb.db.execute(sa.select(table))}
            taken = {sid for (sid,) in gb.db.query(Student.id)} | set(known.values())
            ids = identities.assign(list(stored), known, taken)
            new = [{"name_sha256": identities.name_digest(n), "student_id": ids[n], "name": n}
                   for n in stored if n not in known]
            try:
                if new:
                    gb.db.execute(table.insert(), new)
                gb.db.commit()
            except sa.exc.IntegrityError:  # another run recorded one of them first: read again
                gb.db.rollback()
                if attempt == attempts - 1:
                    raise
                continue
        return {stored[n]: ids[n] for n in stored}
    raise AssertionError("unreachable")


def recorded_identities(db_url: str) -> dict[str, str]:
    """name -> student id, every name the gradebook has recorded."""
    import sqlalchemy as sa

    table = _identity_table()
    with opened(db_url) as gb:
        if not sa.inspect(gb.engine).has_table(IDENTITIES):
            return {}
        return {row.name: row.student_id for row in gb.db.execute(sa.select(table))}


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


def hide_hidden_tests(db_url: str, assignment: str, notebook: str) -> list[str]:
    """In a worker's shard gradebook (a private copy): each test cell's source without its
    hidden tests, with the checksum nbgrader computes for that source, so nbgrader's autograde
    puts into the notebook it runs exactly the test cells the student's release has. The hidden
    tests then never reach nbgrader's kernel; the re-check's server runs them (issue 21).
    Returns the cells changed."""
    from nbgrader.utils import compute_checksum

    from course_lib.grading.inside.checker import split_hidden

    changed = []
    with opened(db_url) as gb:
        nb = gb.find_notebook(notebook, assignment)
        graded = {c.name: float(c.max_score) for c in nb.grade_cells}
        solutions = {c.name for c in nb.solution_cells}
        for cell in nb.source_cells:
            visible, hidden = split_hidden(cell.source)
            if visible == cell.source:
                continue
            node = (nbformat.v4.new_code_cell(visible) if cell.cell_type == "code"
                    else nbformat.v4.new_markdown_cell(visible))
            node.metadata["nbgrader"] = {"grade": cell.name in graded,
                                         "solution": cell.name in solutions,
                                         "locked": bool(cell.locked), "grade_id": cell.name,
                                         "points": graded.get(cell.name, 0.0)}
            cell.source, cell.checksum = visible, compute_checksum(node)
            changed.append(cell.name)
        gb.db.commit()
    return changed


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
    cells (GPU parts without a GPU) are left without an automatic score, marked as needing
    grading unless a person already graded them.

    Only ``auto_score`` is written: a manual score, a comment or extra credit given in
    formgrader is the instructor's and stays (nbgrader's score is the manual one where set)."""
    from nbgrader.api import MissingEntry

    with opened(db_url) as gb:
        for sub in subs:
            if sub.status is None or not sub.status.scored:
                continue
            try:
                gb.find_student(sub.student)
            except MissingEntry:
                name = sub.submitted_as or sub.student
                gb.add_student(sub.student, **({"last_name": name[:128]}
                                               if name != sub.student else {}))
            submission = gb.update_or_create_submission(assignment, sub.student)
            for nb in submission.notebooks:
                for grade in nb.grades:
                    if grade.name in pending:
                        grade.auto_score = None
                        grade.needs_manual_grade = grade.manual_score is None
                    if grade.name not in sub.final:
                        continue
                    grade.auto_score = sub.final[grade.name]
                    if grade.manual_score is None:
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
