"""Student-facing checks shared by the nbgrader test cells and pytest.

Every check either prints one line starting with a tick and returns None, or raises
:class:`CheckFailed` (an AssertionError) whose message names the function, the input case (shapes,
arguments), and what is wrong (type, shape, value and where). Rules they follow:

* nbgrader gives 0 points to a test cell that writes anything to stderr, so student code is run with
  warnings silenced, stderr captured and logging handlers that write to stderr redirected
  (:func:`quiet`, used by :func:`call_student`).
* A check's return value is None: a test cell's last expression must not be something student code
  can shape (nbgrader reads a float there as partial credit).
* Reference values come from PyTorch ops bound when this package is imported (:data:`REFERENCE`),
  before any student cell runs, so reassigning ``torch.nn.functional.conv2d`` in a notebook does not
  change them.
* Expected values are computed only AFTER the student's code has returned: while it runs, no frame
  it can walk (``sys._getframe().f_back``...) holds an answer. Student answers are first turned into
  plain numbers or tensors, then compared.
* Number checks never print the expected value, nor anything it can be recovered from: they say
  too high / too low (direction only, never a bare ratio: "4 times too small" of an answer of 1
  is the answer) and, when the value is one a known mistake gives, name that mistake as a concept
  (FLOPs vs MACs, K^2, stride^2...) (:func:`expect_int`, :func:`expect_close`). Tensor checks may
  show where values differ.
* Public checks take their cases as arguments: visible test cells use the defaults, hidden test
  cells in ``solutions/`` pass their own (seeds, shapes, rates), which the released package never
  contains.
* A check that touches the student's objects only through :func:`call_student` and reads only
  data from them is marked :func:`value_only`: the re-check then runs its test cells in a
  process that never runs student code, the student's functions answering from their own
  process by value (:mod:`.remote`).
* "Implement it" parts run the student's function under :func:`refusing`: PyTorch's convolution
  (caught at the dispatcher, whatever alias reached it) and course_lib's own implementations refuse
  with advice.

Per-exercise checks live in ``course_lib.checks.exNN_<topic>``.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import math
import numbers
import re
import sys
import types
import warnings
from typing import Any, Callable, Iterable, Iterator, NoReturn

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from course_lib.checks.remote import StudentObject, value_only  # noqa: F401 (value_only: API)

# PyTorch references captured at import time (see the module docstring); every check module uses
# these, never the names a notebook can reassign.
REFERENCE = {
    "conv2d": F.conv2d,
    "unfold": F.unfold,
    "allclose": torch.allclose,
}

# The advice when a counting function calls the course's own counters.
COUNT_ADVICE = ("write the formula yourself: course_lib's counters are what the check compares "
                "against, so calling them is not allowed here.")


class CheckFailed(AssertionError):
    """A check found a wrong answer; the message says what to fix, ``kind`` what sort of wrong
    (``wrong`` by default; ``nan``, ``dtype``, ``device``, ``subclass``, ``shape``, ``type``,
    ``not-implemented``, ``raised``, ``exited``...): the grader reports by kind, as data."""

    def __init__(self, message: str, kind: str = "wrong") -> None:
        super().__init__(message)
        self.kind = kind


def fail(message: str, kind: str = "wrong") -> NoReturn:
    raise CheckFailed(message, kind)


def out_of_memory(exc: BaseException) -> bool:
    """Whether an exception is an allocation that failed: Python's MemoryError, or PyTorch's CPU
    allocator, which raises a plain RuntimeError (its message is the only sign)."""
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def passed(message: str) -> None:
    print(f"\u2714 {message}")


def _writes_to_stderr(stream: Any, current: Any) -> bool:
    """True for a stream that ends up on the process's or the notebook's stderr."""
    return (stream is current or stream is sys.__stderr__
            or getattr(stream, "name", None) in ("<stderr>", "stderr"))


def _stderr_handlers() -> list[logging.StreamHandler]:
    """Every logging handler (root and named loggers) that writes to stderr. Such a handler keeps
    the stream it was created with, so redirecting ``sys.stderr`` alone does not silence it."""
    loggers = [logging.getLogger()] + [logger for logger in
                                       list(logging.Logger.manager.loggerDict.values())
                                       if isinstance(logger, logging.Logger)]
    found, current = [], sys.stderr
    for logger in loggers:
        for handler in list(logger.handlers):
            if (isinstance(handler, logging.StreamHandler)
                    and not isinstance(handler, logging.FileHandler)
                    and handler not in found
                    and _writes_to_stderr(getattr(handler, "stream", None), current)):
                found.append(handler)
    return found


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Silence warnings, capture stderr and point stderr logging handlers at the same buffer: in
    nbgrader any stderr output zeroes a test cell, even an honest student's log line."""
    buffer = io.StringIO()
    handlers = _stderr_handlers()
    streams = [handler.stream for handler in handlers]
    with warnings.catch_warnings(), contextlib.redirect_stderr(buffer):
        warnings.simplefilter("ignore")
        for handler in handlers:
            handler.stream = buffer
        try:
            yield buffer
        finally:
            for handler, stream in zip(handlers, streams):
                handler.stream = stream


