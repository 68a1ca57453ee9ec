"""Checks for exercise 2, pointwise (1x1) convolution.

References are PyTorch's own convolution (bound at import, see ``course_lib.checks``), real
``nn.Conv2d`` layers and ``FlopCounterMode`` measurements; the strided-1x1 questions are checked
against :func:`course_lib.pointwise.input_positions_used`, which measures the pixels a real layer
reads. Known wrong answers (``reshape`` instead of ``permute``, a forgotten bias, FLOPs for MACs,
the input size for a strided output) get a targeted hint.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.checks import (_REF, call_student, describe_call, expect_close, expect_int,
                               expect_tensor, fail, forbid, passed)
from course_lib.pointwise import input_positions_used

VISIBLE_SEED, HIDDEN_SEED = 202, 40961


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


def check_pointwise_matmul(pointwise_matmul: Callable, hidden: bool = False) -> None:
    """Part 1: ``pointwise_matmul(x, weight, bias=None)`` equals ``F.conv2d`` with a 1x1 kernel,
    computed without any convolution function."""
    cases = pointwise_cases(HIDDEN_SEED if hidden else VISIBLE_SEED, 8 if hidden else 5)
    advice = ("pointwise_matmul must not call F.conv2d / torch.conv2d: write it as a matrix "
              "multiply (@, torch.matmul or torch.einsum) over the channel axis.")
    for x, weight, bias in cases:
        expected = _REF["conv2d"](x, weight, bias)
        call = describe_call("pointwise_matmul", (x, weight, bias))
        with forbid(F, "conv2d", advice), forbid(torch, "conv2d", advice):
            got = call_student(pointwise_matmul, x, weight, bias, name="pointwise_matmul")
        no_bias = _REF["conv2d"](x, weight)
        if bias is not None and not _same(got, expected) and _same(got, no_bias):
            fail(f"{call}: the values lack the bias; add bias[m] to every pixel of output "
                 f"channel m (reshape it to (1, M, 1, 1) to broadcast).")
        expect_tensor(got, expected, call)
    passed(f"pointwise_matmul matches a 1x1 F.conv2d on {len(cases)} random cases"
           f"{' (hidden)' if hidden else ''}.")


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


def check_pointwise_via_linear(pointwise_via_linear: Callable, hidden: bool = False) -> None:
    """Part 2 (find and fix the bug): ``pointwise_via_linear(x, linear)`` applies an
    ``nn.Linear(C, M)`` to every pixel, i.e. equals a 1x1 conv holding the same numbers."""
    cases = pointwise_cases(HIDDEN_SEED + 1 if hidden else VISIBLE_SEED + 1, 8 if hidden else 5)
    for x, weight, bias in cases:
        m, c = weight.shape[:2]
        linear = nn.Linear(c, m, bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(weight[:, :, 0, 0])
            if bias is not None:
                linear.bias.copy_(bias)
        expected = _REF["conv2d"](x, weight, bias)
        call = (f"pointwise_via_linear(<tensor of shape {tuple(x.shape)}>, "
                f"nn.Linear({c}, {m}, bias={bias is not None}))")
        with torch.no_grad():
            got = call_student(pointwise_via_linear, x, linear, name="pointwise_via_linear")
            right = _same(got, expected)
            if not right and _same(got, _pixel_rows_by_reshape(x, weight, bias, False)):
                fail(f"{call}: this is still the buggy result. x.reshape(N, H*W, C) does not move "
                     f"the channel axis: each row it makes holds C neighbouring numbers of ONE "
                     f"channel. Use x.permute(0, 2, 3, 1) to get one row of C channels per pixel.")
            if not right and _same(got, _pixel_rows_by_reshape(x, weight, bias, True)):
                fail(f"{call}: the input side is fixed, but the output (N, H, W, M) is reshaped to "
                     f"(N, M, H, W); move the channel axis back with .permute(0, 3, 1, 2).")
        expect_tensor(got, expected, call)
    passed(f"pointwise_via_linear equals a 1x1 convolution on {len(cases)} random cases"
           f"{' (hidden)' if hidden else ''}.")


def _cost_cases(hidden: bool) -> list[tuple[int, int, int, int, int, bool]]:
    """(C, M, H, W, stride, bias): fixed textbook layers, then random ones with odd sizes."""
    g = torch.Generator().manual_seed(HIDDEN_SEED + 2 if hidden else VISIBLE_SEED + 2)
    cases = [(256, 64, 56, 56, 1, True), (64, 256, 56, 56, 1, False), (64, 128, 56, 56, 2, True),
             (32, 16, 7, 7, 2, False)]
    for _ in range(6):
        cases.append((int(torch.randint(1, 129, (1,), generator=g)),
                      int(torch.randint(1, 129, (1,), generator=g)),
                      int(torch.randint(1, 40, (1,), generator=g)),
                      int(torch.randint(1, 40, (1,), generator=g)),
                      int(torch.randint(1, 4, (1,), generator=g)),
                      bool(torch.randint(2, (1,), generator=g))))
    return cases


def check_pointwise_params(pointwise_params: Callable, hidden: bool = False) -> None:
    """Part 3a: ``pointwise_params(in_channels, out_channels, bias=True)`` against nn.Conv2d."""
    cases = _cost_cases(hidden)
    for c, m, h, w, _, bias in cases:
        expected = sum(p.numel() for p in nn.Conv2d(c, m, 1, bias=bias, device="meta").parameters())
        hints = {c * m * h * w + (m if bias else 0): "the weights are shared by every pixel: "
                                                     "the image size does not enter.",
                 c + m + (m if bias else 0): "the weight is a C x M matrix: multiply, do not "
                                             "add."}
        hints[c * m + (0 if bias else m)] = ("count the bias (one per output channel) only when "
                                             "bias=True.")
        hints.pop(expected, None)
        expect_int(call_student(pointwise_params, c, m, bias, name="pointwise_params"), expected,
                   describe_call("pointwise_params", (c, m, bias)), hints)
    passed(f"pointwise_params matches nn.Conv2d(C, M, 1) on {len(cases)} layers"
           f"{' (hidden)' if hidden else ''}.")


def check_pointwise_macs(pointwise_macs: Callable, hidden: bool = False) -> None:
    """Part 3b: ``pointwise_macs(in_channels, out_channels, height, width, stride=1)`` (input
    size) against a FlopCounterMode measurement of a real strided 1x1 conv (FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    cases = _cost_cases(hidden)
    for c, m, h, w, stride, _ in cases:
        x = torch.zeros(1, c, h, w, device="meta")
        with FlopCounterMode(display=False) as counter:
            out = _REF["conv2d"](x, torch.zeros(m, c, 1, 1, device="meta"), stride=stride)
        expected = counter.get_total_flops() // 2
        oh, ow = out.shape[-2:]
        hints = {2 * expected: "FLOPs count a multiply and an add separately; a MAC is one "
                               "multiply-add, so do not double.",
                 c * m * h * w: f"with stride {stride} the output is only {oh}x{ow}: count output "
                                f"positions, not input pixels.",
                 c * m * (h // stride) * (w // stride): "round the output size up: a 1x1 kernel "
                                                        "with stride s reads rows 0, s, 2s, ... "
                                                        "so there are ceil(H/s) of them.",
                 c * m: "that is the number of weights; each is used at every output position."}
        hints.pop(expected, None)
        args = (c, m, h, w, stride)
        expect_int(call_student(pointwise_macs, *args, name="pointwise_macs"), expected,
                   describe_call("pointwise_macs", args), hints)
    passed(f"pointwise_macs matches a measured FlopCounterMode count on {len(cases)} layers"
           f"{' (hidden)' if hidden else ''}.")


def check_strided_answers(read_fraction: object, read_positions_7x7: object,
                          macs_ratio: object) -> None:
    """Part 4, by number, each measured on a real layer:
    ``read_fraction``: share of a 56x56 input read by a 1x1 conv with stride 2;
    ``read_positions_7x7``: input positions of a 7x7 map read by a 1x1 conv with stride 2;
    ``macs_ratio``: MACs of a stride-1 1x1 conv (64 -> 128, 56x56) over the same conv with
    stride 2."""
    from course_lib.costs import measure_macs

    mask = input_positions_used(nn.Conv2d(2, 2, 1, stride=2), (1, 2, 56, 56))
    expected_fraction = mask.float().mean().item()
    if _is_about(read_fraction, 1 - expected_fraction):
        fail(f"read_fraction: got {read_fraction}; that is the share DISCARDED. The question asks "
             f"for the share of input positions that are read.")
    if _is_about(read_fraction, 100 * expected_fraction):
        fail("read_fraction: give a fraction between 0 and 1, not a percentage.")
    expect_close(read_fraction, expected_fraction, "read_fraction")

    read_7 = int(input_positions_used(nn.Conv2d(2, 2, 1, stride=2), (1, 2, 7, 7)).sum())
    expect_int(read_positions_7x7, read_7, "read_positions_7x7",
               {9: "rows 0, 2, 4 AND 6 are read: with stride 2 a 7-pixel row gives ceil(7/2) = 4 "
                   "outputs, not 3.",
                12: "count whole pixels: 4 rows x 4 columns, not 49 / 4."})

    dense = measure_macs(nn.Conv2d(64, 128, 1), (1, 64, 56, 56))
    strided = measure_macs(nn.Conv2d(64, 128, 1, stride=2), (1, 64, 56, 56))
    if _is_about(macs_ratio, strided / dense):
        fail("macs_ratio: you divided the other way round; the question asks stride-1 MACs "
             "divided by stride-2 MACs (a number > 1).")
    expect_close(macs_ratio, dense / strided, "macs_ratio")
    passed(f"a stride-2 1x1 conv reads {expected_fraction:.0%} of a 56x56 input, {read_7} pixels "
           f"of a 7x7 one, and costs {dense // strided}x fewer MACs than stride 1.")


def _is_about(value: object, target: float) -> bool:
    """True for a plain number within 1e-9 (relative) of ``target`` (used to spot known wrong
    answers before the generic comparison)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and abs(value - target) <= 1e-9 * max(1.0, abs(target)))
