"""A pristine process that forks the re-check's children (issue 21: clean processes).

Why: a child forked by the re-check's server carries the server's whole heap, and the server has
read every earlier student's job (their code, the hidden tests) from its input: freed objects and
buffers stay in memory, and a student's code that reads ``/proc/self/mem`` finds them. The zygote
is forked from the server after the imports and before the first job, and never reads anything but
a request to fork: every child starts from a copy of that pristine state.

How: the server sends the two pipe ends the child keeps (``SCM_RIGHTS``); the zygote forks an
intermediate process, which forks the child and exits. The server has made itself a child
subreaper, so the orphaned child becomes the *server's* child: the server waits for it and kills
its process group as before. The zygote answers with the child's PID only after the intermediate
has exited (the child is the server's by then). Standard library only.
"""
from __future__ import annotations

import ctypes
import os
import select
import signal
import socket
import struct
from typing import Callable

from course_lib.grading.inside import isolation

PR_SET_CHILD_SUBREAPER = 36
SPAWN_TIMEOUT_S = 10.0  # a zygote that does not answer in this time was stopped or killed


class ZygoteGone(RuntimeError):
    """The zygote did not answer (a student process stopped or killed it): the server cannot fork
    a clean child any more and must be replaced."""


def become_subreaper() -> bool:
    """Orphans of this process's descendants become its children (PR_SET_CHILD_SUBREAPER)."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class Zygote:
    """Fork the zygote now (call this before reading any job); :meth:`spawn` then forks a child
    that runs ``child(*fds)`` with only ``fds`` and 0-2 open."""

    def __init__(self, child: Callable[..., None], fork_child, isolate: bool = False,
                 program: bytes | None = None) -> None:
        """``isolate``: give each child a PID namespace of its own (isolation.py);
        ``program``: the system-call filter each child loads before running ``child``."""
        if not become_subreaper():
            raise OSError("PR_SET_CHILD_SUBREAPER is not allowed here")
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

        def zygote() -> None:  # only its socket: not the server's job input or event pipe
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            _serve(theirs, child, fork_child, isolate, program)

        self.pid = fork_child([theirs.fileno()], zygote)
        theirs.close()
        self._sock = mine

    def spawn(self, fds: list[int]) -> tuple[int, bool]:
        """A new child holding ``fds`` (the server keeps its own copies); returns its PID (the
        first process of its PID namespace, when it has one) and whether it has one."""
        try:
            socket.send_fds(self._sock, [b"f"], fds)
            ready, _, _ = select.select([self._sock], [], [], SPAWN_TIMEOUT_S)
            reply = self._sock.recv(8) if ready else b""
        except OSError:
            reply = b""
        pid, isolated = struct.unpack("ii", reply) if len(reply) == 8 else (-1, 0)
        if pid <= 0:
            raise ZygoteGone("the re-check's zygote did not answer (stopped or killed)")
        return pid, bool(isolated)

    def healthy(self) -> bool:
        """Alive and running (after a job: its processes may have stopped or killed it)."""
        try:
            os.kill(self.pid, signal.SIGCONT)
            done, _ = os.waitpid(self.pid, os.WNOHANG)
        except OSError:
            return False
        return done == 0

    def close(self) -> None:
        self._sock.close()
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except OSError:
            pass


def _serve(sock: socket.socket, child: Callable[..., None], fork_child, isolate: bool,
           program: bytes | None) -> None:
    """The zygote's loop: one child per request, until the server closes the socket."""
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(sock, 1, 4)
        except OSError:
            return
        if not message:
            return
        found_r, found_w = os.pipe()
        middle = os.fork()
        if middle == 0:
            os.close(found_r)
            keep = list(fds)
            isolated = isolate and isolation.enter_namespaces()
            if isolated:  # the namespace's first process starts the child and reaps
                pid = fork_child(keep, lambda: isolation.run_as_init(
                    lambda: fork_child(keep, lambda: child(*fds)), keep, program))
            else:
                pid = fork_child(keep, lambda: _filtered(program, child, fds))
            os.write(found_w, struct.pack("ii", pid, int(isolated)))
            os._exit(0)
        os.close(found_w)
        for fd in fds:
            os.close(fd)
        found = os.read(found_r, 8)
        os.close(found_r)
        os.waitpid(middle, 0)  # the child is the server's now (see the module's docstring)
        try:
            sock.sendall(found if len(found) == 8 else struct.pack("ii", -1, 0))
        except OSError:
            return


def _filtered(program: bytes | None, child: Callable[..., None], fds) -> None:
    """Run ``child`` under the filter (no namespace of its own: it could not be made here)."""
    isolation.filter_or_exit(program)
    child(*fds)