def describe(value: Any) -> str:
    """Short description of an argument for messages: tensors by shape and dtype."""
    if isinstance(value, torch.Tensor):
        return f"<tensor of shape {tuple(value.shape)}>"
    if isinstance(value, (list, tuple)) and len(value) > 6:
        return f"{type(value).__name__} of {len(value)}"
    return repr(value)


def describe_call(name: str, args: tuple = (), kwargs: dict | None = None) -> str:
    parts = [describe(a) for a in args] + [f"{k}={describe(v)}" for k, v in (kwargs or {}).items()]
    return f"{name}({', '.join(parts)})"


def _fresh(value: Any) -> Any:
    """A copy of a tensor argument, so a student function that writes into its input cannot change
    the case the reference is computed from afterwards."""
    return value.detach().clone() if type(value) is torch.Tensor else value


def student_outcome(fn: Callable[..., Any], args: tuple, kwargs: dict) -> tuple[str, Any]:
    """Run a student's call quietly: ``("returned", value)``, or the category of its failure
    (``not-implemented``, ``check-failed``, ``exited``, ``memory``, ``raised``) and the exception.
    The re-check's child runs this too, for a check in the server (:mod:`.remote`)."""
    try:
        with quiet():
            return "returned", fn(*args, **kwargs)
    except NotImplementedError as exc:
        return "not-implemented", exc
    except CheckFailed as exc:
        return "check-failed", exc
    except (SystemExit, KeyboardInterrupt) as exc:
        return "exited", exc
    except Exception as exc:  # any student bug: reported with the input that triggered it
        return ("memory" if out_of_memory(exc) else "raised"), exc


def fail_call(label: str, call: str, category: str, kind_name: str, text: str,
               kind: str) -> NoReturn:
    """The message for a student's call that did not return (see :func:`student_outcome`)."""
    if category == "not-implemented":
        fail(f"{label} is not implemented yet: replace `raise NotImplementedError()` with your "
             f"code (failed on {call}).", "not-implemented")
    if category == "check-failed":
        fail(text, kind or "wrong")
    if category == "exited":
        fail(f"{label} raised {kind_name} on {call}; a function must return its result.",
             "exited")
    fail(f"{label} raised {kind_name} on {call}: {text}",
         "memory" if category == "memory" else "raised")


def call_student(fn: Callable[..., Any], *args: Any, name: str | None = None,
                 **kwargs: Any) -> Any:
    """Call a student's function quietly, on copies of its tensor arguments; turn its exceptions
    into an actionable message. Call it BEFORE computing the expected value (module docstring).
    A function in the student's process (:class:`.remote.StudentFunction`, in the re-check) is
    called there, with the refusals now in force, on copies sent by value."""
    label = name or getattr(fn, "__name__", "your function")
    if not callable(fn):
        fail(f"{label} should be a function, but it is a {type(fn).__name__}.", "type")
    return _run_where_it_lives(fn, None, args, kwargs, label)


