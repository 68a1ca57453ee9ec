"""Re-running the grading pipeline on one course: identities that never merge, manual grading
that survives, and stored results reused only when nothing about them is suspect.

Two real runs (sandbox on, one worker) of a tiny ex01 class into ONE course gradebook and ONE
output folder, chained in a module fixture:

* run A: ``Jane Doe``, ``bob`` and carol (a 250-character name with accents and an emoji)
  (solved: full marks), a folder named exactly like the id ``Jane Doe`` would get on her own
  (blank release: 0), and the spawner (an all-emoji name; blank, starts a process: flagged).
  Then, as formgrader would, the instructor overrides a test cell of Jane Doe, comments, grades
  her written answer and gives extra credit; and ``bob``'s stored result is zeroed, as the
  classmate's attack of issue 20 left it.
* run B, from the command line with ``--regrade "Jane Doe"``, reads the class from an LMS zip:
  the spawner removed, a new folder named exactly like Jane Doe's recorded id added, and mallory,
  whose solved notebook sits beside a symbolic-link member (a bad member refuses her entry only).
  carol's result is reused (full marks, nothing suspect); bob's (zeroed in a run with a flagged
  classmate) and the blank folder's are graded again as suspect, Jane Doe as asked; the new
  folder is a new student.
"""
from __future__ import annotations

import copy
import csv
import json
import stat
import zipfile
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook

from course_lib import grading
from course_lib.grading import gradebook, identities, pipeline
from course_lib.grading.model import Failure, Graded, Incident, Status
from course_lib.grading.resume import RESULTS, flags, suspicion
from test_grading_pipeline import (ASSIGNMENT, CELL_TIMEOUT, MANUAL, MEM_MB, POINTS, REPO,
                                   TOTAL, _solved_release)

NB = grading.notebook_name(ASSIGNMENT)
JANE = "Jane Doe"
ON_HER_OWN = identities.suffixed(JANE)      # her id if nobody else were there
OVERRIDE_CELL, EXTRA_CELL = "part1-tests", "part2-tests"
WRITTEN = next(iter(MANUAL))                # a written answer, graded by hand
EXTRA = 1.5
# 250 characters (254 bytes: a folder name may have 255), an accent and an emoji
CAROL = "Carolë 😀 " + ("de la Montana " * 18)[:241]
SPAWNER = "🦀🦀🦀"                                 # nothing left once cleaned
MALLORY = "mallory"                               # her zip entry holds a symbolic link
assert len(CAROL) == 250 and len(CAROL.encode()) <= 255


def _blank():
    return nbformat.read(REPO / "exercises" / ASSIGNMENT / NB, as_version=4)


def _spawner():
    nb = copy.deepcopy(_blank())
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")
                and c.cell_type == "code")
    cell.source = "import subprocess\nsubprocess.run(['true'])\n"
    return nb


def _write_class(folder: Path, notebooks: dict) -> None:
    for name, nb in notebooks.items():
        path = folder / name / ASSIGNMENT / NB
        path.parent.mkdir(parents=True)
        nbformat.write(nb, path)


def _lms_zip(archive: Path, notebooks: dict) -> Path:
    """The class as an LMS export: one top-level folder, a folder per student; mallory's entry
    also holds a symbolic link to the instructor's solution."""
    link = zipfile.ZipInfo(f"export/{MALLORY}/{ASSIGNMENT}/solution.ipynb")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(archive, "w") as zf:
        for name, nb in {**notebooks, MALLORY: _solved_release()}.items():
            zf.writestr(f"export/{name}/{ASSIGNMENT}/{NB}", nbformat.writes(nb))
        zf.writestr(link, str(REPO / "solutions" / ASSIGNMENT / NB))
    return archive


def _stored(out: Path, student: str) -> Path:
    for path in (out / RESULTS).glob("*.json"):
        if json.loads(path.read_text()).get("student") == student:
            return path
    raise AssertionError(f"no stored result for {student}")


def _instructor_grades(db_url: str, student: str) -> None:
    """What formgrader writes when the instructor grades by hand."""
    with Gradebook(db_url) as gb:
        submission = gb.find_submission(ASSIGNMENT, student)
        (nb,) = submission.notebooks
        grades = {g.name: g for g in nb.grades}
        grades[OVERRIDE_CELL].manual_score = POINTS[OVERRIDE_CELL] - 1
        grades[EXTRA_CELL].extra_credit = EXTRA
        grades[WRITTEN].manual_score = MANUAL[WRITTEN]
        comment = next(c for c in nb.comments)
        comment.manual_comment = "see me about part 1"
        gb.db.commit()


