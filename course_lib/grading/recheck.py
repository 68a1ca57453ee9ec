"""Re-check submissions where student code cannot reach the verdict.

Why: nbgrader runs the student's notebook top to bottom in one kernel, so a student cell can
replace ``checks.check_...``, ``torch.allclose`` or IPython's input transformers and every later
test cell passes. The re-check runs the notebook again, in three processes of different trust:

1. The **parent** (:func:`recheck`, in the grading pipeline, outside the sandbox) starts a server
   in a sandbox (:mod:`course_lib.grading.sandbox`), sends it one job at a time over a pipe and
   reads the events back over another pipe. Nothing is written to a file the sandbox can reach.
2. The **server** (``python -m course_lib.grading.recheck serve``, inside the sandbox) imports
   PyTorch and the assignment's checks once, *before any student code*, and takes the reference
   :class:`Guard` snapshot: the identities of every function, class and module of the protected
   namespaces (all of ``course_lib``, ``torch``, ``torch.nn.*``, ``torch.cuda``, ``builtins``,
   ``time``, ...). It is never touched by student code: it forks a child per job, gives it the
   cells one at a time, each with a fresh random nonce, and judges the child's replies.
3. The **child** (a fork: nothing leaks between students) runs the student's cells in an IPython
   shell as submitted, and every locked and test cell with its source from the gradebook; test
   cells run through a plain ``exec`` (not IPython, whose input transformers a student cell can
   configure). Before a test cell it restores every protected object the student replaced; after
   it, it reports a digest of the protected objects' identities, which the server compares with
   its own (memory addresses survive ``fork``), so a replacement made while the check was
   running zeroes that test whatever the child's own copy of the snapshot says.

The server accepts a test's reply only with that cell's nonce, only once, and only after the child
has acknowledged the *next* request (a reply forged by a student function that then kills its
process is never confirmed). Scores follow nbgrader's rule (``nbgrader.utils.determine_grade``):
an error or any stderr output is 0, a float in [0, points] as the last expression is partial
credit, otherwise full points; the server, not the child, applies it. A child that dies keeps the
confirmed scores of the test cells before; the rest score 0. After each job the server kills
every process the child left behind and empties the sandbox's /tmp.

Limits (also in book/instructor_guide.md): the checks run in the same process as the student's
code, so a submission written against this module's own internals (ctypes, rewriting the child's
driver) can still lie about its own tests; the final score is the lower of nbgrader's and the
re-check's, and nothing it does reaches other students, the course, or the gradebook.
"""
from __future__ import annotations

import argparse
import ast
import ctypes
import hashlib
import importlib
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

from course_lib.grading import sandbox

# Modules (and every submodule of the first group) whose functions, classes and modules student
# code must not replace while the checks run.
PROTECTED_PACKAGES = ("course_lib", "torch.nn", "torch.cuda", "torch.utils.flop_counter",
                      "torch.testing", "torch.backends", "torch.autograd", "torch.linalg",
                      "torch.fft", "torch.random", "torch.functional")
PROTECTED_MODULES = ("torch", "builtins", "math", "numbers", "numpy", "warnings", "contextlib",
                     "io", "time", "timeit", "gc", "random", "statistics", "logging", "sys",
                     "os")
PROTECTED_CLASSES = ("torch.Tensor", "torch._C.TensorBase")
# Names the interpreter or IPython rebind on their own while running cells.
_VOLATILE = {"_", "__", "___", "get_ipython", "display", "__IPYTHON__", "exit", "quit",
             "displayhook", "excepthook", "last_type", "last_value", "last_traceback",
             "last_exc", "stdout", "stderr", "stdin", "ps1", "ps2", "modules", "path",
             "path_importer_cache", "meta_path", "path_hooks", "argv", "environ", "flags"}
MAX_CAPTURE = 20_000  # characters of a cell's output kept for the report


def _watched(value: object) -> bool:
    """Only objects whose replacement is tampering: functions, classes, modules."""
    return callable(value) or isinstance(value, types.ModuleType)


def _protected_modules() -> dict[str, types.ModuleType]:
    found = {}
    for name, module in list(sys.modules.items()):
        if not isinstance(module, types.ModuleType):
            continue
        if name in PROTECTED_MODULES or any(name == p or name.startswith(p + ".")
                                            for p in PROTECTED_PACKAGES):
            found[name] = module
    return found


