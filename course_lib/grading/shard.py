"""Grading one submission end to end in a worker's private shard course.

A :class:`GradingSession` is what a worker keeps warm for one batch: a private copy of the course
(config, sources, release, gradebook, from the coordinator's :func:`course_bundle`), the box
(:mod:`.sandbox`) with its warm kernel nursery, the re-check's server and nbgrader itself
(:mod:`.nbgrader_runner`), all started once. :meth:`GradingSession.grade` then takes one
notebook at a time: nbgrader's autograde in a sandboxed kernel and, beside it, the
re-check -> the decision (:mod:`.scoring`) -> nbgrader's feedback with the final scores, and
returns it all as data (:class:`~.model.Graded`). Because nothing is started per notebook, a
task can be one notebook, and a slow notebook holds only its own worker.
"""
from __future__ import annotations

import datetime
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat

from course_lib.grading import feedback as safe_feedback
from course_lib.grading import gradebook, scoring
from course_lib.grading.course import notebook_name
from course_lib.grading.model import (GradingOptions, Graded, Incident, SourceInfo, Status,
                                      TaskSpec, Work)
from course_lib.grading.nbgrader_runner import NbgraderRunner, nbgrader_settings
from course_lib.grading.sandbox.broker import Broker
from course_lib.grading.sandbox.kernelspec import install_kernelspec, kernel_env
from course_lib.grading.sandbox.policy import Sandbox
from course_lib.grading.sandbox.recheck_client import RecheckServer, RecheckUnavailable
from course_lib.grading.sandbox.supervisor import events_file

MAX_FEEDBACK_CHARS = 2_000_000  # of one feedback page sent back (outputs are capped before)


def course_bundle(shard: Path, assignment: str) -> dict[str, bytes]:
    """The files a worker needs for a private course: a shard in which the coordinator generated
    ``assignment`` (config, sources, release, gradebook), so workers run no generate step."""
    shard = Path(shard)
    files = {name: (shard / name).read_bytes() for name in ("nbgrader_config.py", "gradebook.db")}
    for folder in ("solutions", "exercises"):
        for path in sorted((shard / folder / assignment).rglob("*")):
            if path.is_file() and not {".ipynb_checkpoints", "__pycache__"} & set(path.parts):
                files[str(path.relative_to(shard))] = path.read_bytes()
    return files


# Heads the hidden tests' failure in a feedback page.
HIDDEN_FAILED = ("The hidden tests of this cell (run by the grader after the tests above) "
                 "failed:")


def recheck_job(student: str, notebook: Path, info: SourceInfo) -> dict:
    """The cells the re-check runs: student code as submitted, locked and test cells from the
    gradebook, deleted test cells put back where the release had them."""
    nb = nbformat.read(notebook, as_version=4)
    entries: list[tuple[str | None, dict]] = []
    seen = set()
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in info.cells and gid not in seen:
            seen.add(gid)
            trusted = info.cells[gid]
            if gid in info.points:
                entries.append((gid, {"id": gid, "kind": "test", "source": trusted["source"],
                                      "points": info.points[gid], "locked": True}))
                continue
            if trusted["locked"]:
                entries.append((gid, {"id": gid, "kind": "code", "locked": True,
                                      "source": trusted["source"]}))
                continue
        entries.append((gid, {"id": gid or f"cell-{i}", "kind": "code", "locked": False,
                              "source": cell.source}))
    for gid in info.order:  # deleted cells: after the previous cell the release has
        if gid in seen or gid not in info.cells or info.cells[gid]["cell_type"] != "code":
            continue
        if gid not in info.points and not info.cells[gid]["locked"]:
            continue
        before = info.order[:info.order.index(gid)]
        pos = max((k + 1 for k, (g, _) in enumerate(entries) if g in before), default=0)
        kind = "test" if gid in info.points else "code"
        entries.insert(pos, (gid, {"id": gid, "kind": kind, "locked": True,
                                   "source": info.cells[gid]["source"],
                                   "points": info.points.get(gid, 0.0)}))
        seen.add(gid)
    return {"student": student, "cells": [e for _, e in entries]}


