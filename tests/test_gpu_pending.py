"""GPU-timed parts without a GPU worker are pending, not free (issue: exercises third pass, item 8).

ex07's part 6 times the student's network on a GPU; on a CPU-only grader its check can only pass
with a note. Graded that way, a blank notebook earned those points. Now, without a worker that
declares a GPU, the part is left pending: no score in the CSV's total or the gradebook (marked as
needing grading there), a CSV column and the report say how many points wait, and a run on a
cluster with a GPU worker grades it. ``--gpu-parts-on-cpu`` keeps the old behaviour on request.
"""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from course_lib import grading
from course_lib.grading import gradebook, pipeline, scoring
from course_lib.grading.dispatch import gpu_tests
from course_lib.grading.model import SourceInfo, Status
from exercise_helpers import autograded_points

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENT = "ex07_mobilenet"


def test_pending_cells_are_left_out_of_the_decision():
    points = autograded_points(ASSIGNMENT)
    pending = set(gpu_tests(ASSIGNMENT))
    assert pending and pending <= set(points)
    info = SourceInfo(ASSIGNMENT, ASSIGNMENT, list(points), {}, points, set(), pending=pending)
    full = {g: p for g, p in points.items()}
    decision = scoring.decide(info, full, scoring.RecheckOutcome(dict(full)), True)
    assert decision.status is Status.OK and set(decision.final) == set(points) - pending
    assert info.max_score == sum(points.values()) - sum(points[g] for g in pending)


@pytest.mark.slow
@pytest.mark.one_core  # one worker: the deferred one-core jobs start here
def test_a_blank_ex07_gets_nothing_for_the_gpu_part_on_a_cpu_grader(tmp_path):
    course = grading.new_course(tmp_path / "course", [ASSIGNMENT], root=REPO)
    folder = tmp_path / "submitted" / "blank" / ASSIGNMENT
    folder.mkdir(parents=True)
    shutil.copy(grading.release_path(course, ASSIGNMENT), folder)
    result = pipeline.grade_class(ASSIGNMENT, tmp_path / "submitted", course, workers=1,
                                  out=tmp_path / "out", quiet=True)
    (sub,) = result.submissions
    pending = set(gpu_tests(ASSIGNMENT))
    assert sub.status is Status.OK and sub.score == 0.0
    assert not pending & set(sub.final)
    with open(result.csv, newline="") as f:
        (row,) = list(csv.DictReader(f))
    points = autograded_points(ASSIGNMENT)
    assert {row[g] for g in pending} == {"pending"}
    assert float(row["gpu_points_pending"]) == sum(points[g] for g in pending)
    assert float(row["max_score"]) == sum(points.values()) - sum(points[g] for g in pending)
    assert "PENDING" in result.report.read_text() and "PENDING" in result.problems.read_text()
    with gradebook.opened(gradebook.sqlite_url(course / "gradebook.db")) as gb:
        grades = {g.name: g for nb in gb.find_submission(ASSIGNMENT, "blank").notebooks
                  for g in nb.grades}
        assert all(grades[g].needs_manual_grade and grades[g].auto_score is None
                   for g in pending)
