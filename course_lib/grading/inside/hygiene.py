"""Process hygiene, on both sides of the sandbox's wall: limits, the process tree, leftovers.

Inside, a process that will run student code caps itself (:func:`apply_limits`), a server makes
itself undumpable (:func:`no_ptrace`), and what one student left is removed before the next one
starts (:func:`empty_folder`, :func:`remove_sysv_ipc`, :func:`kill_namespace_leftovers`).
Outside, the supervisor walks the sandbox's process tree (:func:`descendants`, :func:`children`,
:func:`state`). Standard library only.
"""
from __future__ import annotations

import ctypes
import os
import resource
import shutil
import signal
import time
from pathlib import Path

PR_SET_DUMPABLE = 4
PR_SET_PDEATHSIG = 1


# ----------------------------------------------------------------------------- limits
def apply_limits(mem_mb: int | None, file_mb: int | None = None) -> None:
    """Cap this process's address space at ``mem_mb`` MiB and written files at ``file_mb`` MiB
    (inherited by its children); no core dumps; first in line for the OOM killer.

    The limit is on virtual memory: PyTorch and the interpreter reserve ~1.5 GiB of address space
    at import, so values below ~2048 make ``import torch`` itself fail."""
    try:  # the kernel's OOM killer (a whole-notebook cap) takes student processes first
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass
    if mem_mb:
        if mem_mb < 1024:
            raise ValueError(f"mem_mb={mem_mb} is too small for a Python + PyTorch kernel "
                             "(>= 1024)")
        _lower(resource.RLIMIT_AS, int(mem_mb) * 2**20)
    if file_mb:
        _lower(resource.RLIMIT_FSIZE, int(file_mb) * 2**20)
    _lower(resource.RLIMIT_CORE, 0)


def _lower(which: int, limit: int) -> None:
    soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(which, (limit, hard))


def _prctl(option: int, value: int) -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def no_ptrace() -> None:
    """Make this process undumpable: its children (student code) cannot ptrace it or read its
    memory through /proc."""
    _prctl(PR_SET_DUMPABLE, 0)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Get ``sig`` when the process that started this one dies (PR_SET_PDEATHSIG)."""
    parent = os.getppid()
    if _prctl(PR_SET_PDEATHSIG, sig) and os.getppid() != parent:
        os.kill(os.getpid(), sig)  # it died before the request took effect


# ----------------------------------------------------------------------------- the process tree
def children(pid: int) -> list[int]:
    kids = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            kids += [int(k) for k in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
    except OSError:
        pass
    return kids


def descendants(pid: int) -> list[int]:
    """PIDs below ``pid`` (via /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        for kid in children(todo.pop()):
            found.append(kid)
            todo.append(kid)
    return found


def alive_descendants(pid: int) -> list[int]:
    """The descendants of ``pid`` still running when the walk ends. A walk of /proc can chase a
    chain that forks and exits faster than it reads, and list each link once; a link that has
    exited since (gone, or a zombie its reaper has not collected yet) is not a process at once."""
    return [p for p in descendants(pid) if state(p) not in (None, "Z")]


def state(pid: int) -> str | None:
    """A process's state letter (``Z``: a zombie), None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def kill_until_gone(find, rounds: int) -> bool:
    """SIGKILL what ``find()`` lists, again and again (a process that forks between two looks is
    caught in a later round), until nothing is left or ``rounds`` are spent; whether it emptied."""
    for _ in range(rounds):
        pids = find()
        if not pids:
            return True
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)
    return not find()


def kill_namespace_leftovers(spare: tuple[int, ...] = ()) -> None:
    """Kill every process in this PID namespace but this one, its init (pid 1) and ``spare``."""
    keep = {1, os.getpid(), *spare}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in keep:
            try:
                os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass


# ----------------------------------------------------------------------------- leftovers
def copy_plain_files(source: Path, dest: Path) -> None:
    """Copy the regular files of ``source`` (no links, no folders) into ``dest``."""
    for item in Path(source).iterdir():
        if item.is_file() and not item.is_symlink():
            shutil.copy(item, Path(dest) / item.name)


def empty_folder(folder: Path) -> bool:
    """Delete what is in ``folder``, but never below a mount point: the sandbox's /tmp holds the
    folders bound into it (the IPC sockets, the kernels' folders) when their host paths lie
    under /tmp. Folders a kernel made unwritable are made writable first. Returns whether
    nothing is left but the mount points and the folders that lead to them."""
    try:
        device = os.lstat(folder).st_dev
    except OSError:
        return True
    dirs, clean = [], True
    for top, subdirs, files in os.walk(folder):
        try:
            os.chmod(top, 0o700)  # the owner (a kernel ran as the same user) may always
        except OSError:
            pass
        keep = []
        for d in subdirs:
            path = os.path.join(top, d)
            try:
                st = os.lstat(path)
                if os.path.islink(path):
                    os.unlink(path)
                elif st.st_dev == device:
                    keep.append(d)
                    dirs.append(path)
            except OSError:
                clean = False
        subdirs[:] = keep
        for f in files:
            try:
                os.unlink(os.path.join(top, f))
            except OSError:
                clean = False
    for path in reversed(dirs):  # deepest first; the ancestors of a mount point stay
        try:
            os.rmdir(path)
        except OSError:
            if not _leads_to_mount(path, device):
                clean = False
    return clean


def _leads_to_mount(path: str, device: int) -> bool:
    """Whether a folder is kept only because a mount point lies below it."""
    for top, subdirs, files in os.walk(path):
        if files:
            return False
        for d in list(subdirs):
            try:
                if os.lstat(os.path.join(top, d)).st_dev != device:
                    return True
            except OSError:
                return False
    return False


def remove_sysv_ipc() -> bool:
    """Remove the System V shared memory segments, semaphore sets and message queues left in this
    IPC namespace (the sandbox's own); False if any stays."""
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


# Writable places one student's process shares with the next in a sandbox: its /tmp (HOME:
# IPython's startup files, matplotlib's configuration) and shared memory.
SHARED_SCRATCH = ("/tmp", "/dev/shm")


def dev_entries() -> frozenset[str]:
    """What is in the box's /dev (bwrap's own nodes): taken before any student code runs."""
    try:
        return frozenset(os.listdir("/dev"))
    except OSError:
        return frozenset()


def remove_new_dev_entries(baseline: frozenset[str]) -> bool:
    """Remove what was added to the box's /dev since ``baseline``; False if anything stays."""
    clean = True
    for name in set(dev_entries()) - set(baseline):
        path = Path("/dev") / name
        try:
            if path.is_dir() and not path.is_symlink():
                clean = empty_folder(path) and clean
                path.rmdir()
            else:
                path.unlink()
        except OSError:
            clean = False
    return clean


def fresh_sandbox(dev_baseline: frozenset[str] | None = None) -> bool:
    """Empty the places students' processes share in a sandbox (``SHARED_SCRATCH``, what was
    added to /dev since ``dev_baseline``) and its System V IPC objects; False if anything
    stays. (POSIX message queues cannot be made in the box: its system-call filter.)"""
    dev = [remove_new_dev_entries(dev_baseline)] if dev_baseline is not None else []
    return all([empty_folder(Path(p)) for p in SHARED_SCRATCH] + dev + [remove_sysv_ipc()])