def _book(db_url: str, student: str) -> dict:
    with Gradebook(db_url) as gb:
        submission = gb.find_submission(ASSIGNMENT, student)
        (nb,) = submission.notebooks
        return {"score": float(submission.score),
                "grades": {g.name: (g.auto_score, g.manual_score, g.extra_credit)
                           for g in nb.grades},
                "comments": sorted(c.manual_comment for c in nb.comments if c.manual_comment)}


def _csv(out: Path) -> dict[str, dict]:
    rows = list(csv.DictReader((out / "grades.csv").open()))
    assert len({r["student"] for r in rows}) == len(rows), "two rows share an id"
    by_name = {r["submitted_as"]: r for r in rows}
    assert len(by_name) == len(rows), "two rows for one submitted name"
    return by_name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rerun")
    course = grading.new_course(tmp / "course", [ASSIGNMENT], root=REPO)
    db_url = gradebook.sqlite_url(course / "gradebook.db")
    out = tmp / "out"

    _write_class(tmp / "A", {JANE: _solved_release(), "bob": _solved_release(),
                             CAROL: _solved_release(), ON_HER_OWN: _blank(),
                             SPAWNER: _spawner()})
    a = pipeline.grade_class(ASSIGNMENT, tmp / "A", course, workers=1, out=out,
                             cell_timeout=CELL_TIMEOUT, mem_mb=MEM_MB, quiet=True)
    rows_a = _csv(out)
    jane = rows_a[JANE]["student"]
    _instructor_grades(db_url, jane)
    after_manual = _book(db_url, jane)
    bob = _stored(out, rows_a["bob"]["student"])
    damaged = json.loads(bob.read_text())
    for field in ("final", "recheck", "nbgrader"):
        damaged[field] = {g: 0.0 for g in damaged[field]}
    bob.write_text(json.dumps(damaged))

    lms_zip = _lms_zip(tmp / "B.zip", {JANE: _solved_release(), "bob": _solved_release(),
                                       CAROL: _solved_release(), ON_HER_OWN: _blank(),
                                       jane: _blank()})
    code = pipeline.main([ASSIGNMENT, str(lms_zip), "--course", str(course), "--out", str(out),
                          "--workers", "1", "--cell-timeout", str(CELL_TIMEOUT),
                          "--mem-mb", str(MEM_MB), "--regrade", JANE])
    return dict(a=a, rows_a=rows_a, rows_b=_csv(out), code=code, jane=jane, db=db_url,
                summary=(out / "problems.txt").read_text(),
                report=(out / "report.html").read_text(),
                manual=(after_manual, _book(db_url, jane)), course=course)


@pytest.mark.slow
def test_each_name_is_one_student_with_exact_scores(runs):
    rows_a, rows_b, jane = runs["rows_a"], runs["rows_b"], runs["jane"]
    assert runs["code"] == 0
    assert {k: float(r["score"]) for k, r in rows_a.items()} == {
        JANE: TOTAL, "bob": TOTAL, CAROL: TOTAL, ON_HER_OWN: 0.0, SPAWNER: 0.0}
    # The folder named like Jane Doe's id on her own keeps its name; she gets another id.
    assert rows_a[ON_HER_OWN]["student"] == ON_HER_OWN and jane != ON_HER_OWN
    # A later batch: every name keeps its id; a folder named exactly like hers is somebody else.
    assert {k: float(r["score"]) for k, r in rows_b.items()} == {
        JANE: TOTAL, "bob": TOTAL, CAROL: TOTAL, ON_HER_OWN: 0.0, jane: 0.0, MALLORY: 0.0}
    assert all(rows_b[k]["student"] == rows_a[k]["student"] for k in rows_b if k in rows_a)
    assert rows_b[jane]["student"] not in {r["student"] for r in rows_a.values()}
    assert all(len(r["student"]) <= identities.MAX_ID_CHARS for r in rows_b.values())
    assert gradebook.recorded_identities(runs["db"])[JANE] == jane
    book = grading.scores(runs["course"], ASSIGNMENT)
    assert len(book) == 7, "one gradebook student per submitted name"
    assert book[rows_b[jane]["student"]].score == 0.0
    assert book[rows_b["bob"]["student"]].score == TOTAL


