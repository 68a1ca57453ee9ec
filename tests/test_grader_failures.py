"""A grader failure is never a student's zero (the grading redesign, item 3).

The grader is broken on purpose, the way a grading host with a missing package is: the
assignment's locked setup cell (the instructor's code, run before any student code) imports a
module this environment does not have. Every row must then say ``grader-error`` with the reason
and NO score (not in the CSV, not in the gradebook), the command must exit non-zero with one
message, stop after the first few alike instead of grinding through the class, and a run with the
grader fixed must grade those rows.
"""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nbformat
import pytest

from course_lib import grading
from course_lib.grading import gradebook, pipeline
from course_lib.grading.model import Graded, Status
from course_lib.grading.resume import ResultCache
from exercise_helpers import autograded_points

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENT = "ex01_standard"


def test_results_of_grader_errors_are_never_reused(tmp_path):
    cache = ResultCache(tmp_path, {"options": 1})
    for student, status in (("ok", Status.OK), ("broken", Status.GRADER_ERROR)):
        cache.put(cache.key(student.encode()),
                  Graded(student, status, None, {}, {}, [], None))
    assert cache.get("ok", cache.key(b"ok")).status is Status.OK
    assert cache.get("broken", cache.key(b"broken")) is None, "a re-run must grade it"


@pytest.mark.slow
@pytest.mark.one_core  # one worker: the deferred one-core jobs start here
def test_a_broken_grader_scores_nobody_says_so_and_stops_early(tmp_path, capsys):
    course = grading.new_course(tmp_path / "course", [ASSIGNMENT], root=REPO)
    submitted = tmp_path / "submitted"
    solution = REPO / "solutions" / ASSIGNMENT / grading.notebook_name(ASSIGNMENT)
    source = course / "solutions" / ASSIGNMENT / grading.notebook_name(ASSIGNMENT)
    broken = nbformat.read(source, as_version=4)
    setup = next(c for c in broken.cells
                 if c.metadata.get("nbgrader", {}).get("grade_id") == "setup")
    setup.source += "\nimport a_package_this_grader_lacks  # what a worker without mlxtend shows"
    nbformat.write(broken, source)
    students = ["ann", "ben", "cat", "dan", "eve"]
    for student in students:
        folder = submitted / student / ASSIGNMENT
        folder.mkdir(parents=True)
        shutil.copy(solution, folder / grading.notebook_name(ASSIGNMENT))
    out = tmp_path / "out"
    code = pipeline.main([ASSIGNMENT, str(submitted), "--course", str(course), "--out", str(out),
                          "--workers", "1", "--cell-timeout", "60"])
    err = capsys.readouterr().err
    assert code == 1
    assert "the grader failed for 5 of 5 submissions" in err and "run the same command" in err
    with open(out / "grades.csv", newline="") as f:
        rows = {r["student"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == students
    assert {r["status"] for r in rows.values()} == {"grader-error"}
    assert {r["score"] for r in rows.values()} == {""}, "no score, not a zero"
    stopped = [s for s, r in rows.items() if "stopped early" in r["problems"]]
    assert len(stopped) == 2, rows  # the first three failed alike: the rest were not tried
    assert gradebook.scores(course, ASSIGNMENT) == {}, "nothing may reach the gradebook"
    problems = (out / "problems.txt").read_text()
    assert "5 NOT GRADED" in problems and "a_package_this_grader_lacks" in problems

    # The grader fixed, the same command grades them all (nothing was kept from the failed run).
    shutil.copy(solution, source)
    code = pipeline.main([ASSIGNMENT, str(submitted), "--course", str(course), "--out", str(out),
                          "--workers", "1", "--cell-timeout", "60"])
    assert code == 0, capsys.readouterr().err
    with open(out / "grades.csv", newline="") as f:
        rows = {r["student"]: r for r in csv.DictReader(f)}
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert {r["from_earlier_run"] for r in rows.values()} == {""}
    full = sum(autograded_points(ASSIGNMENT).values())
    assert {float(r["score"]) for r in rows.values()} == {full}
    assert {s.score for s in gradebook.scores(course, ASSIGNMENT).values()} == {full}
