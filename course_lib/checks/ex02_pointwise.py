"""Checks for exercise 2, pointwise (1x1) convolution.

References are PyTorch's own convolution (bound at import, see ``course_lib.checks``), real
``nn.Conv2d`` layers and ``FlopCounterMode`` measurements; the strided-1x1 questions are checked
against :func:`course_lib.pointwise.input_positions_used`, which measures the pixels a real layer
reads. Known wrong answers (``reshape`` instead of ``permute``, a forgotten bias, FLOPs for MACs,
the input size for a strided output) get a targeted hint.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.checks import (COUNT_ADVICE, REFERENCE, as_int, as_number, call_student,
                               course_references, describe_call, expect_close, expect_int,
                               expect_tensor, fail, named_mistakes, passed, refusing, run_probe,
                               tensors_match, value_only)
from course_lib.pointwise import input_positions_used

VISIBLE_SEED = 202
# (in_channels, out_channels, bias) for part 3a
PARAM_CASES = [(256, 64, True), (64, 256, False), (3, 5, True), (17, 1, False)]
# (in_channels, out_channels, out_h, out_w) for part 3b: the OUTPUT size, as in every counting
# function of the course (conv_macs, depthwise_macs, separable_macs)
MACS_CASES = [(256, 64, 56, 56), (64, 128, 28, 28), (32, 16, 4, 4), (5, 9, 5, 4), (3, 4, 5, 3)]
# Part 4's questions (layers the chapter does not show: it works with stride 2 on 7x7 and 56x56)
READ_FRACTION = dict(size=45, stride=3)          # read_fraction
READ_POSITIONS = dict(size=17, stride=3)         # read_positions
MACS_RATIO = dict(in_channels=48, out_channels=96, size=29, stride=2)   # macs_ratio


def pointwise_cases(seed: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor,
                                                         torch.Tensor | None]]:
    """Random (x, weight (M, C, 1, 1), bias or None) with C >= 2 and H != W, so that a
    reshape-for-permute mix-up or a swapped H/W cannot pass by luck. The first case has a bias."""
    g = torch.Generator().manual_seed(seed)
    cases = []
    for i in range(count):
        n = int(torch.randint(1, 3, (1,), generator=g))
        c = int(torch.randint(2, 9, (1,), generator=g))
        m = int(torch.randint(1, 9, (1,), generator=g))
        h = int(torch.randint(2, 10, (1,), generator=g))
        w = h + int(torch.randint(1, 4, (1,), generator=g))
        x = torch.randn(n, c, h, w, generator=g)
        weight = torch.randn(m, c, 1, 1, generator=g)
        bias = torch.randn(m, generator=g) if i % 2 == 0 else None
        cases.append((x, weight, bias))
    return cases


@value_only
def check_pointwise_matmul(pointwise_matmul: Callable, seed: int = VISIBLE_SEED,
                           count: int = 5) -> None:
    """Part 1: ``pointwise_matmul(x, weight, bias=None)`` equals ``F.conv2d`` with a 1x1 kernel,
    computed without any convolution (refused at the dispatcher while it runs); ``count`` random
    cases from ``seed``."""
    cases = pointwise_cases(seed, count)
    advice = ("pointwise_matmul must be your own matrix multiply (@, torch.matmul or "
              "torch.einsum over the channel axis): it may call neither a convolution (F.conv2d, "
              "torch.conv2d, nn.Conv2d, torch.ops.aten.convolution) nor course_lib.pointwise's "
              "functions (pointwise_as_matmul, ...), which the check compares against.")
    with refusing(advice, convolutions=True, references=course_references("pointwise", "conv")):
        answers = [call_student(pointwise_matmul, x, weight, bias, name="pointwise_matmul")
                   for x, weight, bias in cases]
    for (x, weight, bias), got in zip(cases, answers):
        call = describe_call("pointwise_matmul", (x, weight, bias))
        expected = REFERENCE["conv2d"](x, weight, bias)
        if bias is not None and not tensors_match(got, expected) and tensors_match(got, REFERENCE["conv2d"](x, weight)):
            fail(f"{call}: the values lack the bias; add bias[m] to every pixel of output "
                 f"channel m (reshape it to (1, M, 1, 1) to broadcast).")
        expect_tensor(got, expected, call)
    passed(f"pointwise_matmul matches a 1x1 F.conv2d on {len(cases)} random cases.")


def _pixel_rows_by_reshape(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                           permute_back: bool) -> torch.Tensor:
    """What a ``reshape`` instead of a ``permute`` computes (the bug of part 2): rows of C numbers
    taken in memory order, i.e. runs of one channel's pixels. With ``permute_back`` the input side
    is right and only the output is reshaped wrongly."""
    n, c, h, w = x.shape
    matrix = weight[:, :, 0, 0]
    if permute_back:   # input rows are right (true pixels), output reshaped from (N, H, W, M)
        rows = torch.einsum("nchw,mc->nhwm", x, matrix)
    else:
        rows = torch.einsum("npc,mc->npm", x.reshape(n, h * w, c), matrix)
    if bias is not None:
        rows = rows + bias
    return rows.reshape(n, -1, h, w)


def _with_a_linear(pointwise_via_linear: Callable, x: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor | None) -> tuple[Any, bool]:
    """The student's half of :func:`check_pointwise_via_linear`, run where the function lives
    (in the re-check, in the student's process: :func:`run_probe`): an ``nn.Linear`` holding
    ``weight`` and ``bias``, given to the function; its result, and whether it called it."""
    m, c = weight.shape[:2]
    linear = nn.Linear(c, m, bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight[:, :, 0, 0])
        if bias is not None:
            linear.bias.copy_(bias)
    calls = []
    hook = linear.register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.no_grad():
            got = call_student(pointwise_via_linear, x, linear, name="pointwise_via_linear")
    finally:
        hook.remove()
    return got, bool(calls)


@value_only
def check_pointwise_via_linear(pointwise_via_linear: Callable, seed: int = VISIBLE_SEED + 1,
                               count: int = 5) -> None:
    """Part 2 (find and fix the bug): ``pointwise_via_linear(x, linear)`` applies an
    ``nn.Linear(C, M)`` to every pixel, i.e. equals a 1x1 conv holding the same numbers. It must
    call ``linear`` itself; convolutions refuse while it runs."""
    cases = pointwise_cases(seed, count)
    advice = ("pointwise_via_linear must use the given `linear` (call it on a tensor whose last axis "
              "holds a pixel's C channels), not a convolution.")
    answers = []
    for x, weight, bias in cases:
        with refusing(advice, convolutions=True, references=course_references("pointwise")):
            answers.append(run_probe(_with_a_linear, pointwise_via_linear, x, weight, bias,
                                     name="pointwise_via_linear"))
    for (x, weight, bias), (got, used_linear) in zip(cases, answers):
        m, c = weight.shape[:2]
        call = (f"pointwise_via_linear(<tensor of shape {tuple(x.shape)}>, "
                f"nn.Linear({c}, {m}, bias={bias is not None}))")
        if not used_linear:
            fail(f"{call} never called `linear`: {advice}")
        expected = REFERENCE["conv2d"](x, weight, bias)
        right = tensors_match(got, expected)
        if not right and tensors_match(got, _pixel_rows_by_reshape(x, weight, bias, False)):
            fail(f"{call}: this is still the buggy result. x.reshape(N, H*W, C) does not move "
                 f"the channel axis: each row it makes holds C neighbouring numbers of ONE "
                 f"channel. Use x.permute(0, 2, 3, 1) to get one row of C channels per pixel.")
        if not right and tensors_match(got, _pixel_rows_by_reshape(x, weight, bias, True)):
            fail(f"{call}: the input side is fixed, but the output (N, H, W, M) is reshaped to "
                 f"(N, M, H, W); move the channel axis back with .permute(0, 3, 1, 2).")
        expect_tensor(got, expected, call)
    passed(f"pointwise_via_linear equals a 1x1 convolution on {len(cases)} random cases.")


@value_only
def check_pointwise_params(pointwise_params: Callable,
                           cases: Sequence[tuple[int, int, bool]] = PARAM_CASES) -> None:
    """Part 3a: ``pointwise_params(in_channels, out_channels, bias=True)`` against nn.Conv2d;
    cases are (in_channels, out_channels, bias)."""
    with refusing(COUNT_ADVICE, references=course_references("costs", "pointwise")):
        answers = [call_student(pointwise_params, *case, name="pointwise_params")
                   for case in cases]
    for (c, m, bias), got in zip(cases, answers):
        expected = sum(p.numel() for p in nn.Conv2d(c, m, 1, bias=bias, device="meta").parameters())
        hints = {c + m + (m if bias else 0): "the weight is a C x M matrix: multiply, do not add.",
                 c * m + (0 if bias else m): "count the bias (one per output channel) only when "
                                             "bias=True.",
                 c * m * 9 + (m if bias else 0): "a pointwise kernel is 1 x 1, not 3 x 3."}
        expect_int(got, expected, describe_call("pointwise_params", (c, m, bias)), hints)
    passed(f"pointwise_params matches nn.Conv2d(C, M, 1) on {len(cases)} layers.")


@value_only
def check_pointwise_macs(pointwise_macs: Callable,
                         cases: Sequence[tuple[int, int, int, int]] = MACS_CASES) -> None:
    """Part 3b: ``pointwise_macs(in_channels, out_channels, out_h, out_w)`` (the output size)
    against a FlopCounterMode measurement of a real 1x1 conv (FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    with refusing(COUNT_ADVICE, references=course_references("costs", "pointwise")):
        answers = [call_student(pointwise_macs, *case, name="pointwise_macs") for case in cases]
    for (c, m, h, w), got in zip(cases, answers):
        x = torch.zeros(1, c, h, w, device="meta")
        with FlopCounterMode(display=False) as counter:
            REFERENCE["conv2d"](x, torch.zeros(m, c, 1, 1, device="meta"))
        expected = counter.get_total_flops() // 2
        hints = named_mistakes([
            (2 * expected, "FLOPs count a multiply and an add separately; a MAC is one "
                           "multiply-add, so do not double."),
            (9 * expected, "a pointwise kernel is 1 x 1, not 3 x 3."),
            (c * m, "that is the number of weights; each is used at every output position.")])
        expect_int(got, expected, describe_call("pointwise_macs", (c, m, h, w)), hints)
    passed(f"pointwise_macs matches a measured FlopCounterMode count on {len(cases)} layers.")


@value_only
def check_pointwise_costs(pointwise_params: Callable, pointwise_macs: Callable,
                          param_cases: Sequence[tuple[int, int, bool]] = PARAM_CASES,
                          macs_cases: Sequence[tuple[int, int, int, int]] = MACS_CASES) -> None:
    """Part 3: both counting functions in one test."""
    check_pointwise_params(pointwise_params, param_cases)
    check_pointwise_macs(pointwise_macs, macs_cases)


def _read_mask(size: int, stride: int) -> torch.Tensor:
    """Which pixels of a size x size input a 1x1 conv with ``stride`` reads (measured)."""
    return input_positions_used(nn.Conv2d(2, 2, 1, stride=stride), (1, 2, size, size))


@value_only
def check_strided_answers(read_fraction: object, read_positions: object,
                          macs_ratio: object) -> None:
    """Part 4, by number, each measured on a real layer:
    ``read_fraction``: share of the input of :data:`READ_FRACTION` read by a strided 1x1 conv;
    ``read_positions``: input positions of :data:`READ_POSITIONS` it reads;
    ``macs_ratio``: MACs of the 1x1 conv of :data:`MACS_RATIO` with stride 1 over the same conv
    with its stride."""
    from course_lib.costs import measure_macs

    # The answers as plain numbers first; the expected values only after.
    fraction = as_number(read_fraction, "read_fraction")
    read = as_int(read_positions, "read_positions")
    ratio = as_number(macs_ratio, "macs_ratio")

    size, stride = READ_FRACTION["size"], READ_FRACTION["stride"]
    expected_fraction = _read_mask(size, stride).float().mean().item()
    expect_close(fraction, expected_fraction, "read_fraction", hints={
        1 - expected_fraction: "that is the share DISCARDED. The question asks for the share of "
                               "input positions that are read.",
        100 * expected_fraction: "give a fraction between 0 and 1, not a percentage."})

    size, stride = READ_POSITIONS["size"], READ_POSITIONS["stride"]
    expected_read = int(_read_mask(size, stride).sum())
    expect_int(read, expected_read, "read_positions", named_mistakes([
        ((size // stride) ** 2, f"a {size}-pixel row gives ceil({size}/{stride}) outputs with "
                                f"stride {stride}, not floor: the last read pixel need not be "
                                f"followed by a full stride."),
        (size // stride, "count pixels in 2-D (rows read x columns read)."),
        (size * size // (stride * stride), f"count whole pixels (rows read x columns read), not "
                                           f"{size * size} / {stride * stride}.")]))

    c, m, size, stride = (MACS_RATIO[k] for k in ("in_channels", "out_channels", "size",
                                                  "stride"))
    x = torch.zeros(1, c, size, size, device="meta")   # meta: shapes and counts only
    dense = measure_macs(nn.Conv2d(c, m, 1, device="meta"), x)
    strided = measure_macs(nn.Conv2d(c, m, 1, stride=stride, device="meta"), x)
    expect_close(ratio, dense / strided, "macs_ratio", rel=1e-4, hints={
        strided / dense: "you divided the other way round; the question asks stride-1 MACs "
                         "divided by strided MACs (a number > 1).",
        float(stride * stride): f"the strided output is ceil({size}/{stride}) pixels wide, not "
                                f"{size}/{stride}: the ratio is not exactly stride^2 here."})
    passed(f"a strided 1x1 conv reads {expected_fraction:.1%} of the first input, "
           f"{expected_read} pixels of the second, and costs {dense / strided:.3f}x fewer MACs "
           f"than stride 1.")
