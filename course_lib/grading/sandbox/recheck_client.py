"""The re-check, seen from outside: one sandboxed server per worker, fed one student at a time.

:class:`RecheckServer` starts ``python -m course_lib.grading.inside.recheck serve`` in the box
(or, without a sandbox, as a plain subprocess), sends it one job at a time over a pipe and reads
its events back over another, with a deadline per job. A server that dies during a job blames
that job (its student's code ran there: a fork bomb, a kill); the next job gets a fresh server. A
server that cannot even start is the grader's failure (:class:`RecheckUnavailable`), never a
student's zero.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import shutil
import uuid
from dataclasses import replace
from pathlib import Path

from course_lib.grading.inside import wire
from course_lib.grading.inside.hygiene import children, state
from course_lib.grading.sandbox import seccomp
from course_lib.grading.sandbox.policy import Sandbox
from course_lib.grading.sandbox.supervisor import new_cage, program_pid, run_sandboxed

READY_TIMEOUT_S = 600  # the server's imports, on a loaded machine
# While it judges, the server says it is alive every second (inside.recheck.HEARTBEAT_S): one
# that says nothing for this long is stopped (SIGSTOP) or wedged, whatever its budget.
STALL_S = 10


class RecheckUnavailable(RuntimeError):
    """The re-check's server could not start: the grader's failure; the message says why."""


class RecheckServer:
    """Use as a context manager; :meth:`judge` re-checks one job (``{"student", "cells": [{"id",
    "kind": "code"|"test", "source", "locked", "points"}]}``) and returns its events."""

    def __init__(self, box: Sandbox | None, cell_timeout: float, mem_mb: int | None,
                 check_modules: list[str], log: Path | None = None) -> None:
        self.box, self.cell_timeout, self.mem_mb = box, cell_timeout, mem_mb
        self.check_modules, self.log = list(check_modules), log
        self._job_w = self._lines = self._thread = None
        self._outcome: dict = {}
        self._scratch = None
        self._ready = False
        self.starts = 0

    def __enter__(self) -> "RecheckServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -------------------------------------------------------------- the server
    def _launch(self) -> None:
        job_r, job_w = os.pipe()
        res_r, res_w = os.pipe()
        box = self.box
        # Sandboxed, the scratch folder is a tmpfs in the box (bounded, gone with it), in the
        # masked work folder: no host folder is made for it.
        self._scratch = None if box is not None else tempfile.mkdtemp(prefix="recheck-scratch-")
        inside = (f"{box.scratch_root}/recheck-{uuid.uuid4().hex[:8]}" if box is not None
                  else self._scratch)
        # The server loads the system-call filter into each student's child itself, after
        # giving it namespaces of its own (inside/isolation.py), so bwrap does not load it.
        filter_fd = (seccomp.filter_fd() if box is not None and box.limits.caps
                     and seccomp.supported() else None)
        command = [sys.executable, "-m", "course_lib.grading.inside.recheck", "serve",
                   "--fd", str(res_w), *(["--sandboxed"] if box is not None else []),
                   *(["--child-seccomp", str(filter_fd)] if filter_fd is not None else []),
                   # Limits(caps=False), for measuring only: issue 21's protections all off.
                   *(["--checks-in-child"] if box is not None and not box.limits.caps else []),
                   "--timeout", str(self.cell_timeout), "--scratch", inside,
                   *(["--mem-mb", str(self.mem_mb)] if self.mem_mb else []),
                   *[a for m in self.check_modules for a in ("--check", m)]]
        log_file = open(self.log, "a") if self.log else subprocess.DEVNULL
        outcome = self._outcome = {}

        def run() -> None:
            try:
                if box is None:
                    proc = subprocess.Popen(command, stdin=job_r, stdout=log_file,
                                            stderr=subprocess.STDOUT, pass_fds=(res_w,),
                                            start_new_session=True)
                    outcome["proc"] = proc
                    outcome["returncode"] = proc.wait()
                else:
                    # The server lives for many students: its wall clock is each job's deadline
                    # (judge), never its age; the process count still holds.
                    server_box = replace(box, limits=replace(box.limits, wall_s=None))
                    outcome["report"] = run_sandboxed(
                        server_box, command, "recheck", writable={}, stdin=job_r,
                        stdout=log_file, stderr=subprocess.STDOUT,
                        pass_fds=(res_w, *([filter_fd] if filter_fd is not None else [])),
                        tmpfs={inside: box.limits.scratch_mb}, filter_inside=box.limits.caps,
                        on_start=lambda proc, cage: outcome.update(proc=proc, cage=cage))
            finally:
                os.close(job_r)
                os.close(res_w)
                if filter_fd is not None:
                    os.close(filter_fd)
                if log_file is not subprocess.DEVNULL:
                    log_file.close()

        self._thread = threading.Thread(target=run, daemon=True, name="recheck-server")
        self._thread.start()
        self._job_w, self._lines = job_w, wire.LineReader(res_r)
        self.starts += 1
        self._ready = False

    def start_soon(self) -> None:
        """Start the server now without waiting for it (its imports then overlap the rest of
        the worker's start-up); the first :meth:`judge` waits for it to be ready."""
        if self._job_w is None:
            self._launch()

    def _start(self) -> None:
        if self._job_w is None:
            self._launch()
        if self._ready:
            return
        try:
            ready = self._lines.read(READY_TIMEOUT_S)
        except TimeoutError:
            ready = None
        if not ready or ready.get("event") != "ready":
            self.close()
            raise RecheckUnavailable(f"the re-check's server did not start{self._log_tail()}")
        self._ready = True

    def _log_tail(self) -> str:
        try:
            lines = Path(self.log).read_text(errors="replace").strip().splitlines()
            return f" (its log ends: {' | '.join(lines[-3:])[:500]})" if lines else ""
        except (OSError, TypeError):
            return ""

    def close(self, kill: bool = False) -> None:
        """Stop the server: its input ends and it returns (``kill``: at once, it is stuck)."""
        proc = self._outcome.get("proc")
        if kill and proc is not None:
            proc.kill()
        if self._job_w is not None:
            try:
                os.close(self._job_w)  # the server's stdin ends: it returns
            except OSError:
                pass
        proc = self._outcome.get("proc")
        if self._thread is not None:
            self._thread.join(timeout=10)
            if self._thread.is_alive() and proc is not None:
                proc.kill()
                self._thread.join(timeout=10)
        if self._lines is not None:
            try:
                os.close(self._lines.source)
            except OSError:
                pass
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
        self._job_w = self._lines = self._thread = self._scratch = None
        self._ready = False

    # -------------------------------------------------------------- one job
    def _cage_server(self, student: str):
        """Move the server and its zygote into a new cage for this job: the child the zygote
        forks for the student, and all that child starts, live there (whole-job caps; killed at
        once afterwards). Returns (the cage, the processes moved)."""
        box, run_cage = self.box, self._outcome.get("cage")
        proc = self._outcome.get("proc")
        if box is None or run_cage is None or proc is None:
            return None, []
        server = program_pid(proc.pid)
        # Between jobs the server's only live child is its zygote (inside/zygote.py).
        moved = ([server, *(p for p in children(server) if state(p) not in (None, "Z"))]
                 if server is not None else [])
        cage = new_cage(f"recheck-{student}", box.limits)
        if cage is not None and (not moved or not all(cage.add(pid) for pid in moved)):
            if run_cage is not None:
                for pid in moved:
                    run_cage.add(pid)
            cage.close()
            cage = None
        return cage, moved

    def _uncage_server(self, cage, moved: list[int]) -> list[str]:
        """Back to the server's own cage; kill what the job left in its cage; the caps hit."""
        if cage is None:
            return []
        run_cage = self._outcome.get("cage")
        if run_cage is not None:
            for pid in moved:
                run_cage.add(pid)
        hits = cage.hits()
        cage.close()
        return hits

    def judge(self, job: dict, budget_s: float) -> list[dict]:
        """The server's events for one job (``start``, ``cell``, ``forged``, ``exit``, ``done``);
        within ``budget_s`` seconds, else an ``exit`` event that says so. A server whose zygote
        is gone is replaced once before any student code ran (then: RecheckUnavailable)."""
        for attempt in (1, 2):
            if not self._ready:
                self._start()
            cage, moved = self._cage_server(str(job.get("student", "job")))
            try:
                events = self._judge(job, budget_s)
            finally:
                hits = self._uncage_server(cage, moved)
            cannot = [e for e in events if e.get("event") == "cannot-fork"]
            if not cannot:
                break
            self.close(kill=True)
            if attempt == 2:
                raise RecheckUnavailable(f"the re-check could not start: {cannot[0]['reason']}")
        if "memory" in hits:
            limit = self.box.limits.mem_mb
            for event in events:
                if event.get("event") == "exit":
                    event["reason"] = (f"its processes reached their memory cap of {limit} MiB "
                                       f"({event['reason']})")
        return events

    def _judge(self, job: dict, budget_s: float) -> list[dict]:
        events: list[dict] = []
        deadline = time.monotonic() + budget_s
        try:
            wire.write(self._job_w, job)
        except OSError:
            self.close(kill=True)
            return [{"event": "exit", "reason": "the re-check's server stopped"}]
        unclean = False
        while True:
            left = deadline - time.monotonic()
            try:
                event = self._lines.read(max(0.1, min(left, STALL_S)))
            except TimeoutError:
                event = None
                why = (f"its re-check ran past its budget of {budget_s:g} s" if left <= STALL_S
                       else f"the re-check's server stopped answering for {STALL_S} s (stopped "
                            "or wedged during this job)")
            else:
                why = None
            if event is None:  # the server died or hung during this student's job
                report = self._outcome.get("report")
                self.close(kill=why is not None)
                report = report or self._outcome.get("report")
                why = why or getattr(report, "killed", None) or "the re-check's server stopped"
                events.append({"event": "exit", "reason": why})
                return events
            kind = event.get("event")
            if kind == "end-job":
                if unclean:  # the next student gets a fresh server
                    self.close(kill=True)
                return events
            if kind == "unclean":
                unclean = True
            elif kind not in ("start-job", "alive"):
                events.append(event)
