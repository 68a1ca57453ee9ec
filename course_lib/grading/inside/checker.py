"""The re-check's checker: a test cell run in the server, the student's code in the child.

Why (issue 21, value-only checking): a check that runs in the student's process shares its
interpreter with whatever the student's code installed there: an audit hook that rewrites the test
cell as it is compiled, a ``TorchFunctionMode`` that makes the reference convolution return
constants, a fake checks module, a number whose ``.item()`` reads the expected value from the
check's frame, a function that edits the check's cases in place. Here the test cell runs in the
re-check's server, which never runs student code: the checks module is the server's own, the cases
and hidden tests are only in the server's memory, the expected values are computed there, and the
comparison is made there. The child (the student's process) is asked for two things only, over its
pipes: the value of a name the test cell reads (data comes by value, anything else as a handle:
:mod:`.values`), and a call of one of its objects on copies of the inputs
(:func:`course_lib.checks.call_student`), answered by value.

Which cells: a test cell whose every statement is ``<checks module>.<check>(...)`` with names
and literals as arguments, where the checks module is one a locked cell imported (the gradebook's
source, not the student's) and the check is marked :func:`course_lib.checks.value_only`. Any other
test cell runs in the child as before, under the guard.

Hidden tests: the server runs a cell's visible tests, then its hidden ones (:func:`split_hidden`),
so that its verdict on the visible part can be set against nbgrader's, whose kernel is given only
that part (the worker's gradebook copy holds the release's test cells).
"""
from __future__ import annotations

import ast
import builtins
import json
import secrets
import sys
import time
import types
from collections.abc import Mapping
from typing import Any, Callable

from course_lib.grading.inside import values

MAX_REPLY = 32 << 20   # bytes of one answer from the child (a tensor of up to 16 MiB, in base64)
GRACE_S = 5.0          # beyond the cell's time, for an answer to arrive


class ChildGone(BaseException):
    """The child stopped answering, or broke the protocol: it is ended, like a dead child.
    (A BaseException: no ``except Exception`` in a check may take it for a student's error.)"""


def trusted_modules(cells: list[dict]) -> dict[str, types.ModuleType]:
    """Names that locked cells (their gradebook source) bind to a checks module this process
    imported: ``import course_lib.checks.ex01_standard as checks`` gives ``{"checks": ...}``."""
    found = {}
    for cell in cells:
        if not cell.get("locked") or cell["kind"] == "test":
            continue
        try:
            tree = ast.parse(cell["source"])
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            pairs = []
            if isinstance(node, ast.Import):
                pairs = [(alias.name, alias.asname) for alias in node.names if alias.asname]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                pairs = [(f"{node.module}.{alias.name}", alias.asname or alias.name)
                         for alias in node.names]
            for module, name in pairs:
                if module.startswith("course_lib.checks.") and module in sys.modules:
                    found[name] = sys.modules[module]
    return found


# nbgrader's delimiters of a test cell's hidden tests (ClearHiddenTests' defaults).
BEGIN_HIDDEN, END_HIDDEN = "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"


def split_hidden(source: str) -> tuple[str, str]:
    """A test cell's source as (what students see, its hidden tests), line by line as nbgrader's
    ClearHiddenTests cuts it (the delimiter lines belong to neither). The re-check's server runs
    the first, then the second; nbgrader's kernel is given only the first (see the shard)."""
    visible, hidden, inside = [], [], False
    for line in source.split("\n"):
        if BEGIN_HIDDEN in line:
            inside = True
        elif END_HIDDEN in line:
            inside = False
        else:
            (hidden if inside else visible).append(line)
    return "\n".join(visible), "\n".join(hidden)