def _contents_id(container: dict | list) -> int:
    """The identities of a container's items: a list's in order, a dict's in ANY order. (A
    module's ``__builtins__`` is the builtins dict, where IPython's builtin trap deletes and
    re-inserts ``exit``, ``quit``, ... around every cell: same objects, new order, nothing
    replaced.)"""
    if isinstance(container, dict):
        return hash(frozenset((k, id(v)) for k, v in list(container.items())))
    return hash(tuple(id(v) for v in container))


class Guard:
    """Snapshot of the protected namespaces; reports, undoes and fingerprints replacements."""

    def __init__(self) -> None:
        self.modules = _protected_modules()
        self.namespaces: dict[str, tuple[object, dict]] = {}
        self.code: dict[str, tuple[types.FunctionType, tuple]] = {}
        self.contents: dict[str, tuple[object, object]] = {}
        classes: dict[str, type] = {}
        for name, module in self.modules.items():
            self._take(name, module, vars(module))
            for attr, value in list(vars(module).items()):
                if isinstance(value, type) and getattr(value, "__module__", None) == name:
                    classes[f"{name}.{attr}"] = value
                elif name.startswith("course_lib"):
                    self._take_course(f"{name}.{attr}", value, name)
        for dotted in PROTECTED_CLASSES:
            module_name, _, cls_name = dotted.rpartition(".")
            cls = getattr(sys.modules.get(module_name), cls_name, None)
            if isinstance(cls, type):
                classes[dotted] = cls
        for key, cls in classes.items():
            self._take(key, cls, vars(cls))
            if key.startswith("course_lib"):
                for attr, value in vars(cls).items():
                    self._take_course(f"{key}.{attr}", value, cls.__module__)
        self.reference = self.digest()  # the snapshot's own digest

    def _take(self, key: str, owner: object, namespace) -> None:
        self.namespaces[key] = (owner, {k: v for k, v in list(namespace.items())
                                        if k not in _VOLATILE and _watched(v)})

    def _take_course(self, key: str, value: object, module_name: str) -> None:
        """course_lib: also the code of its functions and the contents of its dicts (``_REF``)."""
        if isinstance(value, types.FunctionType) and value.__module__ == module_name:
            self.code[key] = (value, (value.__code__, value.__defaults__, value.__kwdefaults__))
        elif isinstance(value, dict):
            self.contents[key] = (value, dict(value))
        elif isinstance(value, list):
            self.contents[key] = (value, list(value))

    # ------------------------------------------------------------------ reading the state
    def _current(self):
        """(key, identity) pairs of everything watched, as it is now."""
        for name, module in self.modules.items():
            yield f"module {name}", id(sys.modules.get(name))
        for key, (owner, saved) in self.namespaces.items():
            current = vars(owner)
            for k in saved:
                yield f"{key}.{k}", id(current.get(k))
            if isinstance(owner, type):  # a method added to a class shadows an inherited one
                for k, v in list(current.items()):
                    if k not in saved and k not in _VOLATILE and _watched(v):
                        yield f"{key}.{k} (added)", id(v)
        for key, (fn, _) in self.code.items():
            yield f"{key} (code)", hash((id(fn.__code__), id(fn.__defaults__),
                                         id(fn.__kwdefaults__)))
        for key, (container, saved) in self.contents.items():
            yield f"{key} (contents)", _contents_id(container)

    def _saved(self):
        """The same pairs as they were at the snapshot."""
        for name, module in self.modules.items():
            yield f"module {name}", id(module)
        for key, (owner, saved) in self.namespaces.items():
            for k, v in saved.items():
                yield f"{key}.{k}", id(v)
        for key, (fn, (code, defaults, kwdefaults)) in self.code.items():
            yield f"{key} (code)", hash((id(code), id(defaults), id(kwdefaults)))
        for key, (container, saved) in self.contents.items():
            yield f"{key} (contents)", _contents_id(saved)

    def changes(self) -> list[str]:
        """Dotted names of protected objects replaced since the snapshot."""
        saved = dict(self._saved())
        return [k for k, v in self._current() if saved.get(k) != v]

    def digest(self) -> str:
        """One hash of the current identities: equal to the snapshot's only if nothing watched
        was replaced (compared by the server against its own, untouched, snapshot)."""
        h = hashlib.sha256()
        for key, ident in self._current():
            h.update(f"{key}={ident};".encode())
        return h.hexdigest()

    def restore(self) -> None:
        sys.modules.update(self.modules)
        for key, (owner, saved) in self.namespaces.items():
            current = vars(owner)
            for k, v in saved.items():
                if current.get(k) is not v:
                    try:
                        setattr(owner, k, v)
                    except (AttributeError, TypeError):  # e.g. a C type's read-only slot
                        pass
            if isinstance(owner, type):
                for k in [k for k, v in list(current.items())
                          if k not in saved and k not in _VOLATILE and _watched(v)]:
                    try:
                        delattr(owner, k)
                    except (AttributeError, TypeError):
                        pass
        for fn, (code, defaults, kwdefaults) in self.code.values():
            fn.__code__, fn.__defaults__, fn.__kwdefaults__ = code, defaults, kwdefaults
        for container, saved in self.contents.values():
            if isinstance(container, dict):
                container.clear()
                container.update(saved)
            else:
                container[:] = saved


