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

   A test cell whose checks are all value-only runs in the **server** instead (value-only
   checking, :mod:`.checker`): the child is sent no source for it, only asked for the values of
   the notebook's names and for calls of the student's functions on copies of the inputs, and
   answers by value (:mod:`.values`); the expected values, cases and hidden tests never leave
   the server.

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

Limits (also in book/instructor_guide.md): a test cell whose checks are not value-only (none of
the course's today) would run in the child, beside the student's code, where a submission
written against this module's own internals (ctypes, rewriting the child's driver) could lie
about it; and what the child reports to a server-run check (a function's result, a probe's
facts) is the student's to fake. The final score is the lower of nbgrader's and the re-check's,
and nothing a submission does reaches other students, the course, or the gradebook.
"""
from __future__ import annotations

import argparse
import ast
import functools
import importlib
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

from course_lib.grading.inside import checker, isolation, values, wire
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


def _run_plain(source: str, namespace: dict, names=None) -> object:
    """Run a test cell with the plain interpreter; return its last expression's value.
    ``names``: a mapping the cell's names are read from first (the checker's, checker.py)."""
    tree = ast.parse(source, filename="<test cell>")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, "<test cell>", "exec"), namespace, names)
    if last is not None:
        return eval(compile(last, "<test cell>", "eval"), namespace, names)
    return None


# ---------------------------------------------------------------------------- the child
def _child(requests, replies, guard: Guard, shell, timeout: float) -> None:
    """Run cells as the server sends them; reply once per request (see module docstring)."""
    def reply(**event) -> None:
        wire.write(replies, event)

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
            digest_before, tampered_before = _before_test(guard)
            shell.user_ns.update(protected_names)
        if cell.get("checker"):  # the server runs this test: answer its lookups and calls
            answered = _answer_checker(requests, reply, shell.user_ns, state)
            reply(event="cell", nonce=nonce, cell=cell["id"], kind="test",
                  digest_before=digest_before, tampered_before=tampered_before[:20],
                  **_after_test(guard), **answered)
            continue
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
            event.update(result=text, digest_before=digest_before,
                         tampered_before=tampered_before, **_after_test(guard))
        reply(**event)


def _before_test(guard: Guard) -> tuple[str, list[str]]:
    """Before a test cell: undo what student code replaced among the protected objects and stop
    its tracers. Names and repairs only when the digest says something changed (the usual case:
    nothing did, and two digests per test are all it costs)."""
    digest_before = guard.digest()
    tampered_before = guard.changes() if digest_before != guard.reference else []
    if digest_before != guard.reference:
        guard.restore()
        digest_before = guard.digest()
    sys.settrace(None)
    sys.setprofile(None)
    threading.settrace(None)
    threading.setprofile(None)
    return digest_before, tampered_before


def _after_test(guard: Guard) -> dict:
    """After a test cell: the protected objects' digest (the server compares it with its own)
    and what was replaced while the test ran (then undone)."""
    digest_after = guard.digest()
    changed = digest_after != guard.reference
    report = {"digest_after": digest_after,
              "tampered_during": guard.changes()[:20] if changed else []}
    if changed:
        guard.restore()
    return report


def _answer_checker(requests, reply, namespace: dict, state: dict) -> dict:
    """The child's side of a test cell the server runs (value-only checking, module docstring):
    answer lookups of the notebook's names and calls of the student's objects, by value, until
    the server says "end". The student's objects stay here, as handles (:mod:`.values`)."""
    kept: list = []

    def keep(value) -> int:
        kept.append(value)
        return len(kept) - 1

    err, out_chars = _Capture(), 0
    while True:
        line = requests.readline()
        if not line:
            os._exit(0)  # the server is gone
        op = json.loads(line)
        if op.get("op") == "end":  # the cell's own reply follows (_child)
            return {"stderr": err.value()[:2000], "stdout_chars": out_chars,
                    "timed_out": state["timed_out"]}
        if op.get("op") == "lookup":
            name = op["name"]
            answer = ({"missing": True} if name not in namespace
                      else _encoded(namespace[name], keep))
        else:
            out = _Capture()
            answer = _student_call(op, kept, keep, out, err, state)
            out_chars += out.total
        reply(event="answer", nonce=op["nonce"], timed_out=state["timed_out"], **answer)


