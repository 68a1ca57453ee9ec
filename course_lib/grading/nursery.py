"""Warm sandboxed kernels: one sandbox per shard imports PyTorch once and forks every kernel.

Why: starting a kernel from nothing costs more than running an ex01 submission. Measured per
notebook on 2 cores: Python and ipykernel ~1.5 s, ``import torch`` ~2.7 s, the first use of
PyTorch's ``FlopCounterMode`` (a check) ~1.3 s, against ~2 s for the student's cells and the
checks themselves. A shard grades its notebooks one after the other, so one sandbox per shard
can pay those once and ``fork`` a fresh kernel per notebook (the re-check's server does the same).

Three processes, of three kinds of trust:

1. The **broker** (:class:`Broker`, a thread of the grading process, outside the sandbox) starts
   the nursery in bubblewrap (:mod:`course_lib.grading.sandbox`, the same recipe and limits as a
   kernel of its own) and listens on a Unix socket in a folder no sandbox sees. It serves one
   kernel at a time: before and after each, it kills, from outside, every process in the sandbox
   but the nursery (the same PID namespace holds nothing else), and it empties the kernels' folder
   area; it enforces the process count and the wall-clock budget as the plain launcher does, and
   writes the same per-kernel report.
2. The **nursery** (``python -m course_lib.grading.nursery serve``, inside the sandbox) imports
   PyTorch, ipykernel and the assignment's checks before any student code, then forks one child
   per request and reports its exit. Its only channel is a socket pair that every child closes;
   it is undumpable, so no child can read or write its memory. A child that kills or stops it only
   ends its own sandbox: the broker starts a fresh one for the next notebook.
3. The **kernel** (the forked child) empties nothing and trusts nothing: it starts a session of
   its own, keeps only its audit pipe, moves to its fresh folder (a copy of the notebook's folder),
   applies the memory and file limits, installs the audit hook and runs ipykernel, exactly as
   :mod:`course_lib.grading.kernel` does in a sandbox of its own.

The launcher (:func:`course_lib.grading.sandbox.launch_kernel`, the kernelspec's command) asks the
broker for a kernel and relays interrupts and shutdowns; where there is no broker, or the broker
cannot start its nursery, it starts the kernel in a sandbox of its own as before.

What a student sees differs from a sandbox of its own in one way: the other kernels of the shard
ran earlier in the same namespaces. Nothing of them is left when the next one starts: their
processes are killed, their folders, ``/tmp`` (the kernels' HOME: IPython's startup files live
there) and ``/dev/shm`` emptied; where something cannot be removed, the nursery stops and the
next kernel gets a fresh sandbox. No two kernels run at the same time.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
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
from dataclasses import asdict
from pathlib import Path

from course_lib.grading import sandbox

MAX_MESSAGE = 1 << 20   # a request (it holds a connection file) or an event
READY_TIMEOUT_S = 300   # the nursery's imports, on a loaded machine
POLL_S = 0.05


# ---------------------------------------------------------------------------- messages
def _send(sock: socket.socket, message: dict, fds: list[int] = ()) -> None:
    data = (json.dumps(message) + "\n").encode()
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.sendall(data)


class _Reader:
    """JSON lines from a socket, with a deadline (the other end may hang or die)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffer, self.fds = sock, b"", []

    def read(self, timeout: float | None) -> dict | None:
        """The next message; None at end of stream; TimeoutError past ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                raise TimeoutError
            data, fds, _, _ = socket.recv_fds(self.sock, 65536, 4)
            self.fds += fds
            if not data:
                return None
            self.buffer += data
            if len(self.buffer) > MAX_MESSAGE:
                return None
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            return None


# ---------------------------------------------------------------------------- the nursery
def _preload(modules: list[str]) -> None:
    """Everything the kernels share, imported before any student code (no threads started:
    they would not survive ``fork``)."""
    import torch

    torch.set_num_threads(1)
    import ipykernel.kernelapp  # noqa: F401
    import numpy  # noqa: F401
    for name in modules:
        importlib.import_module(name)
    from course_lib.grading.recheck import warm_up_flop_counter

    warm_up_flop_counter()


# Writable places a kernel shares with the next one: its /tmp (HOME: IPython's startup files,
# matplotlib's configuration) and shared memory.
SHARED_SCRATCH = ("/tmp", "/dev/shm")


def _remove_sysv_ipc() -> bool:
    """Remove the System V shared memory segments, semaphore sets and message queues kernels
    left in this IPC namespace (the sandbox's own); False if any stays."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    ipc_rmid = 0
    removers = {"shm": lambda i: libc.shmctl(i, ipc_rmid, None),
                "sem": lambda i: libc.semctl(i, 0, ipc_rmid),
                "msg": lambda i: libc.msgctl(i, ipc_rmid, None)}
    clean = True
    for kind, remove in removers.items():
        try:
            lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            if remove(int(line.split()[1])) != 0:  # the second column is the id
                clean = False
    return clean


def _fresh() -> bool:
    """Empty the places kernels share (see SHARED_SCRATCH) and their System V IPC objects; False
    if anything stays."""
    return all([sandbox.empty_folder(Path(p)) for p in SHARED_SCRATCH] + [_remove_sysv_ipc()])


def _kernel_child(request: dict, audit_fd: int) -> None:
    """In the forked child: become the student's kernel (never returns)."""
    from course_lib.grading import kernel

    try:
        os.setsid()
        os.closerange(3, audit_fd)  # the nursery's channel above all
        os.closerange(audit_fd + 1, 4096)
        os.chdir(request["folder"])
        sys.path[0] = request["folder"]  # as ``python -m`` started in the notebook's folder
        connection = "/tmp/connection.json"
        Path(connection).write_text(request["connection"])
        kernel.apply_limits(request["mem_mb"], request["file_mb"])
        start_audit = kernel.audit_channel(audit_fd, tuple(request["protected"]))
        # Until here a failure is the nursery's (its log); from here output is the student's.
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        kernel.serve(["-f", connection, *request["args"]], start_audit)
    except BaseException:
        import traceback

        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def serve(fd: int, modules: list[str]) -> None:
    """The nursery's loop: a request in, a forked kernel, its exit status out."""
    from course_lib.grading.recheck import _no_ptrace

    _no_ptrace()
    os.environ["NBGRADER_EXECUTION"] = "autograde"  # as in nbgrader's own kernels
    _preload(modules)
    channel = socket.socket(fileno=fd)
    os.set_inheritable(fd, False)
    _send(channel, {"event": "ready"})
    reader = _Reader(channel)
    while True:
        request = reader.read(None)
        if request is None:
            return
        fds, reader.fds = reader.fds, []
        if len(fds) != 1:
            for f in fds:
                os.close(f)
            _send(channel, {"event": "refused", "why": "one audit pipe per kernel"})
            continue
        if not _fresh():  # something a kernel left cannot be removed: no kernel from here
            _send(channel, {"event": "unclean"})
            return
        pid = os.fork()
        if pid == 0:
            channel.close()
            _kernel_child(request, fds[0])
        os.close(fds[0])
        _send(channel, {"event": "started", "pid": pid})
        _, status = os.waitpid(pid, 0)
        _send(channel, {"event": "exit", "returncode": os.waitstatus_to_exitcode(status)})


# ---------------------------------------------------------------------------- the broker
def _state(pid: int) -> str | None:
    """A process's state letter (``Z``: a zombie), None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


class Broker:
    """One warm nursery for one shard's kernels (see the module docstring). Use as a context
    manager around the autograde step; ``box.nursery`` is the socket the launchers connect to."""

    def __init__(self, box, modules: list[str], log: Path | None = None) -> None:
        from dataclasses import replace

        # The launchers' door: in a folder of the grader's that no sandbox sees.
        door = Path(tempfile.mkdtemp(prefix="cl-nursery-")) / "socket"
        self.box, self.modules, self.log = replace(box, nursery=str(door)), list(modules), log
        self.area = Path(tempfile.mkdtemp(prefix="nursery-", dir=box.scratch_root))
        os.chmod(self.area, 0o755)
        self.proc = None            # bwrap
        self.nursery_pid = None     # the nursery's PID outside
        self.channel = None
        self.reader = None
        self.failed = None          # why the nursery could not start (launchers fall back)
        self.kernels = 0
        self._listener = None
        self._thread = None
        self._stopping = False

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
            with conn:
                try:
                    self._serve_launcher(conn)
                except Exception as exc:  # one kernel's trouble never stops the next one
                    import traceback

                    self._log(f"kernel request failed: {exc!r}\n{traceback.format_exc()}")
                    self._stop_nursery()

    # -------------------------------------------------------------- the nursery's sandbox
    def _start_nursery(self) -> bool:
        ours, theirs = socket.socketpair()
        argv = self.box.bwrap_argv(
            writable={str(self.area): str(self.area), self.box.ipc_dir: self.box.ipc_dir},
            cwd="/")
        command = [sys.executable, "-m", "course_lib.grading.nursery", "serve",
                   str(theirs.fileno()), *self.modules]
        err = open(self.log if self.log is not None else os.devnull, "ab")
        try:
            self.proc = subprocess.Popen(argv + command, pass_fds=(theirs.fileno(),),
                                         stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                         start_new_session=True)
        finally:
            theirs.close()
            err.close()
        self.channel, self.reader = ours, _Reader(ours)
        try:
            ready = self.reader.read(READY_TIMEOUT_S)
        except TimeoutError:
            ready = None
        if not ready or ready.get("event") != "ready":
            self.failed = "the kernel nursery did not start (see nursery.log)"
            self._log(self.failed)
            self._stop_nursery()
            return False
        self.nursery_pid = sandbox._program_pid(self.proc.pid)
        return self.nursery_pid is not None

    def _alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _stop_nursery(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # bwrap: its PID namespace, and everything in it, ends
            self.proc.wait()
        if self.channel is not None:
            self.channel.close()
        self.proc = self.channel = self.reader = self.nursery_pid = None

    def _others(self) -> list[int]:
        """Live processes in the sandbox other than its init and the nursery (the kernel and
        whatever it started)."""
        if not self._alive():
            return []
        keep = {*sandbox._children(self.proc.pid), self.nursery_pid}  # bwrap's init, the nursery
        return [p for p in sandbox._descendants(self.proc.pid)
                if p not in keep and _state(p) not in (None, "Z")]

    def _sweep(self) -> None:
        """Kill, from outside, everything in the sandbox but the nursery."""
        for _ in range(100):
            others = self._others()
            if not others:
                return
            for pid in others:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.01)
        self._log("processes survived the sweep: the nursery is restarted")
        self._stop_nursery()

    # -------------------------------------------------------------- one kernel
    def _serve_launcher(self, conn: socket.socket) -> None:
        launcher = _Reader(conn)
        request = launcher.read(30)
        if not request:
            return
        if self.failed or (not self._alive() and not self._start_nursery()):
            _send(conn, {"event": "unavailable", "why": self.failed or "no nursery"})
            return
        self._sweep()
        if not self._alive() and not self._start_nursery():
            _send(conn, {"event": "unavailable", "why": self.failed or "no nursery"})
            return
        if not sandbox.empty_folder(self.area):
            self._stop_nursery()
            self.failed = f"could not empty {self.area}"
            _send(conn, {"event": "unavailable", "why": self.failed})
            return
        self.kernels += 1
        folder = self.area / f"k{self.kernels}"
        folder.mkdir()
        source = Path(request["folder"])
        for item in source.iterdir() if source.is_dir() else []:
            if item.is_file() and not item.is_symlink():
                shutil.copy(item, folder / item.name)
        os.chmod(folder, 0o777)
        box, lim = self.box, self.box.limits
        audit_r, audit_w = os.pipe()
        protected = [box.site, *box.masked]
        _send(self.channel, {"folder": str(folder), "connection": request["connection"],
                             "args": request.get("args", []), "mem_mb": lim.mem_mb,
                             "file_mb": lim.file_mb, "protected": protected}, [audit_w])
        os.close(audit_w)
        audit: list[dict] = []
        collector = threading.Thread(target=sandbox._collect, args=(audit_r, audit), daemon=True)
        collector.start()
        start = time.monotonic()
        try:
            started = self.reader.read(60)
        except TimeoutError:
            started = None
        if not started or started.get("event") != "started":
            self._stop_nursery()
            _send(conn, {"event": "unavailable", "why": "the nursery did not fork a kernel"})
            return
        _send(conn, {"event": "started"})
        self._log(f"kernel {self.kernels} started for {source.parent.name}")
        killed, peak, returncode = None, 0, None
        kernel_pid = None
        while returncode is None:
            if not self._alive():
                returncode = -signal.SIGKILL
                break
            others = self._others()
            if kernel_pid is None:
                kids = sandbox._children(self.nursery_pid)
                kernel_pid = kids[0] if kids else None
            n = max(0, len(others) - 1)  # what the kernel started
            peak = max(peak, n)
            if killed is None and n > lim.processes:
                killed = f"started more than {lim.processes} processes"
            elif killed is None and lim.wall_s and time.monotonic() - start > lim.wall_s:
                killed = f"ran past its time budget of {lim.wall_s:g} s"
            if killed:
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
                        returncode = -signal.SIGKILL
                    elif event.get("event") == "exit":
                        returncode = event["returncode"]
            if returncode is None and self.reader is None:  # stopped above
                returncode = -signal.SIGKILL
            elif returncode is None and kernel_pid is not None and \
                    _state(kernel_pid) in (None, "Z"):
                # The kernel ended; a nursery that does not say so in time has been tampered with.
                try:
                    event = self.reader.read(5)
                    returncode = event["returncode"] if event else -signal.SIGKILL
                except (TimeoutError, KeyError, TypeError):
                    returncode = -signal.SIGKILL
                    self._stop_nursery()
        self._log(f"kernel {self.kernels} ended: {returncode}, {killed}")
        self._sweep()
        collector.join(timeout=2)
        report = sandbox.RunReport("/".join(source.parts[-2:]), round(time.monotonic() - start, 2),
                                   peak, killed, returncode, audit)
        if box.events_dir:
            with open(Path(box.events_dir) / f"kernel-{source.parent.name}.json", "a") as f:
                f.write(json.dumps(asdict(report)) + "\n")
        sandbox.empty_folder(self.area)
        try:
            _send(conn, {"event": "exit", "returncode": returncode})
        except OSError:
            pass


# ---------------------------------------------------------------------------- for nbgrader
@contextlib.contextmanager
def warm_kernels(work: Path, hide: list[Path], modules: list[str], mem_mb: int = 4096):
    """Sandboxed warm kernels for plain ``nbgrader`` commands run meanwhile: yields
    ``(env, args)`` to run them with (``env`` for the subprocess, ``args`` added to nbgrader's
    command line). ``hide``: folders the kernels must not see (the course, its sources)."""
    from course_lib.grading.kernel import kernel_env

    limits = sandbox.Limits(mem_mb=mem_mb)
    box = sandbox.Sandbox.for_batch(Path(work), hide=list(hide), limits=limits).for_shard()
    with Broker(box, modules, log=Path(work) / "nursery.log") as broker:
        env = kernel_env(sandbox.install_kernelspec(Path(work) / "jupyter", broker.box, mem_mb))
        try:
            yield env, broker.box.kernel_manager_args("kernel")
        finally:
            shutil.rmtree(box.ipc_dir, ignore_errors=True)


# ---------------------------------------------------------------------------- the launcher
def launch(path: str, connection_file: str, folder: str, kernel_args: list[str]) -> int | None:
    """The launcher's side: a kernel from the broker at ``path``; its exit status, or None
    where there is no nursery to give one (start a sandbox of its own instead)."""
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(path)
        _send(conn, {"connection": Path(connection_file).read_text(), "folder": folder,
                     "args": list(kernel_args)})
        reader = _Reader(conn)
        reply = reader.read(READY_TIMEOUT_S + 90)
    except (OSError, TimeoutError):
        return None
    if not reply or reply.get("event") != "started":
        conn.close()
        return None

    def relay(signum, frame):  # jupyter_client interrupts by SIGINT, stops by SIGTERM
        try:
            _send(conn, {"event": "interrupt" if signum == signal.SIGINT else "kill"})
        except OSError:
            pass

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, relay)
    while True:
        try:
            event = reader.read(None)
        except InterruptedError:
            continue
        if event is None:
            return 1
        if event.get("event") == "exit":
            return event.get("returncode") or 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The kernel nursery (runs inside the sandbox).")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("fd", type=int)
    s.add_argument("modules", nargs="*")
    args = parser.parse_args(argv)
    serve(args.fd, args.modules)


if __name__ == "__main__":
    main()
