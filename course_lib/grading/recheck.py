"""Re-check submissions in fresh processes, with the checks protected from student code.

Why: nbgrader runs the student's notebook top to bottom in one kernel, so a student cell can replace
``checks.check_...``, ``course_lib.checks.fail`` or ``torch.allclose`` and every later test cell
passes. The re-check runs the same notebook again, differently:

1. A server process imports PyTorch, IPython and the assignment's checks (``course_lib.checks.*``)
   once, *before any student code*, and takes a :class:`Guard` snapshot of the protected modules
   (everything under ``course_lib``, the public ``torch`` namespaces, ``builtins``, ``math``...).
2. For each submission it forks a child (a fresh process: nothing leaks between students), caps its
   memory (``RLIMIT_AS``), and runs the cells in order in an IPython shell: the student's cells as
   submitted, but every locked cell and every test cell with its source taken from the gradebook
   (passed in by the caller), never from the student's notebook. Deleted test cells are run anyway.
3. Before each test cell the Guard restores every protected function/class/module attribute the
   student replaced, and rebinds the module names the locked setup cell defined (``checks``,
   ``torch``, ...). After the test cell it looks again: a protected object replaced *during* the
   test cell (e.g. by the student's function while the check was calling it) zeroes that cell.
4. A cell gets ``timeout`` seconds (then KeyboardInterrupt, like nbgrader's interrupt; a cell that
   swallows it is killed after a second period). A child that dies (``os._exit``, a signal, the
   memory limit) keeps the scores of the test cells that finished; the rest score 0.

Scores follow nbgrader's rule (``nbgrader.utils.determine_grade``): an error or any stderr output
is 0, a float in [0, points] as the last expression is partial credit, otherwise full points.

Input: a JSON plan (list of jobs, see :func:`run_jobs`); output: one JSON-lines file per job.
Limits: this is not a sandbox. Code can still read or write files, use ``ctypes`` or ``gc`` to reach
objects the Guard does not watch, or fork processes. See book/instructor_guide.md.
"""
from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import signal
import sys
import time
import types
from pathlib import Path

# Modules whose public attributes student code must not replace (plus every course_lib module).
PROTECTED_MODULES = ("torch", "torch.nn", "torch.nn.functional", "torch.linalg", "torch.fft",
                     "torch.testing", "torch.nn.init", "torch.utils.flop_counter", "builtins",
                     "math", "numbers", "numpy", "warnings", "contextlib", "io")
# Classes whose methods student code must not replace.
PROTECTED_CLASSES = ("torch.Tensor", "torch._C.TensorBase", "torch.nn.Module")
# Names IPython itself rebinds in builtins while running cells.
_VOLATILE = {"_", "__", "___", "get_ipython", "display", "__IPYTHON__", "exit", "quit"}
MAX_CAPTURE = 20_000  # characters of a cell's output kept for the report


def _watched(value: object) -> bool:
    """Only objects whose replacement is tampering: functions, classes, modules, containers."""
    return callable(value) or isinstance(value, (types.ModuleType, dict, list))


