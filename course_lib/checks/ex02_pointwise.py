"""Checks for exercise 2, pointwise (1x1) convolution.

References are PyTorch's own convolution (bound at import, see ``course_lib.checks``), real
``nn.Conv2d`` layers and ``FlopCounterMode`` measurements; the strided-1x1 questions are checked
against :func:`course_lib.pointwise.input_positions_used`, which measures the pixels a real layer
reads. Known wrong answers (``reshape`` instead of ``permute``, a forgotten bias, FLOPs for MACs,
the input size for a strided output) get a targeted hint.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.checks import (_REF, as_int, as_number, call_student, course_references,
                               describe_call, expect_close, expect_int, expect_tensor, fail, passed,
                               refusing)
from course_lib.pointwise import input_positions_used

VISIBLE_SEED = 202
# (in_channels, out_channels, bias) for part 3a
PARAM_CASES = [(256, 64, True), (64, 256, False), (3, 5, True), (17, 1, False)]
# (in_channels, out_channels, height, width, stride) for part 3b: odd sizes and every stride
MACS_CASES = [(256, 64, 56, 56, 1), (64, 128, 56, 56, 2), (32, 16, 7, 7, 2), (5, 9, 13, 10, 3),
              (3, 4, 9, 6, 2)]
_COUNT_ADVICE = ("write the formula yourself: course_lib's counters are what the check compares "
                 "against, so calling them is not allowed here.")


def _same(actual: object, other: torch.Tensor) -> bool:
    """True when ``actual`` is a tensor equal (to float tolerance) to ``other``."""
    return (isinstance(actual, torch.Tensor) and actual.shape == other.shape
            and actual.is_floating_point()
            and bool(_REF["allclose"](actual.detach().to(other.dtype), other, atol=1e-4,
                                      rtol=1e-4)))


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


def check_pointwise_matmul(pointwise_matmul: Callable, seed: int = VISIBLE_SEED,
                           count: int = 5) -> None:
    """Part 1: ``pointwise_matmul(x, weight, bias=None)`` equals ``F.conv2d`` with a 1x1 kernel,
    computed without any convolution (refused at the dispatcher while it runs); ``count`` random
    cases from ``seed``."""
    cases = pointwise_cases(seed, count)
    advice = ("pointwise_matmul must not call a convolution (F.conv2d, torch.conv2d, nn.Conv2d, "
              "torch.ops.aten.convolution, course_lib's pointwise layers): write it as a matrix "
              "multiply (@, torch.matmul or torch.einsum) over the channel axis.")
    with refusing(advice, convolutions=True, references=course_references("pointwise", "conv")):
        answers = [call_student(pointwise_matmul, x, weight, bias, name="pointwise_matmul")
                   for x, weight, bias in cases]
    for (x, weight, bias), got in zip(cases, answers):
        call = describe_call("pointwise_matmul", (x, weight, bias))
        expected = _REF["conv2d"](x, weight, bias)
        if bias is not None and not _same(got, expected) and _same(got, _REF["conv2d"](x, weight)):
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
        m, c = weight.shape[:2]
        linear = nn.Linear(c, m, bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(weight[:, :, 0, 0])
            if bias is not None:
                linear.bias.copy_(bias)
        calls = []
        hook = linear.register_forward_hook(lambda *args: calls.append(1))
        try:
            with torch.no_grad(), refusing(advice, convolutions=True,
                                           references=course_references("pointwise")):
                got = call_student(pointwise_via_linear, x, linear, name="pointwise_via_linear")
        finally:
            hook.remove()
        answers.append((got, bool(calls)))
    for (x, weight, bias), (got, used_linear) in zip(cases, answers):
        m, c = weight.shape[:2]
        call = (f"pointwise_via_linear(<tensor of shape {tuple(x.shape)}>, "
                f"nn.Linear({c}, {m}, bias={bias is not None}))")
        if not used_linear:
            fail(f"{call} never called `linear`: {advice}")
        expected = _REF["conv2d"](x, weight, bias)
        right = _same(got, expected)
        if not right and _same(got, _pixel_rows_by_reshape(x, weight, bias, False)):
            fail(f"{call}: this is still the buggy result. x.reshape(N, H*W, C) does not move "
                 f"the channel axis: each row it makes holds C neighbouring numbers of ONE "
                 f"channel. Use x.permute(0, 2, 3, 1) to get one row of C channels per pixel.")
        if not right and _same(got, _pixel_rows_by_reshape(x, weight, bias, True)):
            fail(f"{call}: the input side is fixed, but the output (N, H, W, M) is reshaped to "
                 f"(N, M, H, W); move the channel axis back with .permute(0, 3, 1, 2).")
        expect_tensor(got, expected, call)
    passed(f"pointwise_via_linear equals a 1x1 convolution on {len(cases)} random cases.")


def check_pointwise_params(pointwise_params: Callable,
                           cases: Sequence[tuple[int, int, bool]] = PARAM_CASES) -> None:
    """Part 3a: ``pointwise_params(in_channels, out_channels, bias=True)`` against nn.Conv2d;
    cases are (in_channels, out_channels, bias)."""
    with refusing(_COUNT_ADVICE, references=course_references("costs", "pointwise")):
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


def check_pointwise_macs(pointwise_macs: Callable,
                         cases: Sequence[tuple[int, int, int, int, int]] = MACS_CASES) -> None:
    """Part 3b: ``pointwise_macs(in_channels, out_channels, height, width, stride=1)`` (input
    size) against a FlopCounterMode measurement of a real strided 1x1 conv (FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    with refusing(_COUNT_ADVICE, references=course_references("costs", "pointwise")):
        answers = [call_student(pointwise_macs, *case, name="pointwise_macs") for case in cases]
    for (c, m, h, w, stride), got in zip(cases, answers):
        x = torch.zeros(1, c, h, w, device="meta")
        with FlopCounterMode(display=False) as counter:
            out = _REF["conv2d"](x, torch.zeros(m, c, 1, 1, device="meta"), stride=stride)
        expected = counter.get_total_flops() // 2
        hints = {2 * expected: "FLOPs count a multiply and an add separately; a MAC is one "
                               "multiply-add, so do not double.",
                 c * m * h * w: f"with stride {stride} the output is smaller than the input: "
                                f"count output positions, not input pixels.",
                 c * m * (h // stride) * (w // stride): "round the output size up: a 1x1 kernel "
                                                        "with stride s reads rows 0, s, 2s, ... "
                                                        "so there are ceil(H/s) of them.",
                 c * m: "that is the number of weights; each is used at every output position."}
        args = (c, m, h, w, stride)
        expect_int(got, expected, describe_call("pointwise_macs", args), hints)
    passed(f"pointwise_macs matches a measured FlopCounterMode count on {len(cases)} layers.")


def check_strided_answers(read_fraction: object, read_positions_7x7: object,
                          macs_ratio: object) -> None:
    """Part 4, by number, each measured on a real layer:
    ``read_fraction``: share of a 56x56 input read by a 1x1 conv with stride 2;
    ``read_positions_7x7``: input positions of a 7x7 map read by a 1x1 conv with stride 2;
    ``macs_ratio``: MACs of a stride-1 1x1 conv (64 -> 128, 56x56) over the same conv with
    stride 2."""
    from course_lib.costs import measure_macs

    # The answers as plain numbers first; the expected values only after.
    fraction = as_number(read_fraction, "read_fraction")
    read_7x7 = as_int(read_positions_7x7, "read_positions_7x7")
    ratio = as_number(macs_ratio, "macs_ratio")

    mask = input_positions_used(nn.Conv2d(2, 2, 1, stride=2), (1, 2, 56, 56))
    expected_fraction = mask.float().mean().item()
    expect_close(fraction, expected_fraction, "read_fraction", hints={
        1 - expected_fraction: "that is the share DISCARDED. The question asks for the share of "
                               "input positions that are read.",
        100 * expected_fraction: "give a fraction between 0 and 1, not a percentage."})

    read_7 = int(input_positions_used(nn.Conv2d(2, 2, 1, stride=2), (1, 2, 7, 7)).sum())
    expect_int(read_7x7, read_7, "read_positions_7x7",
               {9: "rows 0, 2, 4 AND 6 are read: with stride 2 a 7-pixel row gives ceil(7/2) "
                   "outputs, not floor(7/2).",
                12: "count whole pixels (rows read x columns read), not 49 / 4."})

    dense = measure_macs(nn.Conv2d(64, 128, 1), (1, 64, 56, 56))
    strided = measure_macs(nn.Conv2d(64, 128, 1, stride=2), (1, 64, 56, 56))
    expect_close(ratio, dense / strided, "macs_ratio", hints={
        strided / dense: "you divided the other way round; the question asks stride-1 MACs "
                         "divided by stride-2 MACs (a number > 1)."})
    passed(f"a stride-2 1x1 conv reads {expected_fraction:.0%} of a 56x56 input, {read_7} pixels "
           f"of a 7x7 one, and costs {dense // strided}x fewer MACs than stride 1.")