def run_probe(probe: Callable[..., Any], obj: Any, *args: Any, name: str) -> Any:
    """``probe(obj, *args)``: a function of a checks module that reads a student's object (a
    model: its layers, its output, its parameter count) and returns data, run where the object
    lives; in the re-check, an object that stayed in the student's process is probed there, with
    the refusals in force, and the data comes back by value (:mod:`.remote`). The probe's
    failures are reported as :func:`call_student` reports a call's, under ``name``."""
    return _run_where_it_lives(obj, probe, args, {}, name)


def _run_where_it_lives(obj: Any, probe: Callable[..., Any] | None, args: tuple, kwargs: dict,
                        label: str) -> Any:
    """``obj(*args, **kwargs)``, or ``probe(obj, *args)``: in the student's process for an
    object that lives there, else here on copies of the tensor arguments; a failure becomes the
    check's message (:func:`fail_call`)."""
    call = describe_call(label, args, kwargs)
    if isinstance(obj, StudentObject):
        category, result = obj.call_in_student_process(
            args, kwargs, list(_REFUSALS),
            (probe.__module__, probe.__qualname__) if probe is not None else None)
        if category == "returned":
            return result
        fail_call(label, call, category, *result)
    args = tuple(_fresh(a) for a in args)
    kwargs = {k: _fresh(v) for k, v in kwargs.items()}
    category, result = (student_outcome(obj, args, kwargs) if probe is None
                        else student_outcome(probe, (obj, *args), kwargs))
    if category == "returned":
        return result
    if category == "check-failed":
        raise result
    fail_call(label, call, category, type(result).__name__, str(result), "")


def call_each(fn: Callable[..., Any], calls: Iterable[tuple[tuple, dict]],
              name: str | None = None) -> list[Any]:
    """:func:`call_student` on every (args, kwargs) first, before any expected value exists. A
    call that fails is kept as its :class:`CheckFailed` and raised by :func:`answer` when its
    case comes up, so the first case still fails first (with its own hint)."""
    results: list[Any] = []
    for args, kwargs in calls:
        try:
            results.append(call_student(fn, *args, name=name, **kwargs))
        except CheckFailed as exc:
            results.append(exc)
    return results


def answer(result: Any) -> Any:
    """A result of :func:`call_each`: the student's value, or its failure raised now."""
    if isinstance(result, CheckFailed):
        raise result
    return result


def expect_tensor(actual: Any, expected: torch.Tensor, what: str, atol: float = 1e-4,
                  rtol: float = 1e-4) -> None:
    """Compare a student's tensor to the reference: type, shape, finiteness, then values."""
    if not isinstance(actual, torch.Tensor):
        fail(f"{what}: expected a torch.Tensor of shape {tuple(expected.shape)}, "
             f"got {type(actual).__name__}.", "type")
    if type(actual) is torch.nn.Parameter:
        actual = actual.data
    if type(actual) is not torch.Tensor:
        # A subclass can override arithmetic and comparisons (__torch_function__) to look right.
        fail(f"{what}: expected a plain torch.Tensor, got the subclass {type(actual).__name__}; "
             f"return the tensor itself.", "subclass")
    if tuple(actual.shape) != tuple(expected.shape):
        fail(f"{what}: wrong shape {tuple(actual.shape)}, expected {tuple(expected.shape)}.",
             "shape")
    if not actual.is_floating_point():
        fail(f"{what}: expected a floating-point tensor, got dtype {actual.dtype}.", "dtype")
    if actual.device != expected.device:
        fail(f"{what}: result is on {actual.device}, expected {expected.device}.", "device")
    actual = actual.detach().to(expected.dtype)
    if not torch.isfinite(actual).all():
        bad = (~torch.isfinite(actual)).sum().item()
        fail(f"{what}: {bad} value(s) are NaN or infinite.", "nan")
    error = (actual - expected).abs()
    tolerance = atol + rtol * expected.abs()
    if (error > tolerance).any():
        worst = int(torch.argmax(error - tolerance))
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), expected.shape))
        fail(f"{what}: wrong values; max abs error {error.max().item():.3g} "
             f"(at index {index}: got {actual[index].item():.5g}, "
             f"expected {expected[index].item():.5g}).")


