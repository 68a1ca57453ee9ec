"""The one place a final score and status are decided (course_lib.grading.scoring), on facts
written out by hand: nbgrader's verdicts, the re-check's events, the kernel's start."""
from __future__ import annotations

from course_lib.grading import scoring
from course_lib.grading.model import Failure, SourceInfo, Status

POINTS = {"t1": 2.0, "t2": 3.0}
INFO = SourceInfo("ex", "ex", ["t1", "t2"], {}, POINTS, set())


def _events(*cells: dict) -> list[dict]:
    return [*({"event": "cell", "kind": "test", **c} for c in cells), {"event": "done"}]


def test_the_lower_verdict_counts_and_the_difference_is_named():
    recheck = scoring.read_recheck(_events({"cell": "t1", "score": 0.0}, {"cell": "t2",
                                                                          "score": 3.0}), INFO, 60)
    decision = scoring.decide(INFO, {"t1": 2.0, "t2": 3.0}, recheck, kernel_started=True)
    assert decision.status is Status.OK and decision.final == {"t1": 0.0, "t2": 3.0}
    assert decision.problems == ["test t1: nbgrader gave 2, the re-check 0; 0 kept"]


def test_a_dead_kernel_is_graded_by_the_recheck_but_one_that_never_started_is_the_graders():
    recheck = scoring.read_recheck(_events({"cell": "t1", "score": 2.0}), INFO, 60)
    dead = scoring.decide(INFO, None, recheck, kernel_started=True)
    assert dead.status is Status.GRADED_BY_RECHECK and dead.final == {"t1": 2.0, "t2": 0.0}
    never = scoring.decide(INFO, None, recheck, kernel_started=False)
    assert never.status is Status.GRADER_ERROR and never.final == {}
    assert "never started" in never.problems[0]


def test_grader_failures_score_nothing_and_a_killer_scores_zero():
    assert scoring.for_failure(INFO, Failure("no worker")).status is Status.GRADER_ERROR
    assert scoring.for_failure(INFO, Failure("no worker")).final == {}
    killer = scoring.for_failure(INFO, Failure("killed its worker 2 times", grader=False))
    assert killer.status is Status.KILLED_WORKER and killer.final == {"t1": 0.0, "t2": 0.0}
    assert scoring.decide(INFO, {"t1": 2.0}, None, True, "server down").status \
        is Status.GRADER_ERROR


def test_problems_are_named_from_the_failure_kind_not_its_message():
    """The same English words in a message name nothing; the kind does."""
    events = _events({"cell": "t1", "score": 0.0, "error": True, "error_kind": "nan",
                      "error_text": "whatever the check says"},
                     {"cell": "t2", "score": 0.0, "error": True, "error_kind": "wrong",
                      "error_text": "3 value(s) are NaN or infinite; result is on cuda"},
                     )
    outcome = scoring.read_recheck(events, INFO, 60)
    assert outcome.problems == ["test t1: result has NaN/inf values"]
    memory = scoring.read_recheck(_events({"cell": "t1", "score": 0.0, "error": True,
                                           "error_kind": "memory"}), INFO, 60)
    assert memory.problems == ["cell t1: hit the memory limit"]


def test_a_setup_cell_that_fails_before_any_student_code_is_the_graders_failure():
    """The locked setup cell is the notebook's first cell and fails: nothing of the student's
    had run (a memory limit too small for PyTorch, a package missing in the box). A student cell
    run before it makes the same failure the student's doing."""
    cells = {"setup": {"cell_type": "code", "locked": True, "source": "import torch"},
             "mine": {"cell_type": "code", "locked": False, "source": ""}}
    info = SourceInfo("ex", "ex", ["setup", "t1", "t2"], cells, POINTS, set())
    failed = {"event": "cell", "cell": "setup", "kind": "code", "error": True,
              "error_name": "MemoryError", "error_text": ""}
    first = scoring.read_recheck([failed, {"event": "done"}], info, 60)
    decision = scoring.decide(info, None, first, kernel_started=True)
    assert decision.status is Status.GRADER_ERROR and "setup cell" in decision.problems[0]
    mine = {"event": "cell", "cell": "cell-0", "kind": "code", "error": False}
    after = scoring.read_recheck([mine, failed, {"event": "done"}], info, 60)
    assert after.setup_failed is None
    assert scoring.decide(info, None, after, True).status is Status.GRADED_BY_RECHECK