def _encoded(value, keep) -> dict:
    """A value for the server, or why it could not be read (a student object can raise)."""
    try:
        return {"category": "returned", "value": values.encode(value, keep)}
    except BaseException as exc:  # noqa: BLE001 (anything a student's object raises)
        return {"category": "raised",
                "failure": [type(exc).__name__[:80], "its result could not be read", ""]}


def _student_call(op: dict, kept: list, keep, out, err, state: dict) -> dict:
    """One call of a student's object, on the inputs the server sent, with its refusals in
    force and the cell's remaining time on the clock (the alarm raises _Timeout in it)."""
    from course_lib import checks

    state.update(strikes=0)
    try:
        args = values.decode(op["args"], lambda message: kept[message["v"]])
        kwargs = values.decode(op["kwargs"], lambda message: kept[message["v"]])
        fn = kept[op["handle"]]
        if op.get("probe"):  # a checks module's function that reads the student's object
            module, name = op["probe"]
            if not module.startswith("course_lib.checks."):
                raise LookupError(f"{module} holds no probe")
            probe = getattr(importlib.import_module(module), name)
            fn = functools.partial(probe, fn)
    except (values.BadValue, LookupError, TypeError, ImportError, AttributeError) as exc:
        return {"category": "raised", "failure": ["BadValue", f"bad call: {exc}", ""]}
    sys.stdout, sys.stderr = out, err
    signal.setitimer(signal.ITIMER_REAL, max(0.01, float(op["timeout"])))
    try:
        with checks.refusing_as_recorded(op["refusals"]):
            category, result = checks.student_outcome(fn, tuple(args), dict(kwargs))
    except BaseException as exc:  # noqa: BLE001 (an interrupt outside the student's function)
        category = "exited" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "raised"
        result = exc
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    if category == "returned":
        answer = _encoded(result, keep)
        if any(type(value) in (list, dict) for value in [*args, *kwargs.values()]):
            # What the function left in the lists and dicts it was given: the check sees a
            # change to its own copy, as when it calls a function in its own process.
            answer["args_after"] = _encoded([list(args), dict(kwargs)], keep).get("value")
        return answer
    try:
        text, kind = str(result)[:2000], getattr(result, "kind", "")
    except BaseException:  # noqa: BLE001 (a student's exception whose str raises)
        text, kind = "", ""
    return {"category": category,
            "failure": [type(result).__name__[:80], text, kind if type(kind) is str else ""]}


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
           sandboxed: bool, dev: frozenset[str] = frozenset(), value_only: bool = True) -> None:
    """Have the zygote fork a child for one job, feed it the cells, and emit the verdicts."""
    baseline = guard.digest()
    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    _clean(scratch, sandboxed, dev)

    def beat() -> None:
        emit(event="alive")

    try:
        pid, isolated = zygote.spawn([req_r, rep_w])
    except ZygoteGone as exc:  # no student code ran: the grader's failure, not the student's
        for fd in (req_r, req_w, rep_r, rep_w):
            os.close(fd)
        emit(event="cannot-fork", reason=str(exc))
        return
    os.close(req_r)
    os.close(rep_w)
    os.set_blocking(req_w, False)  # a child that stops reading must not stop the server

    def send(message: dict) -> bool:
        return wire.write_within(req_w, message, timeout, beat, HEARTBEAT_S)

    replies = wire.LineReader(rep_r, max_line=checker.MAX_REPLY)
    cells = job["cells"]
    trusted = checker.trusted_modules(cells)  # the checks modules the locked cells import
    pending: dict | None = None  # a test verdict waiting for the child's next acknowledgement
    dead = None
    emit(event="start-job", student=job["student"], own_pid_namespace=isolated)
    for cell in [*cells, None]:
        nonce = secrets.token_hex(16)
        in_server = (value_only and cell is not None and cell["kind"] == "test"
                     and checker.runs_in_server(cell["source"], trusted))
        request = ({"nonce": nonce, "finish": True} if cell is None else
                   {"nonce": nonce, "cell": {"id": cell["id"], "kind": "test", "checker": True}}
                   if in_server else {"nonce": nonce, "cell": cell})  # no source: not in the child
        if cell is not None:
            emit(event="start", cell=cell["id"])
        if not send(request):
            dead = "its process ended"
            break
        ack = _read_line(replies, timeout, beat)
        try:
            ok = ack is not None and json.loads(ack) == {"event": "ack", "nonce": nonce}
        except (ValueError, RecursionError):  # nested past the parser's depth
            ok = False
        if not ok:
            dead = "its process ended" if ack is None else "it wrote to the re-check's channel"
            break
        if pending is not None:  # the child came back to its loop: the verdict stands
            emit(**pending)
            pending = None
        if cell is None:
            break
        if in_server:
            try:
                server_event = _check_in_server(cell, trusted, send, replies, timeout, beat)
            except checker.ChildGone as exc:
                dead = f"cell {cell['id']}: {exc}"
                if "forged" in str(exc):
                    emit(event="forged", cell=cell["id"])
                break
        raw = _read_line(replies, 2 * timeout + 5, beat)
        try:
            event = json.loads(raw) if raw is not None else None
        except (ValueError, RecursionError):  # nested past the parser's depth
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
        if in_server:  # the child's reply says only what happened to its own state
            event = _with_child_part(server_event, event)
        if cell["kind"] == "test":
            forged_state = event.get("digest_after") != baseline
            restored_badly = event.get("digest_before") != baseline
            stderr = event.get("stderr") or ""
            score = grade(cell["points"], bool(event.get("error")), stderr, event.get("result"))
            # What the tests students see alone earned (nbgrader's kernel runs only those).
            visible_score = (grade(cell["points"], False, stderr, event.get("visible_result"))
                             if event.get("hidden_failed") else score)
            if forged_state or restored_badly:
                score = visible_score = 0.0
            event.update(points=cell["points"], score=score, visible_score=visible_score,
                         tampered_during=event.get("tampered_during") or
                         (["protected objects (identity check)"] if forged_state else []))
            for k in ("digest_before", "digest_after", "result", "visible_result"):
                event.pop(k, None)
            pending = event
        else:
            emit(**event)
    status = _reap(pid, timeout, isolated)
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


