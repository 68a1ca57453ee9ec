"""Student-facing checks shared by the nbgrader test cells and pytest.

Every check either prints one line starting with a tick and returns None, or raises
:class:`CheckFailed` (an AssertionError) whose message names the function, the input case (shapes,
arguments), and what is wrong (type, shape, value and where). Rules they follow:

* nbgrader gives 0 points to a test cell that writes anything to stderr, so student code is run with
  warnings silenced and stderr captured (:func:`call_student`).
* A check's return value is None: a test cell's last expression must not be something student code
  can shape (nbgrader reads a float there as partial credit).
* Reference values come from PyTorch ops bound when this package is imported (``_REF``), before any
  student cell runs, so reassigning ``torch.nn.functional.conv2d`` in a notebook does not change them.

Per-exercise checks live in ``course_lib.checks.exNN_<topic>``.
"""
from __future__ import annotations

import contextlib
import io
import math
import numbers
import warnings
from typing import Any, Callable, Iterator, NoReturn

import torch
import torch.nn.functional as F

# PyTorch references captured at import time (see the module docstring).
_REF = {
    "conv2d": F.conv2d,
    "unfold": F.unfold,
    "allclose": torch.allclose,
}


class CheckFailed(AssertionError):
    """A check found a wrong answer; the message says what to fix."""


def fail(message: str) -> NoReturn:
    raise CheckFailed(message)


def passed(message: str) -> None:
    print(f"\u2714 {message}")


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Silence warnings and capture stderr: in nbgrader any stderr output zeroes a test cell."""
    buffer = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stderr(buffer):
        warnings.simplefilter("ignore")
        yield buffer


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


def call_student(fn: Callable[..., Any], *args: Any, name: str | None = None,
                 **kwargs: Any) -> Any:
    """Call a student's function quietly; turn its exceptions into an actionable message."""
    label = name or getattr(fn, "__name__", "your function")
    if not callable(fn):
        fail(f"{label} should be a function, but it is a {type(fn).__name__}.")
    call = describe_call(label, args, kwargs)
    try:
        with quiet():
            return fn(*args, **kwargs)
    except NotImplementedError:
        fail(f"{label} is not implemented yet: replace `raise NotImplementedError()` with your "
             f"code (failed on {call}).")
    except CheckFailed:
        raise
    except (SystemExit, KeyboardInterrupt) as exc:
        fail(f"{label} raised {type(exc).__name__} on {call}; a function must return its result.")
    except Exception as exc:  # any student bug: report it with the input that triggered it
        fail(f"{label} raised {type(exc).__name__} on {call}: {exc}")


def expect_tensor(actual: Any, expected: torch.Tensor, what: str, atol: float = 1e-4,
                  rtol: float = 1e-4) -> None:
    """Compare a student's tensor to the reference: type, shape, finiteness, then values."""
    if not isinstance(actual, torch.Tensor):
        fail(f"{what}: expected a torch.Tensor of shape {tuple(expected.shape)}, "
             f"got {type(actual).__name__}.")
    if type(actual) is torch.nn.Parameter:
        actual = actual.data
    if type(actual) is not torch.Tensor:
        # A subclass can override arithmetic and comparisons (__torch_function__) to look right.
        fail(f"{what}: expected a plain torch.Tensor, got the subclass {type(actual).__name__}; "
             f"return the tensor itself.")
    if tuple(actual.shape) != tuple(expected.shape):
        fail(f"{what}: wrong shape {tuple(actual.shape)}, expected {tuple(expected.shape)}.")
    if not actual.is_floating_point():
        fail(f"{what}: expected a floating-point tensor, got dtype {actual.dtype}.")
    if actual.device != expected.device:
        fail(f"{what}: result is on {actual.device}, expected {expected.device}.")
    actual = actual.detach().to(expected.dtype)
    if not torch.isfinite(actual).all():
        bad = (~torch.isfinite(actual)).sum().item()
        fail(f"{what}: {bad} value(s) are NaN or infinite.")
    error = (actual - expected).abs()
    tolerance = atol + rtol * expected.abs()
    if (error > tolerance).any():
        worst = int(torch.argmax(error - tolerance))
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), expected.shape))
        fail(f"{what}: wrong values; max abs error {error.max().item():.3g} "
             f"(at index {index}: got {actual[index].item():.5g}, "
             f"expected {expected[index].item():.5g}).")


def as_int(value: Any, what: str) -> int:
    """Accept Python/NumPy/0-d tensor integers (and integral floats); reject anything else."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        fail(f"{what}: expected a whole number, got {type(value).__name__} {value!r}.")
    if isinstance(value, float) and (math.isnan(value) or value != int(value)):
        fail(f"{what}: expected a whole number, got {value!r}.")
    return int(value)


def expect_int(actual: Any, expected: int, what: str, hints: dict[int, str] | None = None) -> None:
    """Compare an integer answer; ``hints`` maps a known wrong value to advice about that mistake."""
    value = as_int(actual, what)
    if value != expected:
        hint = (hints or {}).get(value)
        fail(f"{what}: got {value:,}, expected {expected:,}." + (f" Hint: {hint}" if hint else ""))


def as_number(value: Any, what: str, finite: bool = True) -> float:
    """Accept a real number (Python, NumPy or a one-element tensor) as a float; reject anything
    else, and non-finite values unless ``finite=False``."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        fail(f"{what}: expected a number, got {type(value).__name__} {value!r}.")
    value = float(value)
    if finite and not math.isfinite(value):
        fail(f"{what}: got {value!r}, expected a finite number.")
    return value


def expect_close(actual: Any, expected: float, what: str, rel: float = 1e-6,
                 abs_tol: float = 1e-9) -> None:
    """Compare a real-valued answer with a relative tolerance."""
    value = as_number(actual, what, finite=False)
    if not math.isfinite(value):
        fail(f"{what}: got {value!r}, expected {expected:.6g}.")
    if not math.isclose(value, expected, rel_tol=rel, abs_tol=abs_tol):
        fail(f"{what}: got {value:.6g}, expected {expected:.6g}.")


@contextlib.contextmanager
def forbid(module: Any, attribute: str, advice: str) -> Iterator[None]:
    """Temporarily make ``module.attribute`` raise, to check a student built something themselves
    (e.g. conv2d from unfold, not by calling F.conv2d)."""
    original = getattr(module, attribute)

    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        fail(advice)

    setattr(module, attribute, refuse)
    try:
        yield
    finally:
        setattr(module, attribute, original)


def seeded_generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g