class _Capture(io.TextIOBase):
    """A bounded text sink standing in for sys.stdout / sys.stderr in the child."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.total = 0

    def writable(self) -> bool:
        return True

    def write(self, text) -> int:
        text = str(text)
        self.total += len(text)
        if self.size < MAX_CAPTURE:
            keep = text[:MAX_CAPTURE - self.size]
            self.parts.append(keep)
            self.size += len(keep)
        return len(text)

    def value(self) -> str:
        return "".join(self.parts)


def grade(points: float, error: bool, stderr: str, result_text: str | None) -> float:
    """nbgrader's determine_grade on the outputs the cell would have had."""
    import nbformat
    from nbgrader.utils import determine_grade

    outputs = []
    if error:
        outputs.append(nbformat.v4.new_output("error", ename="Error", evalue="", traceback=[]))
    if stderr:
        outputs.append(nbformat.v4.new_output("stream", name="stderr", text=stderr))
    if result_text is not None:
        outputs.append(nbformat.v4.new_output("execute_result",
                                              data={"text/plain": result_text},
                                              execution_count=1))
    cell = nbformat.v4.new_code_cell("", metadata={"nbgrader": {
        "grade": True, "solution": False, "points": points, "grade_id": "x"}})
    cell.outputs = outputs
    score, _ = determine_grade(cell)
    return float(score if score is not None else 0.0)


class _Timeout(KeyboardInterrupt):
    """Raised in a cell that ran past its time (like nbgrader's kernel interrupt)."""


def _run_plain(source: str, namespace: dict) -> object:
    """Run a test cell with the plain interpreter; return its last expression's value."""
    tree = ast.parse(source, filename="<test cell>")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, "<test cell>", "exec"), namespace)
    if last is not None:
        return eval(compile(last, "<test cell>", "eval"), namespace)
    return None


