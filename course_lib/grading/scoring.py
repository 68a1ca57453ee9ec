"""The one place a submission's final scores and status are decided.

Inputs are facts gathered by the other stages: what ingest found, nbgrader's scores (or that it
could not grade), the re-check's events, whether the kernel ever started, and any failure of the
grader itself. Rules:

* a grader failure (the sandbox, the nursery, the re-check's server, a worker or its environment)
  is never the student's zero: status ``grader-error``, no score anywhere, a re-run grades it;
* nothing gradable (missing, corrupt) or a submission whose grading killed its workers: 0;
* otherwise each test cell scores the lower of nbgrader's and the re-check's verdicts (the
  re-check's alone where nbgrader could not grade the notebook: its kernel died or hung).
  nbgrader's kernel runs only the tests students see (the hidden ones never reach it); the
  re-check runs those, then the hidden ones. A difference between nbgrader and the re-check on
  the same tests is a problem to report; hidden tests that fail are just a lower score (the
  feedback says why).

Problems are named from data (the re-check's event fields and a check failure's ``kind``), never
by matching message text.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from course_lib.grading.model import Failure, Incident, SourceInfo, Status, Submission

FLOOD_CHARS = 100_000  # a cell printing more than this is reported
# A check failure's kind (course_lib.checks.CheckFailed.kind) that means a broken result rather
# than a wrong one: reported for the instructor.
BROKEN_RESULTS = {"nan": "result has NaN/inf values", "dtype": "result has the wrong dtype",
                  "device": "result is on the wrong device",
                  "subclass": "result is a tensor subclass"}


@dataclass
class RecheckOutcome:
    scores: dict[str, float]
    problems: list[str] = field(default_factory=list)
    finished: bool = True
    # The notebook's first cell was its locked setup cell and it failed: no student code had run,
    # so the grader's environment is at fault (a memory limit too small for PyTorch, a package
    # missing in the box), not the student. Holds the error.
    setup_failed: str | None = None
    incidents: set[Incident] = field(default_factory=set)  # what its processes did (resume)
    # What the tests students see earned alone, where it differs (the hidden tests failed), and
    # the hidden tests' failure message for the feedback.
    visible_scores: dict[str, float] = field(default_factory=dict)
    hidden_failures: dict[str, str] = field(default_factory=dict)


def read_recheck(events: list[dict], info: SourceInfo, cell_timeout: float) -> RecheckOutcome:
    """The re-check's events for one submission -> per-test scores and problems."""
    out = RecheckOutcome({}, [], any(ev.get("event") in ("done", "exit") for ev in events))
    problems = out.problems
    last_started = None
    first_cell = True
    for ev in events:
        kind = ev.get("event")
        if kind == "start":
            last_started = ev.get("cell")
        elif kind == "cell":
            cell, name, error_kind = ev.get("cell"), ev.get("error_name"), ev.get("error_kind")
            trusted = info.cells.get(cell, {})
            if first_cell and ev.get("error") and trusted.get("locked") \
                    and trusted.get("cell_type") == "code" and cell not in info.points:
                out.setup_failed = f"{name}: {str(ev.get('error_text') or '')[:200]}"
            first_cell = False
            if ev.get("timed_out") or name == "_Timeout":
                problems.append(f"cell {cell}: ran past the {cell_timeout:g} s limit "
                                "(infinite loop?); interrupted")
            elif name in ("SystemExit", "KeyboardInterrupt"):
                problems.append(f"cell {cell}: raised {name}")
            elif error_kind == "exited":
                problems.append(f"cell {cell}: a student function raised SystemExit or "
                                "KeyboardInterrupt")
            elif name == "MemoryError" or error_kind == "memory":
                problems.append(f"cell {cell}: hit the memory limit")
            if error_kind in BROKEN_RESULTS:
                problems.append(f"test {cell}: {BROKEN_RESULTS[error_kind]}")
            if ev.get("stdout_chars", 0) > FLOOD_CHARS:
                problems.append(f"cell {cell}: flood of output ({ev['stdout_chars']:,} "
                                "characters; truncated)")
            if ev.get("kind") == "test":
                out.scores[cell] = float(ev.get("score", 0.0))
                if ev.get("hidden_failed") is True:
                    out.visible_scores[cell] = float(ev.get("visible_score", 0.0))
                    out.hidden_failures[cell] = str(ev.get("error_text") or "")[:2000]
                if ev.get("tampered_before"):
                    problems.append(
                        f"before test {cell}: student code replaced protected objects "
                        f"({', '.join(ev['tampered_before'][:4])}); restored for the test")
                if ev.get("tampered_during"):
                    problems.append(
                        f"test {cell}: protected objects replaced while it ran "
                        f"({', '.join(ev['tampered_during'][:4])}); cell scored 0")
        elif kind == "forged":
            out.incidents.add(Incident.FORGED)
            problems.append(f"cell {ev.get('cell')}: a forged result on the re-check's channel; "
                            "that and later tests score 0")
        elif kind == "exit":
            out.incidents.add(Incident.KERNEL_DIED)
            problems.append(f"kernel died in cell {last_started} ({ev.get('reason')}); later "
                            "cells score 0")
    if not out.finished:
        out.incidents.add(Incident.RECHECK_UNFINISHED)
        problems.append("re-check did not finish")
    for gid in info.points:
        out.scores.setdefault(gid, 0.0)
    return out