class Guard:
    """Snapshot of protected namespaces; reports and undoes later replacements."""

    def __init__(self) -> None:
        self.namespaces: dict[str, tuple[object, dict]] = {}
        self.code: dict[str, tuple[types.FunctionType, tuple]] = {}
        self.contents: dict[str, tuple[object, object]] = {}
        self.modules: dict[str, types.ModuleType] = {}
        names = [n for n in list(sys.modules) if n == "course_lib" or n.startswith("course_lib.")]
        for name in list(names) + list(PROTECTED_MODULES):
            module = sys.modules.get(name)
            if module is None:
                continue
            self.modules[name] = module
            self._take(name, module, vars(module))
            if name.startswith("course_lib"):
                self._take_course(name, module)
        for dotted in PROTECTED_CLASSES:
            module_name, _, cls_name = dotted.rpartition(".")
            cls = getattr(sys.modules.get(module_name), cls_name, None)
            if cls is not None:
                self._take(dotted, cls, vars(cls))

    def _take(self, key: str, owner: object, namespace) -> None:
        self.namespaces[key] = (owner, {k: v for k, v in namespace.items()
                                        if k not in _VOLATILE and _watched(v)})

    def _take_course(self, name: str, module: types.ModuleType) -> None:
        """course_lib: also the code of its functions and the contents of its dicts (``_REF``)."""
        for attr, value in vars(module).items():
            if isinstance(value, types.FunctionType) and value.__module__ == name:
                self.code[f"{name}.{attr}"] = (value, (value.__code__, value.__defaults__,
                                                       value.__kwdefaults__))
            elif isinstance(value, dict):
                self.contents[f"{name}.{attr}"] = (value, dict(value))
            elif isinstance(value, list):
                self.contents[f"{name}.{attr}"] = (value, list(value))
            elif isinstance(value, type) and value.__module__ == name:
                self._take(f"{name}.{attr}", value, vars(value))

    def changes(self) -> list[str]:
        """Dotted names of protected objects replaced since the snapshot."""
        changed = [name for name, module in self.modules.items()
                   if sys.modules.get(name) is not module]
        for key, (owner, saved) in self.namespaces.items():
            current = vars(owner)
            changed += [f"{key}.{k}" for k, v in saved.items() if current.get(k) is not v]
            if isinstance(owner, type):  # a method added to a class shadows an inherited one
                changed += [f"{key}.{k}" for k, v in current.items()
                            if k not in saved and k not in _VOLATILE and _watched(v)]
        for key, (fn, saved) in self.code.items():
            if (fn.__code__, fn.__defaults__, fn.__kwdefaults__) != saved:
                changed.append(f"{key} (code)")
        for key, (container, saved) in self.contents.items():
            if isinstance(container, dict):
                same = container.keys() == saved.keys() and all(
                    container[k] is saved[k] for k in saved)
            else:
                same = len(container) == len(saved) and all(
                    a is b for a, b in zip(container, saved))
            if not same:
                changed.append(f"{key} (contents)")
        return changed

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
                for k in [k for k, v in current.items()
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


def _grade(points: float, error: bool, stderr: str, result: object) -> float:
    """nbgrader's determine_grade on the outputs the cell would have had."""
    import nbformat
    from nbgrader.utils import determine_grade

    outputs = []
    if error:
        outputs.append(nbformat.v4.new_output("error", ename="Error", evalue="", traceback=[]))
    if stderr:
        outputs.append(nbformat.v4.new_output("stream", name="stderr", text=stderr))
    if result is not None:
        try:
            text = repr(result)
        except Exception:  # a student object whose repr raises
            text = "?"
        outputs.append(nbformat.v4.new_output("execute_result", data={"text/plain": text},
                                              execution_count=1))
    cell = nbformat.v4.new_code_cell("", metadata={"nbgrader": {
        "grade": True, "solution": False, "points": points, "grade_id": "x"}})
    cell.outputs = outputs
    score, _ = determine_grade(cell)
    return float(score if score is not None else 0.0)


class _Timeout(KeyboardInterrupt):
    """Raised in a cell that ran past its time (like nbgrader's kernel interrupt)."""


def _child(job: dict, timeout: float, log) -> None:
    """Run one submission's cells; write one JSON line per event to ``log``."""
    from IPython.core.interactiveshell import InteractiveShell

    def emit(**event) -> None:
        log.write(json.dumps(event) + "\n")
        log.flush()

    # As in nbgrader's own kernels: a setup cell never pip-installs course_lib while grading.
    os.environ["NBGRADER_EXECUTION"] = "autograde"
    shell = InteractiveShell.instance()
    guard = Guard()  # after IPython's own set-up, before any student code
    protected_names: dict[str, object] = {}
    state = {"cell": None, "strikes": 0}

    def on_alarm(signum, frame):
        state["strikes"] += 1
        state["timed_out"] = True
        if state["strikes"] >= 2:  # the cell swallowed the interrupt: give up on this process
            emit(event="killed", cell=state["cell"], reason=f"cell ran past {2 * timeout:g} s "
                 "and ignored the interrupt")
            os._exit(3)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        raise _Timeout(f"cell ran past {timeout:g} s")

    signal.signal(signal.SIGALRM, on_alarm)
    for cell in job["cells"]:
        state.update(cell=cell["id"], strikes=0, timed_out=False)
        is_test = cell["kind"] == "test"
        tampered_before: list[str] = []
        if is_test:
            tampered_before = guard.changes()
            guard.restore()
            shell.user_ns.update(protected_names)
        emit(event="start", cell=cell["id"])
        out, err = _Capture(), _Capture()
        sys.stdout, sys.stderr = out, err
        timed_out = False
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            result = shell.run_cell(cell["source"], store_history=False)
        except BaseException as exc:  # run_cell catches almost everything; belt and braces
            result = None
            timed_out = isinstance(exc, _Timeout)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        failure = None if result is None else (result.error_before_exec or result.error_in_exec)
        error = result is None or failure is not None
        # The interrupt may surface as another error (a check turns it into CheckFailed).
        timed_out = timed_out or isinstance(failure, _Timeout) or state["timed_out"]
        if cell.get("locked") and not is_test:
            # Module names bound by locked cells (checks, torch, F): rebound before each test.
            protected_names.update({k: v for k, v in shell.user_ns.items()
                                    if isinstance(v, types.ModuleType) and not k.startswith("_")})
        event = {"event": "cell", "cell": cell["id"], "kind": cell["kind"], "error": error,
                 "error_name": type(failure).__name__ if failure is not None else None,
                 "error_text": str(failure)[:2000] if failure is not None else None,
                 "timed_out": timed_out, "stderr": err.value()[:2000],
                 "stdout_chars": out.total}
        if is_test:
            tampered_during = guard.changes()
            guard.restore()
            value = None if result is None else result.result
            score = _grade(cell["points"], error, err.value(), value)
            if tampered_during:
                score = 0.0
            event.update(points=cell["points"], score=score, tampered_before=tampered_before,
                         tampered_during=tampered_during)
        emit(**event)
    emit(event="done")


def _import_checks(modules: list[str]) -> None:
    import torch

    torch.set_num_threads(1)  # forked children must not inherit a started thread pool
    import IPython.core.interactiveshell  # noqa: F401 (imported once, before forking)
    import nbgrader.utils  # noqa: F401
    import numpy  # noqa: F401
    import torch.utils.flop_counter  # noqa: F401
    for name in modules:
        importlib.import_module(name)
    # Warm-up: the first FlopCounterMode use imports ~800 modules (seconds on a busy machine);
    # done once here, not in every child against the cell timeout.
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False):
        torch.nn.functional.conv2d(torch.zeros(1, 1, 3, 3, device="meta"),
                                   torch.zeros(1, 1, 1, 1, device="meta"))


