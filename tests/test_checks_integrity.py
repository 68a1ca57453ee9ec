"""What every exercise check promises, tested across exercises:

* no feedback message on a wrong answer lets the expected value be recovered: not the value
  itself, nor its ratio to the student's answer (a "3 times too small" of an answer of 1 IS the
  answer), over the answers 0, 1, -1, 2, answer +- 1, answer x k and / k (k = 2..12) and random
  ones; a factor may appear only inside the hint of a NAMED mistake (FLOPs vs MACs, K^2, ...);
* no frame a student's function can walk (``sys._getframe().f_back``...) holds an expected value
  while it runs, and a number-like object's methods are never called by a check;
* logging handlers that write to stderr are silenced while student code runs;
* the hidden cases (kept in solutions/ only) appear nowhere in course_lib/ or exercises/.
"""
from __future__ import annotations

import ast
import contextlib
import io
import logging
import math
import re
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import course_lib.checks.ex01_standard as ex01
import course_lib.checks.ex02_pointwise as ex02
import course_lib.checks.ex03_depthwise as ex03
import course_lib.checks.ex04_separable as ex04
import course_lib.checks.ex05_xception as ex05
import course_lib.checks.ex06_atrous as ex06
import course_lib.checks.ex08_autoencoder as ex08
from course_lib.checks import CheckFailed
from exercise_helpers import REPO, hidden_blocks

ASSIGNMENTS = sorted(p.name for p in (REPO / "solutions").glob("ex0[1-8]_*"))

# --- student-style correct answers (independent formulas) ----------------------------------------

def out_size(n, k, s=1, p=0, d=1):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