def _check_in_server(cell: dict, trusted: dict, send, replies: wire.LineReader, timeout: float,
                     beat) -> dict:
    """Run a test cell here, the student's names and calls answered by the child (checker.py);
    the verdict's part of the cell's event. The child's own reply follows (read by _judge)."""
    start = time.monotonic()
    channel = checker.ChildChannel(send, lambda wait_s: _read_line(replies, wait_s, beat),
                                   start + timeout, beat)
    out, err = _Capture(), _Capture()
    # The tests students see first, then the hidden ones (never sent to the child): the
    # verdict on the first part is the one nbgrader's kernel, given only that part, can match.
    visible, hidden = checker.split_hidden(cell["source"])
    hidden_failed, visible_value = False, None
    sys.stdout, sys.stderr = out, err
    try:
        failure, value = checker.run_test_cell(visible, trusted, channel, _run_plain)
        visible_value, visible_in_time = value, time.monotonic() - start <= timeout
        if failure is None and hidden.strip():
            failure, value = checker.run_test_cell(hidden, trusted, channel, _run_plain)
            hidden_failed = failure is not None
    finally:
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    timed_out = channel.timed_out or isinstance(failure, checker.CellTimeout)
    if failure is None and time.monotonic() - start > timeout:  # nbgrader would interrupt it
        failure, timed_out = checker.CellTimeout(f"cell ran past {timeout:g} s"), True
        # The visible tests alone (all nbgrader's kernel runs) may have kept to the time.
        hidden_failed = bool(hidden.strip()) and visible_in_time
    channel.end()
    text, visible_text = _result_text(value), _result_text(visible_value)
    return {"error": failure is not None, "hidden_failed": hidden_failed,
            "visible_result": visible_text,
            "error_name": type(failure).__name__ if failure is not None else None,
            "error_text": str(failure)[:2000] if failure is not None else None,
            "error_kind": _kind(failure), "timed_out": timed_out, "stderr": err.value()[:2000],
            "stdout_chars": out.total, "result": text, "checked_in": "server"}


