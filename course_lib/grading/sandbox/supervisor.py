"""The one supervisor of every sandboxed run: process count, wall clock, audit channel, report.

A run is either a program bwrap starts for it (:func:`run_sandboxed`: a kernel of its own, the
re-check's server) or a kernel the warm nursery forked (:mod:`.broker`); both are watched by a
:class:`Supervision` and end in the same :class:`RunReport`, which the pipeline reads.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from course_lib.grading.inside import wire
from course_lib.grading.inside.hygiene import alive_descendants, children
from course_lib.grading.inside.kernel import AUDIT_FD_ENV, AUDIT_PROTECTED_ENV, STARTED
from course_lib.grading.sandbox import seccomp
from course_lib.grading.sandbox.cgroups import Cage
from course_lib.grading.sandbox.policy import Limits, Sandbox


@dataclass
class RunReport:
    """What the supervisor saw of one sandboxed run."""
    name: str
    seconds: float
    max_processes: int      # processes the program started, at the busiest moment seen
    killed: str | None      # which limit it broke, if the supervisor killed it for that
    returncode: int | None
    audit: list[dict] = field(default_factory=list)  # spawned processes, writes outside
    started: bool = True    # the program inside said it started (before any student code)
    caps_hit: list[str] = field(default_factory=list)  # whole-notebook caps it ran into
    peak_mb: float | None = None  # the most memory all its processes held at once (its cage)


class Supervision:
    """Watches one run: :meth:`observe` with the number of processes the program started, as
    often as the caller polls; it says which limit was broken first. The audit channel (a pipe
    whose write end the program gets) is read on a thread of its own, bounded."""

    def __init__(self, name: str, limits: Limits, audit_read: int | None = None) -> None:
        self.name, self.limits = name, limits
        self.start = time.monotonic()
        self.peak, self.killed = 0, None
        self.audit: list[dict] = []
        self._reader = None
        if audit_read is not None:
            self._reader = threading.Thread(target=wire.collect_audit,
                                            args=(audit_read, self.audit), daemon=True)
            self._reader.start()

    def observe(self, processes: int) -> str | None:
        """Record a count; returns the reason to kill the run when a limit is broken (once)."""
        self.peak = max(self.peak, processes)
        if self.killed is None:
            if processes > self.limits.processes:
                self.killed = f"started more than {self.limits.processes} processes"
                return self.killed
            if self.limits.wall_s and time.monotonic() - self.start > self.limits.wall_s:
                self.killed = f"ran past its time budget of {self.limits.wall_s:g} s"
                return self.killed
        return None

    def report(self, returncode: int | None, expect_started: bool = False,
               cage: Cage | None = None) -> RunReport:
        if self._reader is not None:
            self._reader.join(timeout=2)
        events = [e for e in self.audit if e["kind"] != STARTED]
        started = not expect_started or any(e["kind"] == STARTED for e in self.audit)
        return RunReport(self.name, round(time.monotonic() - self.start, 2), self.peak,
                         self.killed, returncode, events, started,
                         cage.hits() if cage is not None else [],
                         cage.peak_mb() if cage is not None else None)


def new_cage(name: str, limits: Limits) -> Cage | None:
    """The cage for one notebook's run with ``limits``, or None (caps off, or no cgroups here)."""
    if not limits.caps:
        return None
    return Cage.create(name, limits.mem_mb, limits.tasks, limits.cpus)


def start_box(box: Sandbox, command: list[str], writable: dict[str, str],
              readonly: dict[str, str] | None = None, env: dict[str, str] | None = None,
              cwd: str | None = None, cage: Cage | None = None, tmpfs: dict[str, int] | None = None,
              pass_fds: tuple[int, ...] = (), filter_inside: bool = False,
              **popen) -> subprocess.Popen:
    """Start bwrap running ``command`` in ``box``: in ``cage`` from its first instruction, under
    the system-call filter (unless the box's caps are off, or ``filter_inside``: the program
    loads the filter itself for the processes that run student code), in a session of its
    own."""
    fd = (seccomp.filter_fd() if box.limits.caps and seccomp.supported() and not filter_inside
          else None)
    try:
        argv = box.bwrap_argv(writable, readonly, env=env, cwd=cwd, seccomp_fd=fd, tmpfs=tmpfs)
        prefix = cage.argv() if cage is not None else []
        return subprocess.Popen(prefix + argv + command,
                                pass_fds=(*pass_fds, *([fd] if fd is not None else [])),
                                start_new_session=True, **popen)
    finally:
        if fd is not None:
            os.close(fd)