@dataclass
class Decision:
    status: Status
    final: dict[str, float]
    problems: list[str] = field(default_factory=list)


def decide(info: SourceInfo, nbgrader: dict[str, float] | None, recheck: RecheckOutcome | None,
           kernel_started: bool, grader_error: str | None = None) -> Decision:
    """Final scores and status of a notebook that was graded (see the module docstring)."""
    if grader_error:
        return Decision(Status.GRADER_ERROR, {}, [f"grader error: {grader_error}"])
    if nbgrader is None and not kernel_started:
        return Decision(Status.GRADER_ERROR, {}, [
            "grader error: the grading kernel never started (the sandbox or the interpreter "
            "failed before any student code ran: see the task's autograde.log and nursery.log)"])
    if recheck is None:
        return Decision(Status.GRADER_ERROR, {}, ["grader error: the re-check did not run"])
    if recheck.setup_failed:
        return Decision(Status.GRADER_ERROR, {}, [
            f"grader error: the notebook's setup cell failed before any student code ran "
            f"({recheck.setup_failed}): the grading environment cannot run this assignment"])
    if nbgrader is None:
        return Decision(Status.GRADED_BY_RECHECK, {g: s for g, s in recheck.scores.items()
                                                   if g not in info.pending}, [
            "nbgrader could not grade this notebook (kernel died or hung: see autograde.log); "
            "scored by the re-check"])
    final, problems = {}, []
    for gid in (g for g in info.points if g not in info.pending):
        n, r = nbgrader.get(gid, 0.0), recheck.scores.get(gid, 0.0)
        final[gid] = min(n, r)
        seen = recheck.visible_scores.get(gid, r)  # the re-check on the tests nbgrader ran
        if n != seen:
            problems.append(f"test {gid}: nbgrader gave {n:g}, the re-check {seen:g}; "
                            f"{final[gid]:g} kept")
    return Decision(Status.OK, final, problems)


def for_failure(info: SourceInfo, failure: Failure) -> Decision:
    """A submission for which no result came back."""
    if failure.grader:
        return Decision(Status.GRADER_ERROR, {}, [f"grader error: {failure.reason}"])
    return Decision(Status.KILLED_WORKER, _zeros(info), [failure.reason])


def for_unreadable(info: SourceInfo, status: Status) -> Decision:
    """Nothing gradable was submitted (ingest says why in the row's problems)."""
    return Decision(status, _zeros(info))


def _zeros(info: SourceInfo) -> dict[str, float]:
    return {g: 0.0 for g in info.points if g not in info.pending}


def record(sub: Submission, decision: Decision) -> None:
    """Write a decision into a submission's record (the only writer of status and final)."""
    sub.status, sub.final = decision.status, dict(decision.final)
    sub.problems += decision.problems