def _stamp(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def notebook_phases(autograded: Path, info: SourceInfo) -> dict[str, float]:
    """Seconds of the locked setup cells ("imports"), the student's cells and the checks (the test
    cells), from the cell timestamps nbgrader's executor records; and when the first cell began."""
    try:
        nb = nbformat.read(autograded, as_version=4)
    except Exception:  # not graded by nbgrader (kernel died, corrupt output): no timings
        return {}
    phases = {"imports": 0.0, "student cells": 0.0, "checks": 0.0}
    first = None
    for cell in nb.cells:
        ex = cell.metadata.get("execution") or {}
        if "iopub.status.busy" not in ex or "iopub.status.idle" not in ex:
            continue
        begin, end = _stamp(ex["iopub.status.busy"]), _stamp(ex["iopub.status.idle"])
        first = begin if first is None else first
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        kind = ("checks" if gid in info.points else
                "imports" if gid in info.cells and info.cells[gid]["locked"] else
                "student cells")
        phases[kind] += end - begin
    if first is not None:
        phases["first cell at"] = first
    return phases


def slow_cells(autograded: Path, cell_timeout: float) -> list[str]:
    """Cells that used more than half their time limit, from nbclient's timing metadata, and a
    notebook that used more than half of what all its cells together may take."""
    try:
        nb = nbformat.read(autograded, as_version=4)
    except Exception:  # nbgrader wrote it; a broken one is reported elsewhere
        return []
    problems, total, code_cells = [], 0.0, 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        code_cells += 1
        timing = cell.metadata.get("execution", {})
        try:
            seconds = _stamp(timing["shell.execute_reply"]) - _stamp(timing["iopub.execute_input"])
        except (KeyError, ValueError, AttributeError):
            continue
        total += seconds
        if seconds > 0.5 * cell_timeout:
            gid = cell.metadata.get("nbgrader", {}).get("grade_id", cell.get("id", "?"))
            problems.append(f"cell {gid}: took {seconds:.0f} s of its {cell_timeout:g} s limit "
                            "(slows the whole batch)")
    if code_cells and total > 0.5 * cell_timeout * code_cells:
        problems.append(f"used {total:.0f} s, most of its time budget "
                        f"({cell_timeout * code_cells:g} s)")
    return problems


def kernel_runs(box: Sandbox, student: str) -> list[dict]:
    """The supervisor's reports of this student's kernel runs (RunReport as JSON lines)."""
    path = events_file(box, student)
    runs = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            runs.append(json.loads(line))
        except ValueError:
            continue
    return runs


def sandbox_problems(runs: list[dict]) -> list[str]:
    """What the box's supervisor saw of a student's kernel: processes it started, files it tried
    to change outside its folder, and why it was stopped."""
    problems = []
    for run in runs:
        if run.get("killed"):
            problems.append(f"sandbox stopped the kernel: it {run['killed']}")
        caps = {"memory": "its memory cap (all its processes and shared memory together): the "
                          "kernel's OOM killer ended a process",
                "tasks": "its cap on processes and threads: a fork or new thread failed"}
        for hit in run.get("caps_hit", []):
            peak = f", peak {run['peak_mb']:g} MiB" if hit == "memory" and run.get("peak_mb") else ""
            problems.append(f"the notebook reached {caps.get(hit, hit)}{peak}")
        spawned = sorted({e["detail"] for e in run.get("audit", []) if e["kind"] == "spawn"})
        # The audit hook sees every process Python starts; the supervisor's count (polled) also
        # catches C-level forks, but may glimpse one transient process of the kernel's own.
        if spawned or run.get("max_processes", 0) > 2:
            problems.append(f"started processes ({', '.join(spawned[:3]) or 'not from Python'}"
                            f", up to {run.get('max_processes', 0)} seen at once); all were "
                            "ended with the notebook")
        writes = [e["detail"] for e in run.get("audit", []) if e["kind"] == "write"]
        if writes:
            problems.append(f"tried to change files outside its folder ({'; '.join(writes[:3])}"
                            f"{'; ...' if len(writes) > 3 else ''}): refused by the sandbox")
    return problems


def safe_for_feedback(autograded: Path, info: SourceInfo,
                      hidden_failures: dict[str, str] | None = None) -> bool:
    """Rewrite the graded notebook so that its feedback page is safe to open
    (:func:`.feedback.make_safe`: student HTML/JavaScript as text, outputs capped), with the
    message of each test cell's failed hidden tests under the tests the student saw (nbgrader's
    kernel ran only those: the re-check's server ran the hidden ones); False when it cannot be
    read (no nbgrader page then: the pipeline writes a plain one)."""
    try:
        nb = nbformat.read(autograded, as_version=4)
    except Exception:  # nbgrader wrote it; a broken one gets the plain page
        return False
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if cell.cell_type == "code" and gid in (hidden_failures or {}):
            cell.setdefault("outputs", []).append(nbformat.v4.new_output(
                "stream", name="stderr", text=f"{HIDDEN_FAILED}\n{hidden_failures[gid]}\n"))
    safe_feedback.make_safe(nb, {g: c["source"] for g, c in info.cells.items()
                                 if c["cell_type"] == "markdown" and c["locked"]})
    nbformat.write(nb, autograded)
    return True


def sandbox_incidents(runs: list[dict]) -> set[Incident]:
    """The :class:`~.model.Incident` kinds behind :func:`sandbox_problems`' reports."""
    found = set()
    for run in runs:
        audit = run.get("audit", [])
        if run.get("killed"):
            found.add(Incident.KERNEL_STOPPED)
        if any(e["kind"] == "spawn" for e in audit) or run.get("max_processes", 0) > 2:
            found.add(Incident.PROCESSES)
        if any(e["kind"] == "write" for e in audit):
            found.add(Incident.WRITES)
    return found


def _timed(fn, *args):
    """``fn(*args)`` and the seconds it took."""
    started = time.monotonic()
    return fn(*args), time.monotonic() - started


class GradingSession:
    """A worker's warm grading set-up for one batch (see the module docstring). Use as a context
    manager; ``hide``: folders of the coordinator to mask where they exist on this host."""

    def __init__(self, spec: TaskSpec, root: Path) -> None:
        self.spec, self.root = spec, Path(root)
        self.options: GradingOptions = spec.options
        self.info, a = spec.info, spec.assignment
        self.shard = self.root / "shard"
        for name, data in spec.bundle.items():
            path = self.shard / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        self.db = gradebook.sqlite_url(self.shard / "gradebook.db")
        # nbgrader's kernel gets the test cells students see; the hidden tests stay with the
        # re-check's server, which has them from ``info`` (the course's gradebook).
        gradebook.hide_hidden_tests(self.db, a, self.info.notebook)
        self.checks = [f"course_lib.checks.{a}"]
        self.box = self.broker = None
        if self.options.sandboxed:
            hide = [Path(p) for p in spec.hide if Path(p).exists()]
            box = Sandbox.for_batch(self.root, hide=hide, limits=self.options.limits).for_shard()
            self.broker = Broker(box, self.checks, log=self.shard / "nursery.log").__enter__()
            self.box = self.broker.box
        self.env = kernel_env(install_kernelspec(self.root / "jupyter", self.box,
                                                 self.options.mem_mb))
        overrides = nbgrader_settings(self.options.cell_timeout)
        if self.box is not None:
            overrides.update(self.box.kernel_manager_config("kernel"))
        self.nbgrader = NbgraderRunner(self.shard, a, overrides, self.env,
                                       log=self.shard / "autograde.log")
        self.recheck = RecheckServer(self.box, self.options.cell_timeout, self.options.mem_mb,
                                     self.checks, log=self.shard / "recheck.log")
        # The nursery (above), nbgrader and the re-check's server import at the same time: a
        # worker's first notebook no longer waits for the three one after another.
        self.nbgrader.start_soon()
        self.recheck.start_soon()
        self.budget = self.options.notebook_budget_s(self.info.code_cells)
        self.beside = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recheck")

    def __enter__(self) -> "GradingSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.beside.shutdown(wait=False)
        self.nbgrader.close()
        self.recheck.close()
        if self.broker is not None:
            self.broker.__exit__(None, None, None)
            shutil.rmtree(self.box.ipc_dir, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def logs(self) -> dict[str, str]:
        return {log.name: log.read_text(errors="replace")[-200_000:]
                for log in sorted(self.shard.glob("*.log"))}

    # -------------------------------------------------------------- one notebook
    def grade(self, item: Work, worker: str) -> Graded:
        a, info, student = self.spec.assignment, self.info, item.student
        nbname = notebook_name(a)
        for folder in ("submitted", "autograded", "feedback"):
            shutil.rmtree(self.shard / folder / student, ignore_errors=True)
        if self.box is not None:
            events_file(self.box, student).unlink(missing_ok=True)
        submitted = self.shard / "submitted" / student / a / nbname
        submitted.parent.mkdir(parents=True)
        submitted.write_bytes(item.notebook)
        problems: list[str] = []
        timing: dict[str, float] = {}

        t0 = time.time()
        # The re-check runs beside nbgrader's autograde, not after it: both only read the
        # submitted notebook, and a notebook that sleeps (legal, up to its budget) then holds its
        # worker for one run of its cells instead of two.
        recheck = self.beside.submit(_timed, self.recheck.judge,
                                     recheck_job(student, submitted, info), self.budget)
        ok, _ = self.nbgrader.run("autograde", student,
                                  self.budget + self.options.NBGRADER_MARGIN_S)
        t1 = time.time()
        autograded = self.shard / "autograded" / student / a / nbname
        # Only a run nbgrader finished is its verdict: a stopped (hung) or failed one leaves the
        # zeros it wrote before the notebook ran; the re-check decides those.
        nbgrader = (gradebook.nbgrader_scores(self.db, a, student, info.points)
                    if ok and autograded.is_file() else None)
        if nbgrader is not None:
            problems += slow_cells(autograded, self.options.cell_timeout)
            phases = notebook_phases(autograded, info)
            first = phases.pop("first cell at", t0)
            timing.update(phases, **{"kernel start": max(0.0, first - t0)})
            timing["autograde, other"] = max(0.0, (t1 - t0) - timing["kernel start"]
                                             - sum(phases.values()))
        else:
            timing["autograde, other"] = t1 - t0
        if self.broker is not None:  # its last kernel's report is written after nbgrader returns
            self.broker.wait_idle(60)
        runs = kernel_runs(self.box, student) if self.box is not None else []
        problems += sandbox_problems(runs)
        incidents = sandbox_incidents(runs)
        kernel_started = self.box is None or any(r.get("started", True) for r in runs)

        grader_error = None
        try:
            events, timing["recheck, beside autograde"] = recheck.result()
            outcome = scoring.read_recheck(events, info, self.options.cell_timeout)
            problems += outcome.problems
            incidents |= outcome.incidents
        except RecheckUnavailable as exc:
            outcome, grader_error = None, str(exc)
        t2 = time.time()
        timing["recheck"] = t2 - t1  # what the re-check added after the autograde ended
        decision = scoring.decide(info, nbgrader, outcome, kernel_started, grader_error)
        feedback = None
        if decision.status is not Status.GRADER_ERROR and nbgrader is not None:
            gradebook.write_feedback_scores(self.db, a, student, decision.final)
            if safe_for_feedback(autograded, info, outcome.hidden_failures):  # else a plain page
                self.nbgrader.run("feedback", student, self.options.NBGRADER_MARGIN_S)
            page = self.shard / "feedback" / student / a / nbname.replace(".ipynb", ".html")
            if page.is_file() and not page.is_symlink():
                feedback = page.read_text(encoding="utf-8", errors="replace")[:MAX_FEEDBACK_CHARS]
        timing["feedback"] = time.time() - t2
        for folder in ("submitted", "autograded", "feedback"):
            shutil.rmtree(self.shard / folder / student, ignore_errors=True)
        return Graded(student, decision.status, nbgrader,
                      outcome.scores if outcome is not None else {}, decision.final,
                      safe_feedback.clip_problems(problems + decision.problems), feedback, worker,
                      {k: round(v, 3) for k, v in timing.items()},
                      incidents=sorted(i.value for i in incidents))