def events_file(box: Sandbox, student: str) -> Path:
    """Where the reports of a student's kernel runs go (one JSON line per kernel start)."""
    if len(student.encode()) > 100:  # a file name has at most 255 bytes: a long id is hashed
        student = f"{student[:40]}-{hashlib.sha256(student.encode()).hexdigest()[:16]}"
    return Path(box.events_dir) / f"kernel-{student}.json"


def protected_inside(box: Sandbox, writable: dict[str, str],
                     readonly: dict[str, str] | None = None) -> list[str]:
    """The paths the audit must report writes to although they lie in the private ``/tmp`` the
    program may write (the read-only snapshot, read-only binds), as seen inside the box. Nothing
    else of the instructor's (course, submissions, repository) is handed to the program: paths
    the box does not show need no report."""
    open_targets = set(writable.values())
    return sorted({m.target for m in box.mounts(writable, readonly)
                   if m.kind in ("--ro-bind", "--tmpfs") and m.target.startswith("/tmp/")
                   and m.target not in open_targets})


def program_pid(bwrap_pid: int) -> int | None:
    """The host PID of the program bwrap runs (bwrap -> the namespace's init -> the program)."""
    for init in children(bwrap_pid):
        for program in children(init):
            return program
    return None


def run_sandboxed(box: Sandbox, command: list[str], name: str, writable: dict[str, str],
                  readonly: dict[str, str] | None = None, cwd: str | None = None,
                  env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = (),
                  stdin=None, stdout=None, stderr=None, poll_s: float = 0.05,
                  forward_sigint: bool = False, expect_started: bool = False,
                  on_start=None, tmpfs: dict[str, int] | None = None,
                  filter_inside: bool = False) -> RunReport:
    """Run ``command`` in ``box``, killing it (and so everything inside) when it exceeds its
    process count or wall time, or when this supervisor gets SIGTERM. ``forward_sigint``: pass
    SIGINT on to the program inside (a kernel's interrupt) instead of stopping it.
    ``expect_started``: the program says "started" on its audit channel (a kernel does); a run
    without it never started (bwrap or the interpreter failed: the grader's failure).
    ``on_start(proc, cage)`` is called with the bwrap process (and its cage) once it runs. ``tmpfs``: folders inside
    made as size-limited tmpfs (path -> MiB). The run has a cage of its own (whole-run caps).

    bwrap runs in a session of its own, so the signals a kernel manager sends to this
    supervisor's process group reach the sandbox only through here."""
    audit_read, audit_write = os.pipe()
    cage = new_cage(name, box.limits)
    env = {**(env or {}), AUDIT_FD_ENV: str(audit_write),
           AUDIT_PROTECTED_ENV: os.pathsep.join(protected_inside(box, writable, readonly))}
    try:
        proc = start_box(box, command, writable, readonly, env=env, cwd=cwd, cage=cage,
                         tmpfs=tmpfs, pass_fds=(*pass_fds, audit_write),
                         filter_inside=filter_inside, stdin=stdin,
                         stdout=stdout, stderr=stderr)
    except BaseException:
        os.close(audit_read)
        if cage is not None:
            cage.close()
        raise
    finally:
        os.close(audit_write)
    watch = Supervision(name, box.limits, audit_read)
    if on_start is not None:
        on_start(proc, cage)

    def stop(signum, frame):  # the kernel manager shutting its kernel down: not a problem
        if signum == signal.SIGINT and forward_sigint:
            program = program_pid(proc.pid)
            if program is not None:
                try:
                    os.kill(program, signal.SIGINT)
                except OSError:
                    pass
            return
        proc.kill()

    in_main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)} if in_main else {}
    try:
        while proc.poll() is None:
            # bwrap -> its namespace's init -> the program: count what the program started.
            if watch.observe(max(0, len(alive_descendants(proc.pid)) - 2)):
                proc.kill()
            time.sleep(poll_s)
        proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if cage is not None:
            cage.kill_all()
    report = watch.report(proc.returncode, expect_started, cage)
    if cage is not None:
        cage.close()
    return report