# ---------------------------------------------------------------------------- the child
def _child(requests, replies, guard: Guard, shell, timeout: float) -> None:
    """Run cells as the server sends them; reply once per request (see module docstring)."""
    send = os.write

    def reply(**event) -> None:
        send(replies, (json.dumps(event) + "\n").encode())

    protected_names: dict[str, object] = {}
    state = {"strikes": 0, "timed_out": False}

    def on_alarm(signum, frame):
        state["strikes"] += 1
        state["timed_out"] = True
        if state["strikes"] >= 2:  # the cell swallowed the interrupt: give up on this process
            os._exit(3)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        raise _Timeout(f"cell ran past {timeout:g} s")

    signal.signal(signal.SIGALRM, on_alarm)
    for line in requests:
        request = json.loads(line)
        nonce = request["nonce"]
        reply(event="ack", nonce=nonce)
        if request.get("finish"):
            return
        cell = request["cell"]
        state.update(strikes=0, timed_out=False)
        is_test = cell["kind"] == "test"
        if is_test:
            # Names and repairs only when the digest says something changed (the usual case:
            # nothing did, and two digests per test are all it costs).
            digest_before = guard.digest()
            tampered_before = guard.changes() if digest_before != guard.reference else []
            if digest_before != guard.reference:
                guard.restore()
                digest_before = guard.digest()
            sys.settrace(None)
            sys.setprofile(None)
            threading.settrace(None)
            threading.setprofile(None)
            shell.user_ns.update(protected_names)
        out, err = _Capture(), _Capture()
        sys.stdout, sys.stderr = out, err
        failure, value, timed_out = None, None, False
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            if is_test:
                value = _run_plain(cell["source"], shell.user_ns)
            else:
                result = shell.run_cell(cell["source"], store_history=False)
                failure = result.error_before_exec or result.error_in_exec
        except BaseException as exc:  # a test cell's error, or an interrupt
            failure = exc
            timed_out = isinstance(exc, _Timeout)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        timed_out = timed_out or isinstance(failure, _Timeout) or state["timed_out"]
        if cell.get("locked") and not is_test:
            # Module names bound by locked cells (checks, torch, F): rebound before each test.
            protected_names.update({k: v for k, v in shell.user_ns.items()
                                    if isinstance(v, types.ModuleType) and not k.startswith("_")})
        event = {"event": "cell", "nonce": nonce, "cell": cell["id"], "kind": cell["kind"],
                 "error": failure is not None,
                 "error_name": type(failure).__name__ if failure is not None else None,
                 "error_text": str(failure)[:2000] if failure is not None else None,
                 "timed_out": timed_out, "stderr": err.value()[:2000],
                 "stdout_chars": out.total}
        tampered_before = tampered_before[:20] if is_test else []
        if is_test:
            try:
                text = None if value is None else repr(value)[:1000]
            except Exception:  # a student object whose repr raises
                text = "?"
            digest_after = guard.digest()
            changed = digest_after != guard.reference
            event.update(result=text, digest_before=digest_before, digest_after=digest_after,
                         tampered_before=tampered_before,
                         tampered_during=guard.changes()[:20] if changed else [])
            if changed:
                guard.restore()
        reply(**event)


# ---------------------------------------------------------------------------- the server
def warm_up_flop_counter() -> None:
    """The first FlopCounterMode use imports ~800 modules (seconds on a busy machine): done once
    in a process that forks, not in every child against the cell timeout."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False):
        torch.nn.functional.conv2d(torch.zeros(1, 1, 3, 3, device="meta"),
                                   torch.zeros(1, 1, 1, 1, device="meta"))


def _import_checks(modules: list[str]):
    """Everything the children share, imported once before any student code."""
    import torch

    torch.set_num_threads(1)  # forked children must not inherit a started thread pool
    from IPython.core.interactiveshell import InteractiveShell

    import nbformat  # noqa: F401
    import nbgrader.utils  # noqa: F401
    import numpy  # noqa: F401
    import torch.utils.flop_counter  # noqa: F401
    for name in modules:
        importlib.import_module(name)
    warm_up_flop_counter()
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.enabled = False  # no sqlite file in a /tmp emptied between students
    return InteractiveShell.instance(config=config)


def _no_ptrace() -> None:
    """Make this process undumpable: its children (student code) cannot ptrace it."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except (OSError, AttributeError):
        pass


def _kill_leftovers() -> None:
    """Kill every process in this PID namespace but this one and its init (pid 1)."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in (1, me):
            try:
                os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass


class _Lines:
    """Line reader over a pipe with a deadline (the child may hang or die)."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buffer = fd, b""

    def read(self, deadline: float) -> bytes | None:
        import select

        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    return None  # the child closed its end (exited)
                self.buffer += chunk
                if len(self.buffer) > 10 * 2**20:
                    return None  # a flood on the reply channel: treated as a dead child
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line