def run_jobs(jobs: list[dict], timeout: float, mem_mb: int | None,
             check_modules: list[str], progress=None) -> None:
    """Run each job in a forked child. A job is ``{"student", "result", "cells": [{"id", "kind":
    "code"|"test", "source", "locked", "points"}]}``; events go to the job's ``result`` file."""
    from course_lib.grading.kernel import apply_limits

    _import_checks(check_modules)
    for job in jobs:
        result = Path(job["result"])
        result.parent.mkdir(parents=True, exist_ok=True)
        with open(result, "w") as log:
            pid = os.fork()
            if pid == 0:  # child: a fresh process for this student
                try:
                    os.setpgid(0, 0)
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, 1)  # C-level floods go nowhere
                    os.dup2(devnull, 2)
                    apply_limits(mem_mb)
                    _child(job, timeout, log)
                finally:
                    os._exit(0)
            budget = timeout * (2 * len(job["cells"]) + 2)
            start, status = time.monotonic(), None
            while status is None:
                done, code = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = code
                elif time.monotonic() - start > budget:
                    os.killpg(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    status = -1
                else:
                    time.sleep(0.02)
            if status != 0:
                if os.WIFSIGNALED(status):
                    why = f"killed by signal {os.WTERMSIG(status)}"
                elif status == -1:
                    why = f"ran past {budget:g} s"
                else:
                    why = f"exited with code {os.WEXITSTATUS(status)}"
                log.write(json.dumps({"event": "exit", "reason": why}) + "\n")
        if progress:
            progress(job["student"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("plan", type=Path)
    args = parser.parse_args(argv)
    plan = json.loads(args.plan.read_text())
    run_jobs(plan["jobs"], plan["timeout"], plan.get("mem_mb"), plan["check_modules"],
             progress=lambda student: print(f"rechecked {student}", flush=True))


if __name__ == "__main__":
    main()