def _literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def runs_in_server(source: str, trusted: Mapping[str, types.ModuleType]) -> bool:
    """Whether a test cell is one the server runs (module docstring)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    for statement in tree.body:
        if not (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call)):
            return False
        call = statement.value
        func = call.func
        if not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                and func.value.id in trusted
                and getattr(getattr(trusted[func.value.id], func.attr, None), "value_only",
                            False) is True):
            return False
        arguments = list(call.args) + [k.value for k in call.keywords if k.arg is not None]
        if len(arguments) != len(call.args) + len(call.keywords) or not all(
                isinstance(a, ast.Name) or _literal(a) for a in arguments):
            return False
    return bool(tree.body)


def tests_run_in_server(cells: list[dict]) -> dict[str, bool]:
    """For each test cell of a job (the re-check's cells: id, kind, source, locked): whether the
    server runs it (value-only) rather than the student's process."""
    trusted = trusted_modules(cells)
    return {cell["id"]: runs_in_server(cell["source"], trusted)
            for cell in cells if cell["kind"] == "test"}


class ChildChannel:
    """The server's side of the child's pipes while the server runs a test cell."""

    def __init__(self, send: Callable[[dict], bool], read: Callable[[float], bytes | None],
                 deadline: float, beat: Callable[[], None]) -> None:
        """``send(message)``: False when the child is gone; ``read(wait_s)``: the child's next
        line, None when it ended or said nothing for ``wait_s`` (the server's reader, which says
        "alive" while it waits); ``beat()``: say "alive" (after each answer: decoding a large
        one takes seconds); ``deadline``: when the test cell's time is up."""
        self._send, self._read, self.deadline, self._beat = send, read, deadline, beat
        self.timed_out = False

    def _left(self) -> float:
        """The cell's time left; past it, the cell is interrupted (as nbgrader's kernel)."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.timed_out = True
            raise CellTimeout("the test cell ran past its time")
        return left

    def _ask(self, wait_s: float, **op) -> dict:
        nonce = secrets.token_hex(16)
        if not self._send({"nonce": nonce, **op}):
            raise ChildGone("its process ended")
        raw = self._read(wait_s)
        self._beat()
        if raw is None:
            raise ChildGone("its process ended or hung")
        try:
            answer = json.loads(raw)
        except (ValueError, RecursionError):  # nested past the parser's depth
            raise ChildGone("it wrote to the re-check's channel") from None
        if type(answer) is not dict or answer.get("event") != "answer" \
                or answer.get("nonce") != nonce:
            raise ChildGone("a forged reply on the re-check's channel")
        if answer.get("timed_out") is True:
            self.timed_out = True
        return answer

    def _object(self, message: dict) -> Any:
        from course_lib.checks.remote import StudentFunction, StudentObject

        kind = StudentFunction if message.get("callable") is True else StudentObject
        name = message.get("name")
        return kind(self, message["v"], str(message.get("type"))[:80],
                    name[:80] if type(name) is str else None)

    @staticmethod
    def _handle(value: Any) -> int:
        from course_lib.checks.remote import StudentObject

        if isinstance(value, StudentObject):
            return value._handle
        raise TypeError(f"a {type(value).__name__} cannot be sent to the student's process: "
                        f"only data (numbers, tensors, tuples...) and the student's own objects")

    def _outcome(self, answer: dict) -> tuple[str, Any]:
        category = answer.get("category")
        if category == "returned":
            try:
                return "returned", values.decode(answer.get("value"), self._object)
            except values.BadValue as exc:
                return "raised", ("BadValue", f"its result could not be read ({exc})", "")
        failure = answer.get("failure")
        if category not in ("not-implemented", "check-failed", "exited", "memory", "raised") \
                or type(failure) is not list or len(failure) != 3 \
                or not all(type(part) is str for part in failure):
            return "raised", ("BadValue", "its answer could not be read", "")
        return category, (failure[0][:80], failure[1][:2000], failure[2][:40])

    def lookup(self, name: str) -> Any:
        answer = self._ask(self._left() + GRACE_S, op="lookup", name=name)
        if answer.get("missing") is True:
            raise KeyError(name)
        category, result = self._outcome(answer)
        if category != "returned":
            raise NameError(f"{name} could not be read from the notebook ({result[1]})")
        return result

    def call(self, handle: int, args: tuple, kwargs: dict, refusals: list[dict],
             probe: tuple[str, str] | None = None) -> tuple[str, Any]:
        left = self._left()
        # The child's alarm interrupts the call at ``left``; one that ignores it is ended at
        # twice that (recheck._child), so its answer or its end comes by then.
        answer = self._ask(2 * left + GRACE_S, op="call", handle=handle, refusals=refusals,
                           timeout=left,
                           probe=list(probe) if probe else None,
                           args=values.encode(tuple(args), self._handle),
                           kwargs=values.encode(dict(kwargs), self._handle))
        outcome = self._outcome(answer)
        if outcome[0] == "returned" and answer.get("args_after") is not None:
            try:
                after = values.decode(answer["args_after"], self._object)
            except values.BadValue:
                return "raised", ("BadValue", "its inputs could not be read back", "")
            if not (type(after) is list and len(after) == 2 and type(after[0]) is list
                    and type(after[1]) is dict):
                return "raised", ("BadValue", "its inputs could not be read back", "")
            _write_back([*args, *kwargs.values()], [*after[0], *after[1].values()])
        return outcome

    def end(self) -> None:
        """Tell the child the cell is over (its reply is the cell's, read by the server)."""
        if not self._send({"nonce": secrets.token_hex(16), "op": "end"}):
            raise ChildGone("its process ended")


def _write_back(given: list, left: list) -> None:
    """Put into the check's lists and dicts what the student's function left in its copies
    (data only), so that a check that tests "the input was left as it was" sees the change."""
    for mine, theirs in zip(given, left):
        if type(mine) is list and type(theirs) is list:
            mine[:] = theirs
        elif type(mine) is dict and type(theirs) is dict:
            mine.clear()
            mine.update(theirs)


class CellTimeout(KeyboardInterrupt):
    """The test cell ran past its time (as nbgrader interrupts its kernel)."""


class StudentNames(Mapping):
    """The test cell's names: the locked cells' checks modules (the server's own), else the
    notebook's, read from the child once per cell."""

    def __init__(self, trusted: Mapping[str, types.ModuleType], channel: ChildChannel) -> None:
        self._trusted, self._channel, self._read = trusted, channel, {}

    def __getitem__(self, name: str) -> Any:
        if name in self._trusted:
            return self._trusted[name]
        if name not in self._read:
            self._read[name] = self._channel.lookup(name)
        return self._read[name]

    def __iter__(self):
        return iter(self._trusted)

    def __len__(self) -> int:
        return len(self._trusted)


def run_test_cell(source: str, trusted: Mapping[str, types.ModuleType], channel: ChildChannel,
                  run: Callable[..., Any]) -> tuple[BaseException | None, Any]:
    """Run a test cell's source here (``run(source, globals, locals)``, the re-check's plain
    runner) with the student's names from the child; returns (its failure, its last value).
    :class:`ChildGone` is raised, never returned."""
    namespace = {"__builtins__": builtins, "__name__": "__main__"}
    try:
        return None, run(source, namespace, StudentNames(trusted, channel))
    except ChildGone:
        raise
    except BaseException as exc:  # noqa: BLE001 (a check's failure, or the cell's timeout)
        return exc, None