def _result_text(value) -> str | None:
    """A test cell's last value as nbgrader would show it (a check returns None)."""
    try:
        return None if value is None else repr(value)[:1000]
    except Exception:  # noqa: BLE001 (the server's own value)
        return "?"


def _with_child_part(verdict: dict, reply: dict) -> dict:
    """A test the server ran: its verdict, with what the server takes from the child's reply,
    the guard's digests and findings, what the student's calls wrote to stderr outside the
    checks' capture (it zeroes the test, as in nbgrader's kernel) and whether one ran out of
    time. The rest of the reply (error, result) is not the child's to say."""
    stderr = reply.get("stderr")
    return {**verdict, "event": "cell", "cell": reply.get("cell"), "kind": "test",
            "digest_before": reply.get("digest_before"), "digest_after": reply.get("digest_after"),
            "tampered_before": _strings(reply.get("tampered_before")),
            "tampered_during": _strings(reply.get("tampered_during")),
            "stderr": (verdict["stderr"] + (stderr if type(stderr) is str else ""))[:2000],
            "timed_out": verdict["timed_out"] or reply.get("timed_out") is True}


def _strings(items) -> list[str]:
    return [str(item)[:200] for item in items[:20]] if type(items) is list else []


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


def _reap(pid: int, timeout: float, isolated: bool = False) -> str | None:
    """Wait briefly for the child; kill it if it lingers. Returns why it ended badly, if so.
    ``isolated``: ``pid`` is the first process of the child's PID namespace (isolation.py): one
    SIGKILL ends every process in it, and it exits with the child's status (a signal N as
    ``SIGNALLED + N``)."""
    deadline = time.monotonic() + 2
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            try:
                if isolated:
                    raise OSError
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            return "killed: it did not finish its cell in time"
        time.sleep(0.01)
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    if isolated and code is not None and code > isolation.SIGNALLED:
        return f"killed by signal {code - isolation.SIGNALLED}"
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    if code == 3:
        return f"a cell ran past {2 * timeout:g} s and ignored the interrupt"
    if code:
        return f"exited with code {code}"
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
          scratch: Path, sandboxed: bool, child_seccomp: int | None = None,
          checks_in_child: bool = False) -> None:
    """The server's loop: read jobs (JSON lines) on stdin, write events on ``results_fd``.
    ``child_seccomp``: a descriptor holding the system-call filter each child loads before any
    student code, in namespaces of its own (isolation.py). ``checks_in_child``: every test runs
    in the child, none in the server, and no namespaces (the sandbox's caps turned off, for
    measuring what they cost)."""
    no_ptrace()
    program = isolation.read_program(child_seccomp)
    # As in nbgrader's own kernels: a setup cell never pip-installs course_lib while grading.
    os.environ["NBGRADER_EXECUTION"] = "autograde"
    dev = dev_entries()  # bwrap's /dev, before any student code could add to it
    shell = _import_checks(check_modules)
    guard = Guard()  # after the imports and IPython's own set-up, before any student code
    # Before the first job is read: every child is a copy of this pristine state (zygote.py).
    zygote = Zygote(_child_main(guard, shell, timeout, mem_mb, scratch), fork_child,
                    isolate=sandboxed and not checks_in_child, program=program)

    def emit(**event) -> None:
        wire.write(results_fd, event)

    emit(event="ready")
    for line in sys.stdin:
        if line.strip():
            job = json.loads(line)
            _judge(job, guard, zygote, timeout, emit, scratch, sandboxed, dev,
                   value_only=not checks_in_child)
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
    s.add_argument("--child-seccomp", type=int, default=None,
                   help="a descriptor holding the filter each child loads (isolation.py)")
    s.add_argument("--checks-in-child", action="store_true",
                   help="run every test in the child (for measuring value-only checking)")
    args = parser.parse_args(argv)
    serve(args.fd, args.timeout, args.mem_mb, args.check, args.scratch, args.sandboxed,
          args.child_seccomp, args.checks_in_child)


if __name__ == "__main__":
    main()
