"""Warm kernels, seen from outside: the broker serves one shard's kernels from one warm nursery.

The **broker** (:class:`Broker`, a thread of the grading process, outside the sandbox) starts the
nursery (:mod:`course_lib.grading.inside.nursery`) in bubblewrap, with the same policy and limits
as a kernel of its own, and listens on a Unix socket in a folder no sandbox sees. The kernelspec's
launcher (:mod:`.kernelspec`) asks it for a kernel. It serves one kernel at a time: before and
after each, it kills, from outside, every process in the sandbox but the nursery, and empties the
kernels' folder area; the :class:`.Supervision` enforces the process count and the wall-clock
budget, and the per-kernel report is the same as a kernel of its own gets. Each kernel runs in a
PID namespace of its own (see the nursery): it cannot signal the nursery. Where the box allows
no nested namespaces, a kernel that kills or stops the nursery only ends its own sandbox: the
broker starts a fresh one for the next notebook. Where the nursery cannot start, the launcher
falls back to a sandbox per kernel.
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

from course_lib.grading.inside import wire
from course_lib.grading.sandbox import seccomp
from course_lib.grading.inside.hygiene import (alive_descendants, children, copy_plain_files,
                                               empty_folder, kill_until_gone, state)
from course_lib.grading.sandbox.policy import Limits, Sandbox
from course_lib.grading.sandbox.kernelspec import install_kernelspec, kernel_env
from course_lib.grading.sandbox.supervisor import (Supervision, events_file, new_cage,
                                                   program_pid, protected_inside, start_box)

READY_TIMEOUT_S = 300   # the nursery's imports, on a loaded machine
POLL_S = 0.05


class Broker:
    """One warm nursery for one shard's kernels. Use as a context manager around the autograde
    step; ``box.nursery`` is the socket the launchers connect to."""

    def __init__(self, box: Sandbox, modules: list[str], log: Path | None = None) -> None:
        # The launchers' door: in a folder of the grader's that no sandbox sees.
        door = Path(tempfile.mkdtemp(prefix="cl-nursery-")) / "socket"
        self.box, self.modules, self.log = replace(box, nursery=str(door)), list(modules), log
        self.area = Path(tempfile.mkdtemp(prefix="nursery-", dir=box.scratch_root))
        os.chmod(self.area, 0o755)
        # The kernels' folders in the box: a size-limited tmpfs (nothing reaches the disk), beside
        # the area in the masked work folder, as deep as a folder of the area would be.
        self.kernels_dir = f"{self.area}-kernels"
        self.proc = None            # bwrap
        self.nursery_pid = None     # the nursery's PID outside
        self.cage = None            # the nursery's own cage (whole-run caps, sandbox.cgroups)
        self.channel = None
        self.reader = None
        self.failed = None          # why the nursery could not start (launchers fall back)
        self.kernels = 0
        self._listener = None
        self._thread = None
        self._stopping = False
        # Set while no kernel is being served: a kernel's report is written after nbgrader has
        # already seen it end (it kills the launcher), so its reader waits for this (wait_idle).
        self._idle = threading.Event()
        self._idle.set()

    # -------------------------------------------------------------- life cycle
    def __enter__(self) -> "Broker":
        path = self.box.nursery
        Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(4)
        self._thread = threading.Thread(target=self._accept, daemon=True, name="nursery")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopping = True
        try:  # shutdown wakes the thread blocked in accept(); close alone would not
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        self._stop_nursery()
        if self._thread is not None:
            self._thread.join(timeout=10)
        shutil.rmtree(Path(self.box.nursery).parent, ignore_errors=True)
        shutil.rmtree(self.area, ignore_errors=True)

    def _log(self, text: str) -> None:
        if self.log is not None:
            with open(self.log, "a") as f:
                f.write(f"{time.strftime('%H:%M:%S')} {text}\n")

    def _accept(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._idle.clear()
            with conn:
                try:
                    self._serve_launcher(conn)
                except Exception as exc:  # one kernel's trouble never stops the next one
                    import traceback

                    self._log(f"kernel request failed: {exc!r}\n{traceback.format_exc()}")
                    self._stop_nursery()
                finally:
                    self._idle.set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until the kernel being served (if any) is over and its report written."""
        return self._idle.wait(timeout)

    # -------------------------------------------------------------- the nursery's sandbox
    def _start_nursery(self) -> bool:
        ours, theirs = socket.socketpair()
        # The nursery loads the system-call filter into each kernel itself, after giving it
        # namespaces of its own (inside/isolation.py), so bwrap does not load it.
        caps = self.box.limits.caps
        filter_fd = seccomp.filter_fd() if caps and seccomp.supported() else None
        command = [sys.executable, "-m", "course_lib.grading.inside.nursery", "serve",
                   *(["--child-seccomp", str(filter_fd)] if filter_fd is not None else []),
                   str(theirs.fileno()), *self.modules]
        err = open(self.log if self.log is not None else os.devnull, "ab")
        self.cage = new_cage("nursery", self.box.limits)
        try:
            # The area (the notebooks' files, copied in by the broker) is read-only inside; each
            # kernel works in a copy on the box's tmpfs (bounded: it writes nothing to disk).
            self.proc = start_box(
                self.box, command, cwd="/", cage=self.cage,
                pass_fds=(theirs.fileno(), *([filter_fd] if filter_fd is not None else [])),
                writable={self.box.ipc_dir: self.box.ipc_dir},
                readonly={str(self.area): str(self.area)},
                tmpfs={self.kernels_dir: self.box.limits.scratch_mb}, filter_inside=caps,
                stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        finally:
            theirs.close()
            err.close()
            if filter_fd is not None:
                os.close(filter_fd)
        self.channel, self.reader = ours, wire.LineReader(ours)
        try:
            ready = self.reader.read(READY_TIMEOUT_S)
        except TimeoutError:
            ready = None
        if not ready or ready.get("event") != "ready":
            self.failed = "the kernel nursery did not start (see nursery.log)"
            self._log(self.failed)
            self._stop_nursery()
            return False
        self.nursery_pid = program_pid(self.proc.pid)
        return self.nursery_pid is not None

    def _alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _stop_nursery(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # bwrap: its PID namespace, and everything in it, ends
            self.proc.wait()
        if self.channel is not None:
            self.channel.close()
        if self.cage is not None:
            self.cage.close()
        self.proc = self.channel = self.reader = self.nursery_pid = self.cage = None

    def _others(self) -> list[int]:
        """Live processes in the sandbox other than its init and the nursery (the kernel and
        whatever it started)."""
        if not self._alive():
            return []
        keep = {*children(self.proc.pid), self.nursery_pid}  # bwrap's init, the nursery
        return [p for p in alive_descendants(self.proc.pid) if p not in keep]

    def _sweep(self) -> None:
        """Kill, from outside, everything in the sandbox but the nursery."""
        if kill_until_gone(self._others, 100):
            return
        self._log("processes survived the sweep: the nursery is restarted")
        self._stop_nursery()

    def _ready_for_kernel(self) -> str | None:
        """Make sure a clean nursery waits; returns why not, if it cannot."""
        if self.failed or (not self._alive() and not self._start_nursery()):
            return self.failed or "no nursery"
        self._sweep()
        if not self._alive() and not self._start_nursery():
            return self.failed or "no nursery"
        if not empty_folder(self.area):
            self._stop_nursery()
            self.failed = f"could not empty {self.area}"
            return self.failed
        # The kernels' socket folder: writable to them (they make their sockets there), so a
        # kernel may have changed its mode or left files; the next kernel gets it as new.
        try:
            os.chmod(self.box.ipc_dir, 0o700)
        except OSError:
            pass
        if not empty_folder(Path(self.box.ipc_dir)):
            self._stop_nursery()
            self.failed = f"could not empty {self.box.ipc_dir}"
            return self.failed
        return None

    # -------------------------------------------------------------- one kernel
    def _serve_launcher(self, conn: socket.socket) -> None:
        launcher = wire.LineReader(conn)
        request = launcher.read(30)
        if not request:
            return
        why = self._ready_for_kernel()
        if why:
            wire.send(conn, {"event": "unavailable", "why": why})
            return
        self.kernels += 1
        folder = self.area / f"k{self.kernels}"
        folder.mkdir()
        source = Path(request["folder"])
        if source.is_dir():
            copy_plain_files(source, folder)
        box, lim = self.box, self.box.limits
        # The nursery forks the kernel inside the kernel's own cage: everything the kernel starts
        # is capped together from its first instruction (the nursery goes back to its own after).
        cage = new_cage(f"kernel-{source.parent.name}", lim)
        if cage is not None and not cage.add(self.nursery_pid):
            cage.close()
            cage = None
        try:
            self._serve_kernel(conn, launcher, request, folder, source, cage)
        finally:
            if cage is not None:
                if self._alive() and self.cage is not None:
                    self.cage.add(self.nursery_pid)
                cage.close()

    def _serve_kernel(self, conn, launcher, request, folder, source, cage) -> None:
        box, lim = self.box, self.box.limits
        audit_r, audit_w = os.pipe()
        wire.send(self.channel, {"inbox": str(folder), "home": self.kernels_dir,
                                 "connection": request["connection"],
                                 "args": request.get("args", []), "mem_mb": lim.mem_mb,
                                 "file_mb": lim.file_mb,
                                 "protected": protected_inside(box, {str(folder): str(folder)})},
                  [audit_w])
        os.close(audit_w)
        watch = Supervision("/".join(source.parts[-2:]), lim, audit_r)
        try:
            started = self.reader.read(60)
        except TimeoutError:
            started = None
        if cage is not None and self.cage is not None:  # the kernel is forked: it stays caged
            self.cage.add(self.nursery_pid)
        if not started or started.get("event") != "started":
            self._stop_nursery()
            wire.send(conn, {"event": "unavailable", "why": "the nursery did not fork a kernel"})
            return
        wire.send(conn, {"event": "started"})
        self._log(f"kernel {self.kernels} started for {source.parent.name}")
        returncode = self._watch_kernel(conn, launcher, watch, started.get("isolated") is True)
        self._log(f"kernel {self.kernels} ended: {returncode}, {watch.killed}")
        self._sweep()
        if cage is not None:
            cage.kill_all()
        report = watch.report(returncode, expect_started=True, cage=cage)
        if box.events_dir:
            with open(events_file(box, source.parent.name), "a") as f:
                f.write(json.dumps(asdict(report)) + "\n")
        empty_folder(self.area)
        try:
            wire.send(conn, {"event": "exit", "returncode": returncode})
        except OSError:
            pass

    def _kernel_pid(self, levels: int) -> int | None:
        """The kernel's PID outside, ``levels`` below the nursery (see _watch_kernel)."""
        pid = self.nursery_pid
        for _ in range(levels):
            kids = children(pid) if pid is not None else []
            pid = kids[0] if kids else None
        return pid

    def _watch_kernel(self, conn: socket.socket, launcher: wire.LineReader,
                      watch: Supervision, isolated: bool) -> int:
        """Relay the launcher's interrupts and stops until the kernel exits; its return code.
        (A namespace's first process takes no SIGINT from outside: it goes to the kernel.)"""
        kernel_pid = None
        # The nursery's processes down to the kernel: in namespaces of its own, the middle
        # process and the namespace's first process come before it (see the nursery).
        ours = 3 if isolated else 1
        while True:
            if not self._alive():
                return -signal.SIGKILL
            others = self._others()
            if kernel_pid is None:
                kernel_pid = self._kernel_pid(ours)
            if watch.observe(max(0, len(others) - ours)) or watch.killed:  # what it started
                self._sweep()
            for ready in select.select([conn, self.channel], [], [], POLL_S)[0]:
                if ready is conn:
                    try:
                        message = launcher.read(1)
                    except TimeoutError:  # half a message: wait for the rest
                        continue
                    if message is None:  # the launcher is gone (killed): so is its kernel
                        self._sweep()
                    elif message.get("event") == "interrupt" and kernel_pid is not None:
                        try:
                            os.kill(kernel_pid, signal.SIGINT)
                        except OSError:
                            pass
                    elif message.get("event") == "kill":
                        self._sweep()
                else:
                    event = self.reader.read(5)
                    if event is None:
                        self._stop_nursery()
                        return -signal.SIGKILL
                    if event.get("event") == "exit":
                        return event["returncode"]
            if self.reader is None:  # stopped above
                return -signal.SIGKILL
            if kernel_pid is not None and state(kernel_pid) in (None, "Z"):
                # The kernel ended; a nursery that does not say so in time has been tampered with.
                try:
                    event = self.reader.read(5)
                    return event["returncode"] if event else -signal.SIGKILL
                except (TimeoutError, KeyError, TypeError):
                    self._stop_nursery()
                    return -signal.SIGKILL


@contextlib.contextmanager
def warm_kernels(work: Path, hide: list[Path], modules: list[str], mem_mb: int = 4096):
    """Sandboxed warm kernels for plain ``nbgrader`` commands run meanwhile: yields
    ``(env, args)`` to run them with (``env`` for the subprocess, ``args`` added to nbgrader's
    command line). ``hide``: folders the kernels must not see (the course, its sources)."""
    box = Sandbox.for_batch(Path(work), hide=list(hide), limits=Limits(mem_mb=mem_mb)).for_shard()
    with Broker(box, modules, log=Path(work) / "nursery.log") as broker:
        env = kernel_env(install_kernelspec(Path(work) / "jupyter", broker.box, mem_mb))
        try:
            yield env, broker.box.kernel_manager_args("kernel")
        finally:
            shutil.rmtree(box.ipc_dir, ignore_errors=True)