CORRECT = {
    (ex01, "check_output_size"): out_size,
    (ex01, "check_conv_params"): lambda c, m, k, bias=True: k * k * c * m + (m if bias else 0),
    (ex01, "check_conv_macs"): lambda c, m, k, h, w: k * k * c * m * h * w,
    (ex02, "check_pointwise_params"): lambda c, m, bias=True: c * m + (m if bias else 0),
    (ex02, "check_pointwise_macs"): lambda c, m, h, w: c * m * h * w,
    (ex03, "check_depthwise_params"): lambda c, k, d=1, bias=True: k * k * c * d + (c * d if bias
                                                                                   else 0),
    (ex03, "check_depthwise_macs"): lambda c, k, h, w, d=1: k * k * c * d * h * w,
    (ex04, "check_separable_params"): lambda c, m, k, d=1: k * k * c * d + c * d * m,
    (ex04, "check_separable_macs"): lambda c, m, k, h, w, d=1: (k * k * c * d + c * d * m) * h * w,
    (ex05, "check_grouped_params"): lambda c, m, k, g, bias=True: k * k * (c // g) * m
    + (m if bias else 0),
    (ex08, "check_downsampled_size"): lambda n, b: n if b == 0 else out_size(
        CORRECT[(ex08, "check_downsampled_size")](n, b - 1), 3, 2, 1),
    (ex08, "check_transposed_output_size"): lambda n, k, s=1, p=0, op=0: (n - 1) * s - 2 * p + k
    + op,
}

# Distinctive cases (no expected value coincides with an argument or a small number).
SCAN_CASES = {
    (ex01, "check_output_size"): [(61, 4, 3, 2, 2)],
    (ex01, "check_conv_params"): [(37, 53, 5, True)],
    (ex01, "check_conv_macs"): [(11, 23, 3, 17, 9)],
    (ex02, "check_pointwise_params"): [(91, 37, True)],
    (ex02, "check_pointwise_macs"): [(29, 71, 23, 17)],
    (ex03, "check_depthwise_params"): [(48, 5, 3, 17, 23, True)],
    (ex03, "check_depthwise_macs"): [(48, 5, 3, 17, 23, True)],
    (ex04, "check_separable_params"): [(29, 41, 5, 2)],
    (ex04, "check_separable_macs"): [(13, 22, 5, 11, 6, 2)],
    (ex05, "check_grouped_params"): [(24, 36, 3, 6, True)],
    (ex08, "check_downsampled_size"): [(201, 2)],
    (ex08, "check_transposed_output_size"): [(37, 5, 3, 2, 1)],
}


def student_args(module, name, case):
    """The arguments the check passes to the student's function for one case."""
    if (module, name) == (ex03, "check_depthwise_params"):
        c, k, d, _, _, bias = case
        return (c, k, d, bias)
    if (module, name) == (ex03, "check_depthwise_macs"):
        c, k, d, h, w, _ = case
        return (c, k, h, w, d)
    return case


def numbers_in(text: str) -> list[float]:
    return [float(t.replace(",", "")) for t in re.findall(r"\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?",
                                                            text)]


def leaks(message: str, expected: float, allowed: set[float] = frozenset()) -> bool:
    """Whether ``message`` shows ``expected`` (as written, or rounded to 3+ significant digits)."""
    for value in numbers_in(message):
        if value in allowed:
            continue
        if _same_number(value, expected):
            return True
    return False


def _same_number(value: float, target: float) -> bool:
    """``value`` as printed is ``target``: equal, or equal to 3+ significant digits."""
    if value == target:
        return True
    return bool(target and abs(target) >= 0.01 and value != 0
                and math.isclose(value, target, rel_tol=5e-3)
                and len(re.sub(r"\D", "", f"{value:g}").lstrip("0")) >= 3)


_ECHO = re.compile(r"got (-?[\d,]*\.?\d+(?:e[-+]?\d+)?|-?inf|nan)(?=[,.;: ])")


def recoverable(message: str, expected: float, given: float) -> str | None:
    """What in a check's ``message`` about the wrong answer ``given`` lets ``expected`` be
    recovered, or None. The label (before ": got"), which names the question or the case, and the
    echo of the student's own value are set aside; the rest must show neither the expected value
    nor either ratio of expected and given. A hint (after "Hint:") is a named mistake, so it may
    name a factor, but never the expected value."""
    text = message.split(": got ", 1)[1] if ": got " in message else message
    text = _ECHO.sub("got", "got " + text, count=1)
    main, _, hint = text.partition(" Hint: ")
    targets = [expected]
    if given and expected:
        targets += [expected / given, given / expected]
    for value in numbers_in(main):
        for target in targets:
            if _same_number(value, target) and not (target != expected and abs(target) == 1):
                return f"{value:g} (from {target:g})"
    for value in numbers_in(hint):
        if _same_number(value, expected):
            return f"{value:g} in the hint"
    return None


def wrong_inputs(expected: float, whole: bool, seed: int = 0) -> list[float]:
    """The answers every number check is tried with: 0, 1, -1, 2, expected +- 1, expected x k
    and / k for k = 2..12, and random ones (whole numbers where the answer is one)."""
    rng = np.random.default_rng(seed)
    values = [0, 1, -1, 2, expected + 1, expected - 1]
    for k in range(2, 13):
        values += [expected * k, expected // k if whole else expected / k]
    values += list(rng.integers(-10 ** 6, 10 ** 7, 3)) if whole else list(rng.normal(0, 10, 3))
    values = [int(v) if whole else float(v) for v in values]
    return [v for v in dict.fromkeys(values) if v != expected]


def failure(check, *args, **kwargs) -> str:
    with pytest.raises(CheckFailed) as info:
        with contextlib.redirect_stdout(io.StringIO()):
            check(*args, **kwargs)
    return str(info.value)


@pytest.mark.parametrize("key", list(SCAN_CASES), ids=lambda k: f"{k[0].__name__[18:]}.{k[1]}")
def test_function_checks_never_let_the_expected_value_be_recovered(key):
    module, name = key
    cases = SCAN_CASES[key]
    correct = CORRECT[key]
    expected = correct(*student_args(module, name, cases[0]))
    with contextlib.redirect_stdout(io.StringIO()):
        getattr(module, name)(correct, cases=cases)   # the correct formula passes
    for given in wrong_inputs(expected, whole=True):
        msg = failure(getattr(module, name), lambda *a, _v=given: _v, cases=cases)
        found = recoverable(msg, expected, given)
        assert found is None, f"{name}: answer {given} -> {msg!r} shows {found}"
        assert re.search(r"too (high|low)", msg), msg


# By-number checks: (check, correct answers). The answers are independent arithmetic.
def _by_number():
    from course_lib import bench, mobilenet
    import course_lib.checks.ex07_mobilenet as ex07

    macs = {a: mobilenet.total_macs(a) / 1e6 for a in (1.0, 0.75, 0.5, 0.25)}
    intensity = (bench.layer_workload("depthwise", 512, 14, 1, 4).intensity,
                 bench.layer_workload("pointwise", 512, 14, 1, 4).intensity)
    middle = 8 * 3 * (9 * 728 + 728 * 728 + 2 * 728) / 22_855_952
    return [
        (ex01.check_layer_answers, [14, 25 * 48 * 96 + 96, 25 * 48 * 96 * 14 * 14]),
        (ex02.check_strided_answers, [15 ** 2 / 45 ** 2, 36, 29 ** 2 / 15 ** 2]),
        (ex03.check_depthwise_layer, [9 * 144, 9 * 144 * 14 * 14, 144.0]),
        (ex04.check_numbers, [25 * 6 * 24, 25 * 6 + 6 * 24, 1 / (1 / 24 + 1 / 25), 24]),
        (ex05.check_first_cheaper_groups, [12]),
        (ex05.check_extreme_params, [384 * 384 + 9 * 384]),
        (ex05.check_order_difference, [9 * (240 - 96)]),
        (ex05.check_middle_flow_share, [middle]),
        (ex06.check_gridding, [25, 81, 529]),
        (ex06.check_branch_costs, [9 * 512 * 128 * 65 * 65, (9 * 512 + 512 * 128) * 65 * 65]),
        (ex07.check_intensity, list(intensity)),
        (lambda *v: ex07.check_paper_costs(dict(zip(macs, v[:4])), v[4]),
         list(macs.values()) + [mobilenet.total_macs(full_conv=True) / mobilenet.total_macs()]),
    ]


def test_by_number_checks_never_let_the_expected_value_be_recovered():
    for check, right in _by_number():
        with contextlib.redirect_stdout(io.StringIO()):
            check(*right)
        for i, value in enumerate(right):
            whole = isinstance(value, int)
            for given in wrong_inputs(value, whole, seed=i):
                answers = list(right)
                answers[i] = given
                msg = failure(check, *answers)
                found = recoverable(msg, value, given)
                assert found is None, f"{check}: answer {i} = {given!r}: {msg!r} shows {found}"


def test_the_leak_detector_catches_ratios_and_values():
    """The detector itself: the old "N times too small" message is caught, direction is not."""
    assert recoverable("x: got 1, which is 56 times too small (a missing factor of 56?).", 56, 1)
    assert recoverable("x: got 8, which is 2 times too small.", 16, 8)
    assert recoverable("x: got 0.75, which is 3 times too large.", 0.25, 0.75)
    assert recoverable("x: got 3, which is too low. Hint: the answer is 1,296.", 1296, 3)
    assert recoverable("x: got 2, which is too low.", 1296, 2) is None
    assert recoverable("x: got 2,592, which is too high. Hint: that is FLOPs (2 per MAC).",
                       1296, 2592) is None


def test_middle_flow_share_message_hides_the_share():
    msg = failure(ex05.check_middle_flow_share, 0.3)
    from course_lib import xception
    with torch.device("meta"):
        by_flow = xception.params_by_flow(xception.Xception())
    share = by_flow["middle flow"] / sum(by_flow.values())
    assert not leaks(msg, share) and not leaks(msg, 100 * share)


# --- frames ---------------------------------------------------------------------------------------

def _frame_values() -> list:
    """Every value in the locals of every frame above the caller, one level into containers."""
    found = []
    frame = sys._getframe(2)
    while frame is not None:
        for value in list(frame.f_locals.values()):
            found.append(value)
            if isinstance(value, (list, tuple, set)):
                found.extend(list(value)[:1000])
            elif isinstance(value, dict):
                found.extend(list(value.values())[:1000])
        frame = frame.f_back
    return found


def test_a_frame_walking_student_finds_no_expected_number():
    seen = []
    cases = [(37, 53, 5, True), (19, 7, 4, False)]

    def spy(c, m, k, bias=True):
        seen.extend(v for v in _frame_values() if type(v) is int)
        return k * k * c * m + (m if bias else 0)

    with contextlib.redirect_stdout(io.StringIO()):
        ex01.check_conv_params(spy, cases=cases)
    expected = {k * k * c * m + (m if b else 0) for c, m, k, b in cases}
    assert seen and not expected & set(seen)


def test_a_frame_walking_student_finds_no_expected_tensor():
    seen = []
    own = ex01.conv_cases(5, 4, rectangular=True)

    def spy(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1):
        seen.extend(v for v in _frame_values() if isinstance(v, torch.Tensor))
        n, _, h, wd = x.shape
        cols = F.unfold(x, w.shape[-2:], dilation=dilation, padding=padding, stride=stride)
        cols = cols.reshape(n, groups, -1, cols.shape[-1])
        out = torch.einsum("gmk,ngkl->ngml", w.reshape(groups, w.shape[0] // groups, -1), cols)
        oh = out_size(h, w.shape[-2], stride, padding, dilation)
        out = out.reshape(n, w.shape[0], oh, -1)
        return out if bias is None else out + bias.view(1, -1, 1, 1)

    with contextlib.redirect_stdout(io.StringIO()):
        ex01.check_conv2d_unfold(spy, seed=5, count=4)
    expected = [ex01.REFERENCE["conv2d"](c.x, c.weight, **c.kwargs()) for c in own]
    assert seen
    for tensor in seen:
        assert not any(tensor.shape == e.shape and torch.allclose(tensor, e) for e in expected)


class SneakyInt(int):
    """A number whose methods walk the frames (they must never run inside a check)."""
    calls: list = []

    def _spy(self, *args):
        SneakyInt.calls.append(_frame_values())
        return int.__int__(self)

    __int__ = __index__ = __float__ = _spy

    def __eq__(self, other):
        SneakyInt.calls.append(_frame_values())
        return True

    __hash__ = int.__hash__


def test_number_answers_are_read_without_running_student_methods():
    SneakyInt.calls.clear()
    msg = failure(ex01.check_layer_answers, SneakyInt(55), SneakyInt(1), SneakyInt(2))
    assert "layer_out_size" in msg and SneakyInt.calls == []


# --- logging --------------------------------------------------------------------------------------

def test_logging_to_stderr_inside_student_code_is_silenced():
    """A student's logging handler keeps the stderr it was created with; quiet() must point it
    elsewhere while student code runs, and restore it afterwards."""
    stderr = io.StringIO()
    handler = logging.StreamHandler(stderr)
    handler.name = "stderr"
    logger = logging.getLogger("a_students_solution")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    stderr.name = "<stderr>"   # what sys.stderr calls itself
    try:
        def logged(c, m, k, bias=True):
            logger.info("counting %d %d %d", c, m, k)
            return k * k * c * m + (m if bias else 0)
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            ex01.check_conv_params(logged)
        assert stderr.getvalue() == ""
        assert handler.stream is stderr
        logger.info("after the check")
        assert "after the check" in stderr.getvalue()
    finally:
        logger.removeHandler(handler)


# --- hidden cases stay hidden ------------------------------------------------------------------

def _hidden_parameters(assignment: str) -> list[str]:
    """What must not leak: each case tuple / list of a hidden call (as written, spaces removed),
    each seed (an int >= 1000) and each float."""
    secrets = []
    for block in hidden_blocks(assignment):
        for node in ast.walk(ast.parse(block)):
            if not isinstance(node, ast.keyword):
                continue
            value = ast.literal_eval(node.value)
            if isinstance(value, (list, tuple)):
                for item in value:
                    if isinstance(item, (list, tuple)):
                        secrets.append(repr(tuple(item) if isinstance(item, tuple) else item))
                if all(isinstance(v, (int, float)) for v in value):
                    secrets.append(repr(list(value)))
            elif isinstance(value, int) and not isinstance(value, bool) and value >= 1000:
                secrets.append(str(value))
            elif isinstance(value, float):
                secrets.append(repr(value))
    return secrets


@pytest.fixture(scope="module")
def released_text() -> str:
    files = list((REPO / "course_lib").rglob("*.py")) + list((REPO / "exercises").rglob("*.ipynb"))
    return "\n".join(p.read_text() for p in files).replace(" ", "").replace("\\n", "")


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_hidden_cases_appear_nowhere_in_course_lib_or_exercises(assignment, released_text):
    secrets = _hidden_parameters(assignment)
    assert secrets, f"{assignment} has no hidden cases"
    for secret in secrets:
        token = secret.replace(" ", "")
        pattern = (r"(?<![\d.])" + re.escape(token) + r"(?![\d])") if token[0].isdigit() \
            else re.escape(token)
        assert not re.search(pattern, released_text), \
            f"{assignment}: the hidden case {secret} is in the released package or exercises"