@pytest.mark.slow
def test_a_bad_zip_member_refuses_that_entry_only(runs):
    """Read from the LMS zip, mallory's entry is refused with the member and the reason, her
    solved notebook is not graded, and her classmates in the same zip keep their full marks."""
    rows_b = runs["rows_b"]
    mallory = rows_b[MALLORY]
    assert mallory["status"] == Status.REFUSED.value and float(mallory["score"]) == 0.0
    assert "solution.ipynb" in mallory["problems"] and "symbolic link" in mallory["problems"]
    assert "fix the zip and grade again" in mallory["problems"]
    assert all(float(rows_b[k]["score"]) == TOTAL for k in (JANE, "bob", CAROL))
    assert all(r["status"] == Status.OK.value for k, r in rows_b.items() if k != MALLORY), rows_b
    assert str(REPO) not in runs["summary"], "the link's target is not quoted"


@pytest.mark.slow
def test_manual_grading_survives_a_rerun_that_regrades_the_student(runs):
    after_manual, after_b = runs["manual"]
    assert after_b == after_manual
    grades = after_b["grades"]
    assert grades[OVERRIDE_CELL] == (POINTS[OVERRIDE_CELL], POINTS[OVERRIDE_CELL] - 1, None)
    assert grades[EXTRA_CELL] == (POINTS[EXTRA_CELL], None, EXTRA)
    assert grades[WRITTEN][1] == MANUAL[WRITTEN]
    assert after_b["comments"] == ["see me about part 1"]
    # nbgrader's score is the instructor's where set, plus extra credit.
    assert after_b["score"] == TOTAL - 1 + EXTRA + MANUAL[WRITTEN]


@pytest.mark.slow
def test_suspect_results_are_graded_again_and_the_report_says_what_was_reused(runs):
    rows_b = runs["rows_b"]
    ids = {k: r["student"] for k, r in rows_b.items()}
    assert {k for k, r in rows_b.items() if r["from_earlier_run"] == "yes"} == {CAROL}
    assert float(rows_b["bob"]["score"]) == TOTAL, "the damaged row is graded again"
    summary = runs["summary"]
    assert "1 submissions were graded by an earlier run" in summary and ids[CAROL] in summary
    suspect = summary.split("suspect and graded again: ")[1].splitlines()[0]
    assert sorted(s.split(" (")[0] for s in suspect.split("; ")) == sorted(
        [ids["bob"], ids[ON_HER_OWN]])
    assert "classmate was flagged (processes)" in suspect
    assert f"graded again as asked (--regrade): {ids[JANE]}" in summary
    assert "graded by an earlier run" in runs["report"] and ids[CAROL] in runs["report"]


# ----------------------------------------------------------------------------- fast tests
def _graded(final: float, status=Status.OK, incidents=()) -> Graded:
    return Graded("s", status, {"t": final}, {"t": final}, {"t": final}, [], None,
                  incidents=list(incidents))


def test_what_makes_a_stored_result_suspect():
    assert suspicion(_graded(2.0), "run", {}, 2.0) is None
    assert suspicion(_graded(1.0), "run", {}, 2.0) is None, "a wrong answer alone is no suspicion"
    assert "older grader" in suspicion(_graded(2.0), None, {}, 2.0)
    assert "graded-by-recheck" in suspicion(_graded(2.0, Status.GRADED_BY_RECHECK), "r", {}, 2.0)
    for own in Incident:
        assert own.value in suspicion(_graded(2.0, incidents=[own.value]), "r", {}, 2.0)
    flagged = {"other": ["processes"]}
    assert "classmate" in suspicion(_graded(1.0), "r", flagged, 2.0)
    assert suspicion(_graded(2.0), "r", flagged, 2.0) is None, "full marks cannot be damaged"
    assert suspicion(_graded(1.0), "r", {"s": ["grader-error"]}, 2.0) is None, \
        "its own ledger entry is no classmate"


def test_what_flags_a_classmate():
    assert flags(_graded(0.0, incidents=["processes", "kernel-died"])) == ["processes"]
    assert flags(_graded(0.0, incidents=["kernel-died", "recheck-unfinished"])) == []
    assert flags(Failure("killed its worker twice", grader=False)) == ["killed-worker"]
    assert flags(Failure("the worker vanished")) == [], "the grader's failure is no attack"
    assert flags(_graded(0.0, Status.GRADER_ERROR)) == []


def test_regrade_names_must_exist():
    from course_lib.grading.model import Submission
    subs = [Submission("Jane-Doe-1", "", submitted_as="Jane Doe"), Submission("bob", "")]
    assert pipeline.regrade_ids(["Jane Doe", "bob"], subs) == {"Jane-Doe-1", "bob"}
    assert pipeline.regrade_ids(True, subs) is True
    with pytest.raises(ValueError, match="no submission named 'carol'"):
        pipeline.regrade_ids(["carol"], subs)