def tensors_match(actual: Any, other: torch.Tensor, atol: float = 1e-4,
                  rtol: float = 1e-4) -> bool:
    """True when ``actual`` is a plain floating-point tensor (an ``nn.Parameter`` counts as its
    data) of ``other``'s shape and device whose values equal ``other``'s to the tolerance. The one
    rule every check uses to recognise a result (right, or a known mistake): the type is tested
    with ``type()``, as in :func:`expect_tensor`, so a subclass cannot look equal."""
    if type(actual) is torch.nn.Parameter:
        actual = actual.data
    return (type(actual) is torch.Tensor and actual.shape == other.shape
            and actual.is_floating_point() and actual.device == other.device
            and bool(REFERENCE["allclose"](actual.detach().to(other.dtype), other, atol=atol,
                                           rtol=rtol)))


def plain_number(value: Any) -> Any:
    """A student's number as a plain Python int/float, read without running any method the
    student's class may define: types are tested with ``type()`` (``isinstance`` would consult a
    ``__class__`` property) and ints read with ``int.__int__`` (not an overridden ``__int__``);
    a one-element tensor counts as its number."""
    if type(value) is torch.Tensor and value.numel() == 1:
        return value.item()
    return plain_scalar(value)


def plain_scalar(value: Any) -> Any:
    """A Python or NumPy number (or bool) as the plain type (see :func:`plain_number`); any
    other value as it is."""
    kind = type(value)
    if kind is bool:
        return value
    if issubclass(kind, bool):
        return bool(int.__int__(value))
    if issubclass(kind, int):
        return int.__int__(value)
    if issubclass(kind, float):
        return float.__float__(value)
    if kind.__module__ == "numpy" and (issubclass(kind, numbers.Real)
                                       or kind.__name__ in ("bool_", "bool")):
        return value.item()
    return value


