"""Re-check submissions where student code cannot reach the verdict.

Why: nbgrader runs the student's notebook top to bottom in one kernel, so a student cell can
replace ``checks.check_...``, ``torch.allclose`` or IPython's input transformers and every later
test cell passes. The re-check runs the notebook again, in three processes of different trust:

1. The **parent** (:class:`course_lib.grading.sandbox.recheck_client.RecheckServer`, outside the
   sandbox) starts a server in a sandbox, sends it one job at a time over a pipe and reads the
   events back over another pipe. Nothing is written to a file the sandbox can reach.
2. The **server** (``python -m course_lib.grading.inside.recheck serve``, inside the box) imports
   PyTorch and the assignment's checks once, *before any student code*, and takes the reference
   :class:`Guard` snapshot: the identities of every function, class and module of the protected
   namespaces (all of ``course_lib``, ``torch``, ``torch.nn.*``, ``torch.cuda``, ``builtins``,
   ``time``, ...). It is never touched by student code: it has a child forked per job, gives it the
   cells one at a time, each with a fresh random nonce, and judges the child's replies.
3. The **child** (forked by the server's zygote, :mod:`.zygote`, a copy of the server made
   before the first job: it never held another student's job) runs the student's cells in an IPython
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
every process the child left behind and empties the box's /tmp, /dev/shm, what was added to /dev
and System V IPC (if anything stays it says so, and the next student gets a fresh server). While
it waits for the child it says "alive" every second, so the grader notices a stopped or wedged
server in seconds. Outside, each job runs in a cgroup of its own (whole-job caps).

Limits (also in book/instructor_guide.md): the checks run in the same process as the student's
code, so a submission written against this module's own internals (ctypes, rewriting the child's
driver) can still lie about its own tests; the final score is the lower of nbgrader's and the
re-check's, and nothing it does reaches other students, the course, or the gradebook.
"""
from __future__ import annotations

import argparse
import ast
import functools
import importlib.util
import io
import json
import os
import secrets
import signal
import sys
import threading
import time
import types
from pathlib import Path

from course_lib.grading.inside import wire
from course_lib.grading.inside.guard import Guard
from course_lib.grading.inside.hygiene import (apply_limits, children, dev_entries, empty_folder,
                                               fresh_sandbox, kill_namespace_leftovers, no_ptrace)
from course_lib.grading.inside.warm import fork_child, preload
from course_lib.grading.inside.zygote import Zygote, ZygoteGone



MAX_CAPTURE = 20_000  # characters of a cell's output kept for the report
HEARTBEAT_S = 1.0     # while judging, the server says it is alive this often (see recheck_client)


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