def _judge(job: dict, guard: Guard, shell, timeout: float, mem_mb, emit, scratch: Path,
           sandboxed: bool) -> None:
    """Fork a child for one job, feed it the cells, and emit the verdicts."""
    from course_lib.grading.kernel import apply_limits

    baseline = guard.digest()
    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    if sandboxed:  # the sandbox's own /tmp, never the machine's
        sandbox.empty_folder(Path("/tmp"))
    sandbox.empty_folder(scratch)
    pid = os.fork()
    if pid == 0:  # the child: only its own two pipe ends, /dev/null for fds 0-2
        try:
            os.setpgid(0, 0)
            os.close(req_w)
            os.close(rep_r)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            lo, hi = sorted((req_r, rep_w))
            os.closerange(3, lo)  # above all the server's channel to the parent
            os.closerange(lo + 1, hi)
            os.closerange(hi + 1, 4096)
            os.chdir(scratch)
            apply_limits(mem_mb)
            _child(os.fdopen(req_r, "r"), rep_w, guard, shell, timeout)
        finally:
            os._exit(0)
    os.close(req_r)
    os.close(rep_w)
    replies = _Lines(rep_r)
    cells = job["cells"]
    pending: dict | None = None  # a test verdict waiting for the child's next acknowledgement
    dead = None
    emit(event="start-job", student=job["student"])
    for cell in [*cells, None]:
        nonce = secrets.token_hex(16)
        request = {"nonce": nonce, "finish": True} if cell is None else {"nonce": nonce,
                                                                         "cell": cell}
        if cell is not None:
            emit(event="start", cell=cell["id"])
        try:
            os.write(req_w, (json.dumps(request) + "\n").encode())
        except OSError:
            dead = "its process ended"
            break
        ack = replies.read(time.monotonic() + timeout)
        try:
            ok = ack is not None and json.loads(ack) == {"event": "ack", "nonce": nonce}
        except ValueError:
            ok = False
        if not ok:
            dead = "its process ended" if ack is None else "it wrote to the re-check's channel"
            break
        if pending is not None:  # the child came back to its loop: the verdict stands
            emit(**pending)
            pending = None
        if cell is None:
            break
        raw = replies.read(time.monotonic() + 2 * timeout + 5)
        try:
            event = json.loads(raw) if raw is not None else None
        except ValueError:
            event = None
        if event is None:
            if raw is None:
                dead = f"cell {cell['id']}: its process ended or hung"
            else:
                dead = "it wrote to the re-check's channel"
            break
        if event.get("nonce") != nonce or event.get("cell") != cell["id"]:
            dead = f"cell {cell['id']}: a forged reply on the re-check's channel"
            emit(event="forged", cell=cell["id"])
            break
        event.pop("nonce", None)
        if cell["kind"] == "test":
            forged_state = event.get("digest_after") != baseline
            restored_badly = event.get("digest_before") != baseline
            stderr = event.get("stderr") or ""
            score = grade(cell["points"], bool(event.get("error")), stderr, event.get("result"))
            if forged_state or restored_badly:
                score = 0.0
            event.update(points=cell["points"], score=score,
                         tampered_during=event.get("tampered_during") or
                         (["protected objects (identity check)"] if forged_state else []))
            for k in ("digest_before", "digest_after", "result"):
                event.pop(k, None)
            pending = event
        else:
            emit(**event)
    status = _reap(pid, timeout)
    if dead or status:  # a forged reply is the reason, whatever became of the process after
        emit(event="exit", reason=dead if "forged" in (dead or "") or "channel" in (dead or "")
             else status or dead)
    else:
        emit(event="done")
    os.close(req_w)
    os.close(rep_r)
    if sandboxed:  # in its own PID namespace: whatever else is alive, the student started
        _kill_leftovers()
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass


def _reap(pid: int, timeout: float) -> str | None:
    """Wait briefly for the child; kill it if it lingers. Returns why it ended badly, if so."""
    deadline = time.monotonic() + 2
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            return "killed: it did not finish its cell in time"
        time.sleep(0.01)
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    if os.WEXITSTATUS(status) == 3:
        return f"a cell ran past {2 * timeout:g} s and ignored the interrupt"
    if os.WEXITSTATUS(status):
        return f"exited with code {os.WEXITSTATUS(status)}"
    return None


def serve(results_fd: int, timeout: float, mem_mb: int | None, check_modules: list[str],
          scratch: Path, sandboxed: bool) -> None:
    """The server's loop: read jobs (JSON lines) on stdin, write events on ``results_fd``."""
    _no_ptrace()
    # As in nbgrader's own kernels: a setup cell never pip-installs course_lib while grading.
    os.environ["NBGRADER_EXECUTION"] = "autograde"
    shell = _import_checks(check_modules)
    guard = Guard()  # after the imports and IPython's own set-up, before any student code

    def emit(**event) -> None:
        os.write(results_fd, (json.dumps(event) + "\n").encode())

    emit(event="ready")
    for line in sys.stdin:
        if line.strip():
            job = json.loads(line)
            _judge(job, guard, shell, timeout, mem_mb, emit, scratch, sandboxed)
            emit(event="end-job", student=job["student"])


