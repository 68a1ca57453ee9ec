"""Checks for exercise 1, standard convolution.

Each check takes its cases as arguments: the visible test cells use the defaults below, the hidden
test cells (in ``solutions/`` only) pass their own.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from course_lib.checks import (_REF, as_int, call_student, course_references, describe_call, expect_int,
                               expect_tensor, fail, passed, refusing)
from course_lib.checks.cases import conv_cases

VISIBLE_SEED = 101

# (size, kernel_size, stride, padding, dilation): every argument matters in at least one case, and
# several do not divide evenly (round down).
OUTPUT_SIZE_CASES = [(32, 3, 1, 0, 1), (32, 3, 1, 1, 1), (224, 3, 2, 1, 1), (7, 1, 2, 0, 1),
                     (28, 5, 1, 0, 2), (10, 4, 3, 1, 1), (17, 3, 2, 2, 3), (9, 2, 4, 0, 2)]
# (in_channels, out_channels, kernel_size, bias)
LAYER_CASES = [(3, 16, 3, True), (3, 16, 3, False), (64, 128, 1, True), (7, 5, 5, False),
               (12, 9, 2, True)]
# (in_channels, out_channels, kernel_size, out_h, out_w): square and non-square outputs
MACS_CASES = [(3, 16, 3, 30, 30), (64, 128, 1, 56, 56), (7, 5, 5, 6, 11), (12, 9, 2, 13, 4)]

_COUNTERS = ("conv", "costs")
_COUNT_ADVICE = ("write the formula yourself: course_lib's counters are what the check compares "
                 "against, so calling them is not allowed here.")


def _true_output_size(size: int, kernel_size: int, stride: int, padding: int,
                      dilation: int) -> int:
    """Ask PyTorch itself: run conv2d on an empty-channel input and read the width."""
    x = torch.zeros(1, 1, 1, size, device="meta")
    w = torch.zeros(1, 1, 1, kernel_size, device="meta")
    return _REF["conv2d"](x, w, stride=(1, stride), padding=(0, padding),
                          dilation=(1, dilation)).shape[-1]


def _output_size_hints(size: int, k: int, s: int, p: int, d: int) -> dict[int, str]:
    span = d * (k - 1) + 1
    right = (size + 2 * p - span) // s + 1
    hints = {(size + 2 * p - k) // s + 1: "you ignored the dilation: a dilated kernel spans "
                                          "dilation*(kernel_size-1)+1 pixels.",
             (size - span) // s + 1: "you ignored the padding (it adds 2*padding).",
             (size + p - span) // s + 1: "padding is added on BOTH sides: 2*padding.",
             right - 1: "off by one: the kernel already fits at position 0, so add 1 after "
                        "dividing by the stride.",
             right + 1: "off by one: the kernel spans dilation*(kernel_size-1)+1 pixels, and "
                        "(size + 2*padding - span) // stride + 1 positions fit."}
    exact = (size + 2 * p - span) / s + 1
    if not exact.is_integer():
        hints.setdefault(round(exact), "round down (floor), do not round to nearest.")
        hints.setdefault(-int(-exact // 1), "round down (floor), not up.")
    return hints


def check_output_size(conv_output_size: Callable,
                      cases: Sequence[tuple[int, int, int, int, int]] = OUTPUT_SIZE_CASES) -> None:
    """``conv_output_size(size, kernel_size, stride, padding, dilation)`` against PyTorch; cases
    are (size, kernel_size, stride, padding, dilation)."""
    with refusing(_COUNT_ADVICE, references=course_references(*_COUNTERS)):
        answers = [call_student(conv_output_size, *case, name="conv_output_size")
                   for case in cases]
    for case, got in zip(cases, answers):
        expect_int(got, _true_output_size(*case), describe_call("conv_output_size", case),
                   _output_size_hints(*case))
    passed(f"conv_output_size matches PyTorch on {len(cases)} cases.")


_UNFOLD_ADVICE = ("conv2d_unfold must compute the convolution itself: build it from F.unfold and "
                  "a matrix multiply, without F.conv2d, torch.conv2d, nn.Conv2d, "
                  "torch.ops.aten.convolution or course_lib's conv2d_unfold.")


def check_conv2d_unfold(conv2d_unfold: Callable, seed: int = VISIBLE_SEED, count: int = 6) -> None:
    """``conv2d_unfold(x, weight, bias, stride, padding, dilation, groups)`` against F.conv2d, with
    every convolution refused while it runs; ``count`` random cases from ``seed`` (square and
    rectangular kernels, stride, padding, dilation, groups, with and without bias)."""
    cases = conv_cases(seed, count=count, rectangular=True)
    with refusing(_UNFOLD_ADVICE, convolutions=True,
                  references=course_references("conv", "depthwise", "pointwise", "separable")):
        answers = [call_student(conv2d_unfold, case.x, case.weight, name="conv2d_unfold",
                                **case.kwargs()) for case in cases]
    for case, got in zip(cases, answers):
        call = describe_call("conv2d_unfold", (case.x, case.weight), case.kwargs())
        expected = _REF["conv2d"](case.x, case.weight, **case.kwargs())
        if case.bias is not None and isinstance(got, torch.Tensor) \
                and got.shape == expected.shape and not _close(got, expected):
            no_bias = dict(case.kwargs(), bias=None)
            if _close(got, _REF["conv2d"](case.x, case.weight, **no_bias)):
                fail(f"{call}: the values lack the bias; add bias[m] to every position of output "
                     f"channel m (reshape it to (1, M, 1, 1) to broadcast).")
        if isinstance(got, torch.Tensor) and got.dim() == 4 and got.shape[:2] == expected.shape[:2] \
                and got.shape[2:] != expected.shape[2:]:
            fail(f"{call}: output H x W is {tuple(got.shape[2:])}, expected "
                 f"{tuple(expected.shape[2:])}; compute H_out and W_out separately with your "
                 f"conv_output_size (K_h and K_w may differ).")
        expect_tensor(got, expected, call)
    passed(f"conv2d_unfold matches F.conv2d on {len(cases)} random cases "
           f"(rectangular kernels, stride, padding, dilation, groups).")


def _close(actual: torch.Tensor, other: torch.Tensor) -> bool:
    return (type(actual) is torch.Tensor and actual.shape == other.shape
            and actual.is_floating_point() and actual.device == other.device
            and bool(_REF["allclose"](actual.detach().to(other.dtype), other, atol=1e-4,
                                      rtol=1e-4)))


def check_conv_params(conv_params: Callable,
                      cases: Sequence[tuple[int, int, int, bool]] = LAYER_CASES) -> None:
    """``conv_params(in_channels, out_channels, kernel_size, bias)`` against nn.Conv2d; cases are
    (in_channels, out_channels, kernel_size, bias)."""
    with refusing(_COUNT_ADVICE, references=course_references(*_COUNTERS)):
        answers = [call_student(conv_params, *case, name="conv_params") for case in cases]
    for (c, m, k, bias), got in zip(cases, answers):
        layer = nn.Conv2d(c, m, k, bias=bias, device="meta")  # meta: shapes only, no memory
        expected = sum(p.numel() for p in layer.parameters())
        weights = k * k * c * m
        hints = {weights + m * k * k: "a bias is ONE scalar per output channel, not a K x K "
                                      "matrix.",
                 k * c * m + (m if bias else 0): "the kernel is K x K: multiply by K twice."}
        if bias:
            hints[weights] = "you forgot the bias: one scalar per output channel."
        else:
            hints[weights + m] = "count the bias only when bias=True."
        expect_int(got, expected, describe_call("conv_params", (c, m, k, bias)), hints)
    passed(f"conv_params matches nn.Conv2d on {len(cases)} layers.")


def check_conv_macs(conv_macs: Callable,
                    cases: Sequence[tuple[int, int, int, int, int]] = MACS_CASES) -> None:
    """``conv_macs(in_channels, out_channels, kernel_size, out_h, out_w)`` against the
    FlopCounterMode measurement of a real conv (FLOPs / 2); cases are those arguments."""
    from torch.utils.flop_counter import FlopCounterMode

    with refusing(_COUNT_ADVICE, references=course_references(*_COUNTERS)):
        answers = [call_student(conv_macs, *case, name="conv_macs") for case in cases]
    for (c, m, k, oh, ow), got in zip(cases, answers):
        x = torch.zeros(1, c, oh + k - 1, ow + k - 1, device="meta")
        w = torch.zeros(m, c, k, k, device="meta")
        with FlopCounterMode(display=False) as counter:
            _REF["conv2d"](x, w)
        expected = counter.get_total_flops() // 2
        hints = {2 * expected: "FLOPs count a multiply and an add separately; a MAC is one "
                               "multiply-add, so do not double.",
                 k * k * c * m: "that is the number of weights; each one is used at every "
                                "output position.",
                 k * c * m * oh * ow: "the kernel is K x K: multiply by K twice."}
        expect_int(got, expected, describe_call("conv_macs", (c, m, k, oh, ow)), hints)
    passed(f"conv_macs matches a measured FlopCounterMode count on {len(cases)} layers.")


def check_vgg_layer(out_size: object, params: object, macs: object) -> None:
    """Part 5: a 3x3, 128->256 conv, padding 1, on 56x56, with bias - measured on a real layer."""
    from torch.utils.flop_counter import FlopCounterMode

    # The student's answers first, as plain numbers; the expected values only after.
    answers = (as_int(out_size, "vgg_out_size"), as_int(params, "vgg_params"),
               as_int(macs, "vgg_macs"))
    layer = nn.Conv2d(128, 256, 3, padding=1, device="meta")
    with FlopCounterMode(display=False) as counter:
        out = layer(torch.zeros(1, 128, 56, 56, device="meta"))
    side = out.shape[-1]
    expect_int(answers[0], side, "vgg_out_size",
               {54: "padding 1 keeps a 3x3 conv's output the same size as its input."})
    expected_params = sum(p.numel() for p in layer.parameters())
    expect_int(answers[1], expected_params, "vgg_params",
               {expected_params - 256: "include the bias (256 numbers).",
                expected_params - 256 + 256 * 9: "the bias is one number per output channel."})
    expected_macs = counter.get_total_flops() // 2
    expect_int(answers[2], expected_macs, "vgg_macs",
               {2 * expected_macs: "that is FLOPs (2 per MAC); count multiply-adds once.",
                128 * 256 * 9 * 54 * 54: "the output is as large as the input (padding 1).",
                expected_macs + 256 * side * side: "ignore the bias additions."})
    passed(f"{side}x{side} output, {expected_params:,} parameters, {expected_macs:,} MACs.")