@functools.lru_cache(maxsize=None)
def nbgrader_utils() -> types.ModuleType:
    """nbgrader's own ``utils`` module (its ``determine_grade`` is the rule), run from its file
    alone: ``import nbgrader.utils`` first runs the package's ``__init__``, which imports its
    Jupyter server extensions, 2 s of CPU in every re-check server that grading never uses."""
    if "nbgrader.utils" in sys.modules:  # imported already (outside the box): the same module
        return sys.modules["nbgrader.utils"]
    package = importlib.util.find_spec("nbgrader")  # finds it without running its __init__
    path = Path(package.submodule_search_locations[0]) / "utils.py"
    spec = importlib.util.spec_from_file_location("course_lib_nbgrader_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def grade(points: float, error: bool, stderr: str, result_text: str | None) -> float:
    """nbgrader's determine_grade on the outputs the cell would have had."""
    import nbformat

    determine_grade = nbgrader_utils().determine_grade

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
                 # a check failure's kind (nan, dtype, device, memory...): what the grader reports
                 "error_kind": _kind(failure),
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
def _import_checks(modules: list[str]):
    """Everything the children share, imported once before any student code."""
    from IPython.core.interactiveshell import InteractiveShell

    import nbformat  # noqa: F401
    nbgrader_utils()
    preload(modules)
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.enabled = False  # no sqlite file in a /tmp emptied between students
    return InteractiveShell.instance(config=config)


def _clean(scratch: Path, sandboxed: bool, dev: frozenset[str]) -> bool:
    """Empty what one student's child could leave for the next: the scratch folder and, in the
    box (never the machine's), /tmp, /dev/shm, what was added to /dev, System V IPC."""
    clean = empty_folder(scratch)
    return (fresh_sandbox(dev) and clean) if sandboxed else clean


def _judge(job: dict, guard: Guard, zygote: Zygote, timeout: float, emit, scratch: Path,
           sandboxed: bool, dev: frozenset[str] = frozenset()) -> None:
    """Have the zygote fork a child for one job, feed it the cells, and emit the verdicts."""
    baseline = guard.digest()
    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    _clean(scratch, sandboxed, dev)

    def beat() -> None:
        emit(event="alive")

    try:
        pid = zygote.spawn([req_r, rep_w])
    except ZygoteGone as exc:  # no student code ran: the grader's failure, not the student's
        for fd in (req_r, req_w, rep_r, rep_w):
            os.close(fd)
        emit(event="cannot-fork", reason=str(exc))
        return
    os.close(req_r)
    os.close(rep_w)
    replies = wire.LineReader(rep_r)
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
        ack = _read_line(replies, timeout, beat)
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
        raw = _read_line(replies, 2 * timeout + 5, beat)
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
        kill_namespace_leftovers(spare=(zygote.pid,))
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    _reap_orphans(zygote.pid)
    if not _clean(scratch, sandboxed, dev):  # the next student gets a fresh server
        emit(event="unclean")


def _reap_orphans(zygote: int, wait_s: float = 2.0) -> None:
    """The server is the children's subreaper (zygote.py): what a student's processes left is
    reparented to it when they die, and must be collected (a zombie still counts as a task)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid:
            continue
        if set(children(os.getpid())) <= {zygote} or time.monotonic() > deadline:
            return
        time.sleep(0.01)


def _kind(failure: BaseException | None) -> str | None:
    """What sort of failure, as data: a check's own kind, or "memory" for a failed allocation."""
    if failure is None:
        return None
    from course_lib.checks import out_of_memory  # imported by the server before any student code

    kind = getattr(failure, "kind", None)
    if isinstance(kind, str) and kind:
        return kind[:40]
    return "memory" if out_of_memory(failure) else None


def _read_line(replies: wire.LineReader, timeout: float, beat=None) -> bytes | None:
    """The child's next line, None when it ended, hung past ``timeout`` or flooded the pipe;
    ``beat()`` is called every HEARTBEAT_S meanwhile (the grader outside hears the server)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            return replies.read_raw(max(0.0, min(left, HEARTBEAT_S)))
        except TimeoutError:
            if left <= HEARTBEAT_S:
                return None
            if beat is not None:
                beat()


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


def _child_main(guard: Guard, shell, timeout: float, mem_mb, scratch: Path):
    """What each child runs, forked by the zygote: only its two pipe ends, /dev/null for 0-2."""

    def child(req_r: int, rep_w: int) -> None:
        os.setpgid(0, 0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.chdir(scratch)
        apply_limits(mem_mb)
        _child(os.fdopen(req_r, "r"), rep_w, guard, shell, timeout)

    return child


def serve(results_fd: int, timeout: float, mem_mb: int | None, check_modules: list[str],
          scratch: Path, sandboxed: bool) -> None:
    """The server's loop: read jobs (JSON lines) on stdin, write events on ``results_fd``."""
    no_ptrace()
    # As in nbgrader's own kernels: a setup cell never pip-installs course_lib while grading.
    os.environ["NBGRADER_EXECUTION"] = "autograde"
    dev = dev_entries()  # bwrap's /dev, before any student code could add to it
    shell = _import_checks(check_modules)
    guard = Guard()  # after the imports and IPython's own set-up, before any student code
    # Before the first job is read: every child is a copy of this pristine state (zygote.py).
    zygote = Zygote(_child_main(guard, shell, timeout, mem_mb, scratch), fork_child)

    def emit(**event) -> None:
        wire.write(results_fd, event)

    emit(event="ready")
    for line in sys.stdin:
        if line.strip():
            job = json.loads(line)
            _judge(job, guard, zygote, timeout, emit, scratch, sandboxed, dev)
            if not zygote.healthy():  # a student's process stopped or killed it
                emit(event="unclean")
            emit(event="end-job", student=job["student"])
    zygote.close()


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