# ---------------------------------------------------------------------------- the parent
def recheck(jobs: list[dict], timeout: float, mem_mb: int | None, check_modules: list[str],
            box=None, log: Path | None = None, progress=None) -> dict[str, list[dict]]:
    """Re-check ``jobs`` (``{"student", "cells": [{"id", "kind": "code"|"test", "source",
    "locked", "points"}]}``); returns student -> events. ``box``: the
    :class:`~course_lib.grading.sandbox.Sandbox` (None: no sandbox, a plain subprocess)."""
    events: dict[str, list[dict]] = {job["student"]: [] for job in jobs}
    todo = list(jobs)
    while todo:
        done, report = _run_server(todo, timeout, mem_mb, check_modules, box, log, events,
                                   progress)
        if done < len(todo):  # the sandbox was stopped during this job (e.g. a fork bomb)
            why = getattr(report, "killed", None) or "the re-check's server stopped"
            events[todo[done]["student"]].append({"event": "exit", "reason": why})
            if progress:
                progress(todo[done]["student"])
            done += 1
        todo = todo[done:]
    return events


def _run_server(jobs, timeout, mem_mb, check_modules, box, log, events, progress):
    """One server process for as many jobs as it lasts; returns how many jobs it finished and
    the sandbox's report (None without a sandbox)."""
    job_r, job_w = os.pipe()
    res_r, res_w = os.pipe()
    from course_lib.grading import sandbox as sb

    scratch_host = Path(box.new_scratch("recheck")) if box is not None else None
    scratch = str(scratch_host) if scratch_host is not None else \
        tempfile.mkdtemp(prefix="recheck-scratch-")
    command = [sys.executable, "-m", "course_lib.grading.recheck", "serve", "--fd", str(res_w),
               *(["--sandboxed"] if box is not None else []),
               "--timeout", str(timeout), "--scratch", scratch,
               *(["--mem-mb", str(mem_mb)] if mem_mb else []),
               *[a for m in check_modules for a in ("--check", m)]]
    log_file = open(log, "a") if log else subprocess.DEVNULL
    outcome: dict = {}

    def run() -> None:
        try:
            if box is None:
                proc = subprocess.Popen(command, stdin=job_r, stdout=log_file,
                                        stderr=subprocess.STDOUT, pass_fds=(res_w,))
                outcome["returncode"] = proc.wait()
            else:
                outcome["report"] = sb.run_sandboxed(
                    box, command, "recheck", writable={scratch: scratch}, stdin=job_r,
                    stdout=log_file, stderr=subprocess.STDOUT, pass_fds=(res_w,))
        finally:
            os.close(job_r)
            os.close(res_w)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        finished = _feed(jobs, _Lines(res_r), job_w, timeout, events, progress)
    finally:
        os.close(job_w)
        thread.join(timeout=30)
        os.close(res_r)
        if log_file is not subprocess.DEVNULL:
            log_file.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return finished, outcome.get("report")


def _feed(jobs, lines: _Lines, job_w: int, timeout: float, events, progress) -> int:
    """Send the server one job at a time; collect its events. Returns the jobs it finished."""
    if lines.read(time.monotonic() + 600) is None:  # "ready": imports done
        return 0
    for finished, job in enumerate(jobs):
        try:
            os.write(job_w, (json.dumps(job) + "\n").encode())
        except OSError:
            return finished
        budget = time.monotonic() + timeout * (3 * len(job["cells"]) + 4) + 60
        while True:
            line = lines.read(budget)
            if line is None:
                return finished
            event = json.loads(line)
            if event.get("event") == "end-job":
                break
            if event.get("event") != "start-job":
                events[job["student"]].append(event)
        if progress:
            progress(job["student"])
    return len(jobs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="the sandboxed server (started by recheck())")
    s.add_argument("--fd", type=int, required=True)
    s.add_argument("--timeout", type=float, required=True)
    s.add_argument("--mem-mb", type=int, default=None)
    s.add_argument("--check", action="append", default=[])
    s.add_argument("--scratch", type=Path, required=True)
    s.add_argument("--sandboxed", action="store_true",
                   help="running in the sandbox: may empty /tmp and kill every other process")
    args = parser.parse_args(argv)
    serve(args.fd, args.timeout, args.mem_mb, args.check, args.scratch, args.sandboxed)


if __name__ == "__main__":
    main()
