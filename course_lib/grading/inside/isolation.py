"""A PID namespace of its own for each student's re-check child (issue 21, clean processes).

Why: the re-check's children are forked in the same box as the server that judges them. In one
PID namespace a child can name the server and the zygote, signal them (SIGSTOP the server: the
grader then waits on a silent server) and leave processes that keep changing PID for a sweep of
``/proc`` to miss. Here each child gets a user, PID, mount and IPC namespace nested in the box's:

* it cannot name a process outside it, so it cannot signal the server, the zygote or a
  classmate's child (a PID it reads from the box's ``/proc`` means another process, or none, in
  its own namespace; and it gets a ``/proc`` of its own where the kernel allows the mount);
* the namespace's first process (:func:`run_as_init`, PID 1 inside) only reaps and reports: when
  it ends, the kernel kills every process in the namespace at once, so the server kills a
  student's whole tree with one SIGKILL, whatever the tree does to change its PIDs;
* the system-call filter (:mod:`course_lib.grading.sandbox.seccomp`'s program, passed down by
  the grader) is loaded by that first process, after the namespaces exist and before any student
  code: the server and the zygote, which never run student code, stay free to make namespaces.

Linux only; standard library only (ctypes). Where the box does not allow nested namespaces (an
older kernel, user namespaces off), :func:`enter_namespaces` says so and the child runs in the
box's namespace as before (the server reports which).
"""
from __future__ import annotations

import ctypes
import os
import signal
import struct
from typing import Callable, NoReturn

CLONE_NEWNS, CLONE_NEWIPC = 0x00020000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID = 0x10000000, 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
SIGNALLED = 128  # the first process exits with 128 + N when the student's process died of N

_libc = ctypes.CDLL(None, use_errno=True)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def enter_namespaces() -> bool:
    """Make this (single-threaded) process's next children start a PID namespace, in a user,
    mount and IPC namespace of their own (System V and POSIX message-queue objects die with it;
    the filter refuses those calls anyway), keeping this process's uid and gid. False where not
    allowed."""
    uid, gid = os.getuid(), os.getgid()
    if _libc.unshare(CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC) != 0:
        return False
    try:  # the same ids inside: files the child writes stay its own
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"{gid} {gid} 1")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"{uid} {uid} 1")
    except OSError:
        return False
    return True


def mount_own_proc() -> bool:
    """A /proc that shows only this PID namespace (the kernel refuses where the box's /proc has
    parts hidden by other mounts; then the box's stays, and its PIDs name nothing here)."""
    return _libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) == 0


def load_filter(program: bytes) -> bool:
    """Load a classic BPF seccomp ``program`` (an array of ``struct sock_filter``) for this
    process and all it starts; it cannot be removed."""
    if not program or len(program) % 8:
        return False
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    return (_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            and _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) == 0)


def filter_or_exit(program: bytes | None) -> None:
    """Load ``program`` (when there is one) for this process and all it starts, or exit at once
    with ``SIGNALLED + SIGSYS``: student code never runs without its filter."""
    if program is not None and not load_filter(program):
        os._exit(SIGNALLED + signal.SIGSYS)


def run_as_init(start: Callable[[], int], close: list[int], program: bytes | None) -> NoReturn:
    """Be the namespace's PID 1: load the filter, start the student's process (``start()``
    forks it and returns its PID), close ``close`` (the child's pipe ends: the server must see
    them close when the child ends), then reap everything until the student's process ends and
    exit with its status (``SIGNALLED + N`` for a signal N). Exiting kills the namespace."""
    mount_own_proc()
    filter_or_exit(program)
    student = start()
    # Python's SIGINT handler would let the student's process end this one (and so its own
    # namespace) with a KeyboardInterrupt: signals from inside reach PID 1 only where it has one.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for fd in close:
        try:
            os.close(fd)
        except OSError:
            pass
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(1)
        except InterruptedError:
            continue
        if pid == student:
            os._exit(SIGNALLED + os.WTERMSIG(status) if os.WIFSIGNALED(status)
                     else os.WEXITSTATUS(status))


def read_program(fd: int | None) -> bytes | None:
    """The filter the grader passed on ``fd`` (a memfd it wrote), read once, or None."""
    if fd is None:
        return None
    chunks = []
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    program = b"".join(chunks)
    struct.unpack(f"<{len(program) // 8}Q", program)  # whole instructions, or this raises
    return program