def as_int(value: Any, what: str) -> int:
    """Accept Python/NumPy/0-d tensor integers (and integral floats); reject anything else."""
    value = plain_number(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(f"{what}: expected a whole number, got {type(value).__name__} {value!r}.")
    if isinstance(value, float) and (not math.isfinite(value) or value != int(value)):
        fail(f"{what}: expected a whole number, got {value!r}.")
    return int(value)


def as_number(value: Any, what: str, finite: bool = True) -> float:
    """Accept a real number (Python, NumPy or a one-element tensor) as a float; reject anything
    else, and non-finite values unless ``finite=False``."""
    value = plain_number(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(f"{what}: expected a number, got {type(value).__name__} {value!r}.")
    value = float(value)
    if finite and not math.isfinite(value):
        fail(f"{what}: got {value!r}, expected a finite number.")
    return value


def how_wrong(value: float, expected: float) -> str:
    """The direction of a wrong number, and nothing else: "too high" or "too low". Never a ratio
    ("N times too small"): the ratio of a student's answer of 1 IS the expected value, and any
    other answer times the ratio gives it too. Known mistakes are named through ``hints``
    (:func:`wrong_number`) as concepts, never as a bare factor."""
    if value > expected:
        return "too high"
    return "too low" if value < expected else "right"


def named_mistakes(pairs: Iterable[tuple[float, str]]) -> dict[float, str]:
    """``hints`` for :func:`expect_int` from (wrong value, advice) pairs, leaving out every value
    that two different mistakes give: on such a case the check cannot tell which one was made,
    and naming one would mislead."""
    found: dict[float, str] = {}
    ambiguous = set()
    for value, text in pairs:
        if value in found and found[value] != text:
            ambiguous.add(value)
        found.setdefault(value, text)
    return {value: text for value, text in found.items() if value not in ambiguous}


def wrong_number(what: str, shown: str, value: float, expected: float,
                 hints: dict | None = None, close: Callable[[float, float], bool] | None = None
                 ) -> NoReturn:
    """Fail for a wrong number: say how it is wrong and, when it matches a known wrong value,
    which mistake gives it; never print the right value."""
    hint = next((text for wrong, text in (hints or {}).items()
                 if (close(value, wrong) if close else value == wrong)), None)
    fail(f"{what}: got {shown}, which is {how_wrong(value, expected)}."
         + (f" Hint: {hint}" if hint else ""))


def expect_int(actual: Any, expected: int, what: str, hints: dict[int, str] | None = None) -> None:
    """Compare an integer answer; ``hints`` maps a known wrong value to advice about that mistake.
    The message never contains the expected value."""
    value = as_int(actual, what)
    if value != expected:
        wrong_number(what, f"{value:,}", value, expected,
                     {k: v for k, v in (hints or {}).items() if k != expected})


def expect_close(actual: Any, expected: float, what: str, rel: float = 1e-6,
                 abs_tol: float = 1e-9, hints: dict[float, str] | None = None) -> None:
    """Compare a real-valued answer with a relative tolerance; the message never contains the
    expected value."""
    value = as_number(actual, what, finite=False)
    if not math.isfinite(value):
        fail(f"{what}: got {value!r}, expected a finite number.")
    def same(a: float, b: float) -> bool:
        return math.isclose(a, b, rel_tol=rel, abs_tol=abs_tol)
    if not same(value, expected):
        wrong_number(what, f"{value:.6g}", value, expected,
                     {k: v for k, v in (hints or {}).items() if not same(k, expected)}, same)


# aten operators that compute a convolution: every PyTorch route (F.conv2d, torch.conv2d,
# nn.Conv2d, torch.ops.aten.convolution, torch._C._nn..., an alias bound earlier) ends in one.
_CONVOLUTION_OP = re.compile(r"(^|_)conv(olution)?(\d|_|$)|convolution|conv_depthwise|conv_tbc")


def _groups_of(op_name: str, args: tuple, kwargs: dict) -> int:
    """The ``groups`` argument of an aten convolution call (1 when it cannot be read)."""
    positions = {"convolution": 8, "_convolution": 8, "conv2d": 6, "conv1d": 6, "conv3d": 6,
                 "mkldnn_convolution": 6}
    if "groups" in kwargs:
        return int(kwargs["groups"])
    index = positions.get(op_name)
    return int(args[index]) if index is not None and len(args) > index else 1


class _RefuseConvolutions(TorchDispatchMode):
    """While active, aten convolution operators raise :class:`CheckFailed`: all of them
    (``which="all"``), only grouped ones (``"grouped"``), or all but single-channel ones
    (``"single-channel"``: groups = 1 and a weight with one input channel)."""

    def __init__(self, advice: str, which: str):
        super().__init__()
        self.advice, self.which = advice, which

    def _refused(self, name: str, args: tuple, kwargs: dict) -> bool:
        groups = _groups_of(name, args, kwargs)
        if self.which == "grouped":
            return groups != 1
        if self.which == "single-channel":
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            return groups != 1 or not (isinstance(weight, torch.Tensor) and weight.dim() >= 2
                                       and weight.shape[1] == 1)
        return True

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if _CONVOLUTION_OP.search(name) and self._refused(name, args, kwargs):
            fail(self.advice)
        return func(*args, **kwargs)


class _RefuseNamedPadding(TorchFunctionMode):
    """While active, a convolution called with a padding given by name (``padding="same"``,
    ``nn.Conv2d(..., padding="same")``) raises :class:`CheckFailed`: PyTorch then computes the
    padding that the part asks the student to derive. (A TorchFunctionMode: the dispatcher only
    sees the numbers PyTorch computed.)"""

    def __init__(self, advice: str):
        super().__init__()
        self.advice = advice

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if "conv" in getattr(func, "__name__", ""):
            padding = kwargs.get("padding", args[4] if len(args) > 4 else None)
            if isinstance(padding, str):
                fail(self.advice)
        return func(*args, **kwargs)


def _refuser_code(message: str, freevars: int) -> types.CodeType:
    """Code for a function body that raises CheckFailed(message), with ``freevars`` free variables
    so it can replace the code of a function with a closure (``super()`` makes one)."""
    names = [f"_free{i}" for i in range(freevars)]
    lines = ["def _outer():"] + [f"    {n} = None" for n in names] + [
        "    def _refuse(*args, **kwargs):",
        f"        ({', '.join(names) + (',' if names else '')})",
        "        raise __import__('course_lib.checks', fromlist=['CheckFailed']).CheckFailed("
        f"{message!r})",
        "    return _refuse"]
    namespace: dict = {}
    exec(compile("\n".join(lines), "<course_lib.checks>", "exec"), namespace)
    return namespace["_outer"]().__code__


def _functions_of(reference: Any) -> list[types.FunctionType]:
    """The Python functions behind a reference: a function itself (unwrapped), or a class's own
    methods (``__init__``, ``forward``, ...), so constructing or calling it refuses."""
    if inspect.isclass(reference):
        found = []
        for value in vars(reference).values():
            value = getattr(value, "__func__", value)
            if isinstance(value, types.FunctionType):
                found.append(value)
        return found
    reference = inspect.unwrap(reference)
    return [reference] if isinstance(reference, types.FunctionType) else []


def references_in(*modules: Any) -> list[Any]:
    """Every function and class a course_lib module defines (its own, not what it imports)."""
    found = []
    for module in modules:
        for value in vars(module).values():
            if ((inspect.isfunction(value) or inspect.isclass(value))
                    and getattr(value, "__module__", None) == module.__name__):
                found.append(value)
    return found


@contextlib.contextmanager
def refusing(advice: str, *, convolutions: bool | str = False, named_padding: bool = False,
             references: Iterable[Any] = ()) -> Iterator[None]:
    """While a student's function runs, make the references it must not use refuse with
    ``advice`` (what to do instead).

    * ``convolutions=True``: every PyTorch convolution, caught at the dispatcher (a
      TorchDispatchMode), so ``F.conv2d``, ``torch.conv2d``, ``nn.Conv2d``,
      ``torch.ops.aten.convolution`` or an alias bound before the check all refuse;
      ``convolutions="grouped"`` refuses only convolutions with ``groups > 1``, and
      ``convolutions="single-channel"`` all but those with groups = 1 on ONE input channel (a
      dense convolution with a block-diagonal weight is refused too).
    * ``named_padding=True``: a convolution with ``padding="same"`` / ``"valid"`` refuses.
    * ``references``: course_lib functions and classes (see :func:`references_in`). Their code
      objects are swapped, so every alias and every wrapper of them refuses too.

    Everything is restored on exit: checks compute their own references afterwards. The
    refusals in force are also recorded (:data:`_REFUSALS`), so that a call into the student's
    process (:func:`call_student`) applies them there."""
    references = list(references)
    _REFUSALS.append({"advice": advice, "convolutions": convolutions,
                      "named_padding": named_padding,
                      "references": [[r.__module__, r.__qualname__] for r in references]})
    swapped = []
    try:
        for reference in references:
            for function in _functions_of(reference):
                code = function.__code__
                if code.co_flags & (inspect.CO_GENERATOR | inspect.CO_COROUTINE):
                    continue
                swapped.append((function, code))
                function.__code__ = _refuser_code(advice, len(code.co_freevars))
        with contextlib.ExitStack() as modes:
            if named_padding:
                modes.enter_context(_RefuseNamedPadding(advice))
            if convolutions:
                modes.enter_context(_RefuseConvolutions(
                    advice, convolutions if isinstance(convolutions, str) else "all"))
            yield
    finally:
        _REFUSALS.pop()
        for function, code in reversed(swapped):
            function.__code__ = code


# What refusing() has in force now, innermost last, as data (see refusing and call_student).
_REFUSALS: list[dict] = []


def refusing_as_recorded(specs: list[dict]) -> contextlib.ExitStack:
    """The refusals ``specs`` (recorded by :func:`refusing` in another process) in force here:
    references named by module and name are looked up among this process's course_lib."""
    import importlib

    stack = contextlib.ExitStack()
    for spec in specs:
        references = [getattr(importlib.import_module(module), name)
                      for module, name in spec["references"] if module.startswith("course_lib.")]
        stack.enter_context(refusing(str(spec["advice"]), convolutions=spec["convolutions"],
                                     named_padding=bool(spec["named_padding"]),
                                     references=references))
    return stack


def course_references(*names: str) -> list[Any]:
    """Functions and classes of course_lib modules given by name (``"conv"``, ``"costs"``...),
    for :func:`refusing`."""
    import importlib

    return references_in(*(importlib.import_module(f"course_lib.{name}") for name in names))


def seeded_generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g
