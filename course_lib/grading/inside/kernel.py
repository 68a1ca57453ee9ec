"""The resource-limited Python kernel that runs a submission, inside the sandbox.

nbgrader starts one Jupyter kernel per submission; the box's launcher
(:mod:`course_lib.grading.sandbox.kernelspec`) starts it as ``python -m
course_lib.grading.inside.kernel --mem-mb N --file-mb N -f CONNECTION_FILE`` inside bwrap, or the
warm nursery (:mod:`course_lib.grading.inside.nursery`) forks it.
Before ipykernel starts, this module

* caps the address space (``RLIMIT_AS``), so a runaway allocation fails inside the student's cell
  with ``MemoryError`` (the cell scores 0, the batch goes on) instead of exhausting the machine;
* caps the size of any file it writes (``RLIMIT_FSIZE``) and disables core dumps;
* installs an audit hook (:func:`install_audit`) that reports, to the grader, processes the
  student's code starts and files it tries to change outside its folder. Audit hooks cannot be
  removed once added, so student code cannot switch the report off (it can only add noise to
  its own report). Its first line on that channel says the kernel started (before any student
  code): a run without it failed to start, which is the grader's failure, not the student's.
"""
from __future__ import annotations

import json
import os
import sys

from course_lib.grading.inside.hygiene import apply_limits, copy_plain_files

DEFAULT_MEM_MB = 4096
DEFAULT_FILE_MB = 64
AUDIT_FD_ENV = "COURSE_AUDIT_FD"
AUDIT_PROTECTED_ENV = "COURSE_AUDIT_PROTECTED"
STARTED = "started"  # the audit channel's first event: the kernel is up, no student code ran yet
# Audit events that mean "started a process" and "changed the file system".
SPAWN_EVENTS = {"os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.system", "os.exec",
                "subprocess.Popen", "pty.spawn"}
# event -> the positions of the paths it changes
FILE_EVENTS = {"os.remove": (0,), "os.rmdir": (0,), "os.rename": (0, 1), "os.mkdir": (0,),
               "os.symlink": (1,), "os.link": (1,), "os.chmod": (0,), "os.chown": (0,),
               "os.truncate": (0,), "os.utime": (0,), "shutil.rmtree": (0,),
               "shutil.move": (0, 1), "shutil.copyfile": (1,)}


def _within(path: str, folders) -> bool:
    return any(path == f or path.startswith(f.rstrip(os.sep) + os.sep) for f in folders)


def _outside(path: object, allowed: tuple[str, ...], protected: tuple[str, ...] = ()) -> str | None:
    """The absolute path if it lies outside the ``allowed`` folders (the first one, its own
    folder, always counts as inside; the others only outside the ``protected`` ones, such as the
    read-only course_lib snapshot bound under the private /tmp), else None."""
    if isinstance(path, int) or path is None:
        return None
    try:
        full = os.path.abspath(os.fsdecode(path))
    except (TypeError, ValueError):
        return None
    if _within(full, allowed[:1]):  # its own folder, first: always fine
        return None
    if _within(full, allowed[1:]) and not _within(full, protected):
        return None
    return full


def _writes(mode: object, flags: object) -> bool:
    """Does an 'open' audit event (mode for open(), flags for os.open) open for writing?"""
    if isinstance(mode, str):
        return any(m in mode for m in "wax+")
    if isinstance(flags, int):
        return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
    return False


def install_audit(fd: int, allowed: tuple[str, ...], protected: tuple[str, ...] = ()):
    """Report spawned processes and file changes outside ``allowed`` as JSON lines on ``fd``,
    from the moment the returned ``start()`` is called (the kernel's own start is not reported).
    """
    seen: set[tuple[str, str]] = set()
    busy = [True]
    write = os.write

    def hook(event: str, args: tuple) -> None:
        if busy[0]:
            return
        what = None
        if event in SPAWN_EVENTS or event.startswith("os.exec"):
            what = ("spawn", event)
        elif event == "open" and len(args) >= 3 and _writes(args[1], args[2]):
            path = _outside(args[0], allowed, protected)
            what = ("write", path) if path else None
        elif event in FILE_EVENTS:
            paths = [_outside(args[i], allowed, protected) for i in FILE_EVENTS[event]
                     if i < len(args)]
            path = next((p for p in paths if p), None)
            what = ("write", f"{event} {path}") if path else None
        if what is None or what in seen or len(seen) > 50:
            return
        seen.add(what)
        busy[0] = True
        try:
            write(fd, (json.dumps({"kind": what[0], "detail": what[1][:300]}) + "\n").encode())
        except OSError:
            pass
        finally:
            busy[0] = False

    sys.addaudithook(hook)

    def start(*_) -> None:
        busy[0] = False

    return start


def _pop_option(argv: list[str], name: str, default: int) -> int:
    if name in argv:
        i = argv.index(name)
        value = int(argv[i + 1])
        del argv[i:i + 2]
        return value
    return default


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    mem_mb = _pop_option(argv, "--mem-mb", DEFAULT_MEM_MB)
    file_mb = _pop_option(argv, "--file-mb", DEFAULT_FILE_MB)
    if "--copy-from" in argv:  # its folder starts as a copy of these files (read-only inbox)
        i = argv.index("--copy-from")
        copy_plain_files(argv[i + 1], os.getcwd())
        del argv[i:i + 2]
    apply_limits(mem_mb, file_mb)
    start_audit = None
    if os.environ.get(AUDIT_FD_ENV):
        fd = int(os.environ.pop(AUDIT_FD_ENV))
        protected = tuple(p for p in os.environ.pop(AUDIT_PROTECTED_ENV, "").split(os.pathsep)
                          if p)
        start_audit = audit_channel(fd, protected)
    serve(argv, start_audit)


def audit_channel(fd: int, protected: tuple[str, ...]):
    """The audit hook on ``fd``, for a kernel whose folder is the current one. The returned
    ``start()`` turns the reports on; its ``announce()`` says the kernel is up (see STARTED)."""
    os.set_inheritable(fd, False)  # the student's own processes do not get the channel
    # Writable inside: its folder, its private /tmp, /dev; but not what is bound read-only
    # there (the course_lib snapshot, the course's paths), whose paths may lie under /tmp.
    start = install_audit(fd, (os.getcwd(), "/tmp", "/dev"), protected)

    def announce() -> None:
        try:
            os.write(fd, (json.dumps({"kind": STARTED, "detail": ""}) + "\n").encode())
        except OSError:
            pass

    start.announce = announce
    return start


def serve(argv: list[str], start_audit=None) -> None:
    """Run ipykernel with ``argv`` (``-f CONNECTION_FILE`` ...) until it is shut down."""
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    app.initialize(argv)
    if start_audit is not None:  # report what the notebook's cells do, not the kernel's start
        app.shell.events.register("pre_run_cell", start_audit)
        start_audit.announce()  # up: from here a death is the notebook's doing
    app.start()


if __name__ == "__main__":
    main()
