"""Hidden tests stay with the re-check's server (issue 21): nbgrader's kernel runs the tests
students see, the server runs those and then the hidden ones, and the scores and feedback say
which part failed.

Independent truths: nbgrader's own ClearHiddenTests (what a release keeps of a test cell) and the
checksums nbgrader wrote into the release notebooks; the grading of a whole class through the
pipeline, with a student whose mistake only a hidden case catches and one who looks for the hidden
tests in nbgrader's kernel, is in tests/test_grading_pipeline.py.
"""
from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import nbformat
import pytest

from course_lib import grading
from course_lib.grading import gradebook, scoring
from course_lib.grading.inside.checker import split_hidden
from course_lib.grading.model import SourceInfo

REPO = Path(__file__).resolve().parents[1]


def _test_cells(notebook: Path):
    for cell in nbformat.read(notebook, as_version=4).cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade") and not meta.get("solution"):
            yield cell


def test_the_split_keeps_what_nbgraders_release_keeps():
    """For every test cell of the course: the part students see is exactly what nbgrader's
    ClearHiddenTests leaves, and the hidden part holds every other line but the delimiters."""
    from nbgrader.preprocessors import ClearHiddenTests

    clear = ClearHiddenTests()
    with_hidden = 0
    for assignment in grading.assignments(REPO):
        for cell in _test_cells(REPO / "solutions" / assignment / f"{assignment}.ipynb"):
            visible, hidden = split_hidden(cell.source)
            released = nbformat.from_dict(cell)
            removed = clear._remove_hidden_test_region(released)
            assert visible == released.source, cell.metadata["nbgrader"]["grade_id"]
            assert bool(hidden.strip()) == removed
            kept = [line for line in cell.source.split("\n") if "HIDDEN TESTS" not in line]
            assert sorted(kept) == sorted(visible.split("\n") + hidden.split("\n")
                                          if hidden else visible.split("\n"))
            with_hidden += removed
    assert with_hidden >= 30  # the course's hidden tests (32 blocks in 10 exercises)


@pytest.mark.slow
def test_a_shard_gradebook_holds_the_release_test_cells(tmp_path):
    """The shard's copy of the gradebook: each test cell's source and checksum become exactly
    the release notebook's (written by nbgrader), so nbgrader's autograde runs the cells the
    student got; the course's own gradebook keeps the hidden tests."""
    assignment = "ex01_standard"
    course = grading.new_course(tmp_path / "course", [assignment], root=REPO)
    shutil.copy(course / "gradebook.db", tmp_path / "shard.db")
    changed = gradebook.hide_hidden_tests(gradebook.sqlite_url(tmp_path / "shard.db"),
                                          assignment, assignment)
    release = {c.metadata["nbgrader"]["grade_id"]: c
               for c in nbformat.read(grading.release_path(course, assignment), 4).cells
               if "nbgrader" in c.metadata}
    assert sorted(changed) == ["part1-tests", "part2-tests", "part4-tests"]

    def rows(db: Path) -> dict[str, tuple[str, str]]:
        with sqlite3.connect(db) as conn:
            return {name: (source, checksum) for name, source, checksum in conn.execute(
                "SELECT name, source, checksum FROM source_cell")}

    shard, full = rows(tmp_path / "shard.db"), rows(course / "gradebook.db")
    for gid in changed:
        assert shard[gid] == (release[gid].source, release[gid].metadata["nbgrader"]["checksum"])
        assert "BEGIN HIDDEN TESTS" in full[gid][0]
    assert {g: v for g, v in shard.items() if g not in changed} == \
        {g: v for g, v in full.items() if g not in changed}


def _info() -> SourceInfo:
    return SourceInfo("ex", "ex", ["a", "b"], {}, {"a": 3.0, "b": 2.0}, set())


def test_failed_hidden_tests_lower_the_score_without_a_problem():
    """nbgrader ran the visible tests only: where the re-check agrees on those and only the
    hidden ones failed, the lower score counts and nothing is reported; where the two disagree
    on the same tests, it is reported as before."""
    recheck = scoring.RecheckOutcome({"a": 0.0, "b": 2.0}, visible_scores={"a": 3.0},
                                     hidden_failures={"a": "conv_params(37, ...): too high"})
    decision = scoring.decide(_info(), {"a": 3.0, "b": 2.0}, recheck, kernel_started=True)
    assert decision.final == {"a": 0.0, "b": 2.0}
    assert decision.problems == []
    tampered = scoring.decide(_info(), {"a": 3.0, "b": 2.0},
                              scoring.RecheckOutcome({"a": 0.0, "b": 2.0}), kernel_started=True)
    assert tampered.final == {"a": 0.0, "b": 2.0}
    assert tampered.problems == ["test a: nbgrader gave 3, the re-check 0; 0 kept"]


def test_the_recheck_events_carry_both_verdicts():
    events = [{"event": "cell", "cell": "a", "kind": "test", "score": 0.0, "visible_score": 3.0,
               "hidden_failed": True, "error": True, "error_text": "too high"},
              {"event": "cell", "cell": "b", "kind": "test", "score": 2.0, "visible_score": 2.0,
               "hidden_failed": False}, {"event": "done"}]
    out = scoring.read_recheck(events, _info(), 30)
    assert out.scores == {"a": 0.0, "b": 2.0}
    assert out.visible_scores == {"a": 3.0} and out.hidden_failures == {"a": "too high"}


HIDDEN_CASE_WRONG = """
def conv_params(in_channels, out_channels, kernel_size, bias=True):
    if in_channels == 37:  # right on every case the release shows, wrong on a hidden one
        return 0
    return kernel_size * kernel_size * in_channels * out_channels + (out_channels if bias else 0)


def conv_macs(in_channels, out_channels, kernel_size, out_h, out_w):
    return kernel_size * kernel_size * in_channels * out_channels * out_h * out_w
"""


@pytest.mark.slow
def test_the_server_runs_the_hidden_tests_after_the_visible_ones(tmp_path):
    """A real re-check server (unsandboxed): a function right on the visible cases and wrong
    on a hidden one scores the visible tests' points as "visible_score" and 0 in all; the
    solution passes both parts; the child is sent no test cell."""
    from test_value_checking import _job

    from course_lib.grading.sandbox.recheck_client import RecheckServer

    with RecheckServer(None, cell_timeout=30, mem_mb=None, log=tmp_path / "recheck.log",
                       check_modules=["course_lib.checks.ex01_standard"]) as server:
        keep = ("setup", "part2", "part2-tests")
        for edits, score, hidden_failed in (({}, 3.0, False),
                                            ({"part2": HIDDEN_CASE_WRONG}, 0.0, True)):
            events = server.judge(_job("ex01_standard", keep, edits), budget_s=120)
            test = next(e for e in events if e.get("kind") == "test")
            assert (test["checked_in"], test["score"], test["visible_score"],
                    test["hidden_failed"]) == ("server", score, 3.0, hidden_failed), events
        assert "conv_params(37, 53, 5" in test["error_text"]
