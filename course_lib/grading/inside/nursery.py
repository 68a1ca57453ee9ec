"""The kernel nursery, inside the box: imports PyTorch once and forks every kernel of a shard.

Why: starting a kernel from nothing costs more than running an ex01 submission (Python and
ipykernel ~1.5 s, ``import torch`` ~2.7 s, the first ``FlopCounterMode`` ~1.3 s on 2 cores). The
nursery (``python -m course_lib.grading.inside.nursery serve FD MODULES...``) pays them once, then
forks one kernel per request on its channel (a socket pair with the broker outside, which every
child closes) and reports the kernel's exit. It is undumpable, so no kernel can read or write its
memory. Before each fork it empties what a kernel could leave for the next (``/tmp``, the
kernels' HOME, ``/dev/shm``, files added to ``/dev``, System V IPC, the kernels' tmpfs) and
refuses to fork when anything stays: the broker then starts a fresh sandbox.

Each kernel runs in a PID, user, mount and IPC namespace of its own (:mod:`.isolation`, as the
re-check's children): it cannot name, and so cannot signal or stop, the nursery; one SIGKILL of
its namespace's first process ends all it started. The nursery forks a middle process that makes
the namespaces and waits; the namespace's first process loads the system-call filter (passed by
the broker on a memfd: bwrap does not load it, so the nursery may make namespaces) and starts the
kernel. Where the box allows no nested namespaces, the kernel loads the filter itself and runs in
the box's namespace, as before.

The outside half (starting the sandbox, one kernel at a time, sweeping leftover processes,
process count and wall clock) is :mod:`course_lib.grading.sandbox.broker`.
"""
from __future__ import annotations

import argparse
import importlib
import os
import socket
import sys
from pathlib import Path

from course_lib.grading.inside import isolation, kernel, wire
from course_lib.grading.inside.hygiene import (apply_limits, copy_plain_files, dev_entries,
                                               empty_folder, fresh_sandbox, no_ptrace)
from course_lib.grading.inside.warm import fork_child, preload


def _become_kernel(request: dict, audit_fd: int) -> None:
    """In the forked child: become the student's kernel (never returns)."""
    os.setsid()
    # Its folder: a copy of the notebook's files (read-only inbox) on the box's tmpfs.
    folder = Path(request["home"]) / Path(request["inbox"]).name
    folder.mkdir()
    copy_plain_files(Path(request["inbox"]), folder)
    os.chdir(folder)
    sys.path[0] = str(folder)  # as ``python -m`` started in the notebook's folder
    connection = "/tmp/connection.json"
    Path(connection).write_text(request["connection"])
    apply_limits(request["mem_mb"], request["file_mb"])
    start_audit = kernel.audit_channel(audit_fd, tuple(request["protected"]))
    # Until here a failure is the nursery's (its log); from here output is the student's.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    kernel.serve(["-f", connection, *request["args"]], start_audit)


# What ipykernel's IPKernelApp.initialize() imports on its own (its kernel, shell and debugger
# classes are named by strings, imported at start): 0.37 s of CPU in each forked kernel
# (profiled), once here. None of them starts a thread at import.
# (IPython 9 adds its debugger, oinspect and storemagic; a name a version lacks is skipped.)
KERNEL_MODULES = ("ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell",
                  "ipykernel.debugger", "IPython.core.completerlib", "IPython.core.debugger",
                  "IPython.core.debugger_backport", "IPython.core.oinspect",
                  "IPython.extensions.storemagic", "IPython.utils.wildcard",
                  "tornado.platform.asyncio", "faulthandler")


def preload_kernel() -> None:
    for name in KERNEL_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def _fork_kernel(request: dict, audit_fd: int, program: bytes | None) -> tuple[int, bool]:
    """Fork the kernel (in namespaces of its own where the box allows them, see the module's
    docstring); returns the PID to wait for and whether the kernel has its own namespaces."""
    if program is None:  # the filter is bwrap's (or the caps are off): no namespaces
        return fork_child([audit_fd], lambda: _become_kernel(request, audit_fd)), False
    said_r, said_w = os.pipe()

    def middle() -> None:
        isolated = isolation.enter_namespaces()
        os.write(said_w, b"1" if isolated else b"0")
        os.close(said_w)
        if not isolated:  # the kernel in the box's namespace, under its filter
            isolation.filter_or_exit(program)
            _become_kernel(request, audit_fd)
        first = fork_child([audit_fd], lambda: isolation.run_as_init(
            lambda: fork_child([audit_fd], lambda: _become_kernel(request, audit_fd)),
            [audit_fd], program))
        os.close(audit_fd)
        _, status = os.waitpid(first, 0)
        os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status)
                 else isolation.SIGNALLED + os.WTERMSIG(status))

    pid = fork_child([audit_fd, said_w], middle)
    os.close(said_w)
    said = os.read(said_r, 1)
    os.close(said_r)
    return pid, said == b"1"


def _returncode(status: int, isolated: bool) -> int:
    """The kernel's return code as its launcher reports one (-N: killed by signal N)."""
    code = os.waitstatus_to_exitcode(status)
    if isolated and code > isolation.SIGNALLED:  # the namespace's first process said 128 + N
        return isolation.SIGNALLED - code
    return code


def serve(fd: int, modules: list[str], program: bytes | None = None) -> None:
    """The nursery's loop: a request in, a forked kernel, its exit status out. ``program``: the
    system-call filter each kernel loads (then each kernel gets namespaces of its own)."""
    no_ptrace()
    dev = dev_entries()  # bwrap's /dev, before any kernel could add to it
    os.environ["NBGRADER_EXECUTION"] = "autograde"  # as in nbgrader's own kernels
    preload_kernel()
    preload(modules)
    channel = socket.socket(fileno=fd)
    os.set_inheritable(fd, False)
    wire.send(channel, {"event": "ready"})
    reader = wire.LineReader(channel)
    while True:
        request = reader.read(None)
        if request is None:
            return
        fds, reader.fds = reader.fds, []
        if len(fds) != 1:
            for f in fds:
                os.close(f)
            wire.send(channel, {"event": "refused", "why": "one audit pipe per kernel"})
            continue
        clean = empty_folder(Path(request["home"]))  # the previous kernel's folder
        if not (fresh_sandbox(dev) and clean):  # something a kernel left stays: no kernel from here
            wire.send(channel, {"event": "unclean"})
            return
        audit_fd = fds[0]
        pid, isolated = _fork_kernel(request, audit_fd, program)
        os.close(audit_fd)
        wire.send(channel, {"event": "started", "pid": pid, "isolated": isolated})
        _, status = os.waitpid(pid, 0)
        wire.send(channel, {"event": "exit", "returncode": _returncode(status, isolated)})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The kernel nursery (runs inside the sandbox).")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("fd", type=int)
    s.add_argument("modules", nargs="*")
    s.add_argument("--child-seccomp", type=int, default=None,
                   help="a file descriptor holding the filter each kernel loads")
    args = parser.parse_args(argv)
    serve(args.fd, args.modules, isolation.read_program(args.child_seccomp))


if __name__ == "__main__":
    main()
