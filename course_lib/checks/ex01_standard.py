"""Checks for exercise 1, standard convolution.

Each check takes its cases as arguments: the visible test cells use the defaults below, the hidden
test cells (in ``solutions/`` only) pass their own.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from course_lib.checks import (COUNT_ADVICE, REFERENCE, as_int, call_student, course_references,
                               describe_call, expect_int, expect_tensor, fail, named_mistakes,
                               passed, refusing, tensors_match, value_only)
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
# Part 3, by number: a layer the chapter does not show (chapter 1 works through a 3x3 VGG layer).
LAYER = dict(in_channels=48, out_channels=96, kernel_size=5, stride=2, padding=2, size=27)


def _true_output_size(size: int, kernel_size: int, stride: int, padding: int,
                      dilation: int) -> int:
    """Ask PyTorch itself: run conv2d on an empty-channel input and read the width."""
    x = torch.zeros(1, 1, 1, size, device="meta")
    w = torch.zeros(1, 1, 1, kernel_size, device="meta")
    return REFERENCE["conv2d"](x, w, stride=(1, stride), padding=(0, padding),
                          dilation=(1, dilation)).shape[-1]


def _output_size_hints(size: int, k: int, s: int, p: int, d: int) -> dict[int, str]:
    span = d * (k - 1) + 1
    right = (size + 2 * p - span) // s + 1
    pairs = [((size + 2 * p - k) // s + 1, "you ignored the dilation: a dilated kernel spans "
                                           "dilation*(kernel_size-1)+1 pixels."),
             ((size - span) // s + 1, "you ignored the padding (it adds 2*padding)."),
             ((size + p - span) // s + 1, "padding is added on BOTH sides: 2*padding."),
             (size + 2 * p - span + 1, "you ignored the stride: the kernel moves `stride` "
                                       "pixels at a time, so divide by it."),
             (right - 1, "off by one: the kernel already fits at position 0, so add 1 after "
                         "dividing by the stride."),
             (right + 1, "off by one: the kernel spans dilation*(kernel_size-1)+1 pixels, and "
                         "(size + 2*padding - span) // stride + 1 positions fit.")]
    exact = (size + 2 * p - span) / s + 1
    if not exact.is_integer():
        pairs += [(round(exact), "round down (floor), do not round to nearest."),
                  (-int(-exact // 1), "round down (floor), not up.")]
    return {v: h for v, h in named_mistakes(pairs).items() if v != right}


@value_only
def check_output_size(conv_output_size: Callable,
                      cases: Sequence[tuple[int, int, int, int, int]] = OUTPUT_SIZE_CASES) -> None:
    """``conv_output_size(size, kernel_size, stride, padding, dilation)`` against PyTorch; cases
    are (size, kernel_size, stride, padding, dilation)."""
    with refusing(COUNT_ADVICE, references=course_references(*_COUNTERS)):
        answers = [call_student(conv_output_size, *case, name="conv_output_size")
                   for case in cases]
    for case, got in zip(cases, answers):
        expect_int(got, _true_output_size(*case), describe_call("conv_output_size", case),
                   _output_size_hints(*case))
    passed(f"conv_output_size matches PyTorch on {len(cases)} cases.")


_UNFOLD_ADVICE = ("conv2d_unfold must compute the convolution itself: build it from F.unfold and "
                  "a matrix multiply, without F.conv2d, torch.conv2d, nn.Conv2d, "
                  "torch.ops.aten.convolution or course_lib's conv2d_unfold.")


@value_only
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
        expected = REFERENCE["conv2d"](case.x, case.weight, **case.kwargs())
        if case.bias is not None and isinstance(got, torch.Tensor) \
                and got.shape == expected.shape and not tensors_match(got, expected):
            no_bias = dict(case.kwargs(), bias=None)
            if tensors_match(got, REFERENCE["conv2d"](case.x, case.weight, **no_bias)):
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


@value_only
def check_conv_params(conv_params: Callable,
                      cases: Sequence[tuple[int, int, int, bool]] = LAYER_CASES) -> None:
    """``conv_params(in_channels, out_channels, kernel_size, bias)`` against nn.Conv2d; cases are
    (in_channels, out_channels, kernel_size, bias)."""
    with refusing(COUNT_ADVICE, references=course_references(*_COUNTERS)):
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


@value_only
def check_conv_macs(conv_macs: Callable,
                    cases: Sequence[tuple[int, int, int, int, int]] = MACS_CASES) -> None:
    """``conv_macs(in_channels, out_channels, kernel_size, out_h, out_w)`` against the
    FlopCounterMode measurement of a real conv (FLOPs / 2); cases are those arguments."""
    from torch.utils.flop_counter import FlopCounterMode

    with refusing(COUNT_ADVICE, references=course_references(*_COUNTERS)):
        answers = [call_student(conv_macs, *case, name="conv_macs") for case in cases]
    for (c, m, k, oh, ow), got in zip(cases, answers):
        x = torch.zeros(1, c, oh + k - 1, ow + k - 1, device="meta")
        w = torch.zeros(m, c, k, k, device="meta")
        with FlopCounterMode(display=False) as counter:
            REFERENCE["conv2d"](x, w)
        expected = counter.get_total_flops() // 2
        hints = {2 * expected: "FLOPs count a multiply and an add separately; a MAC is one "
                               "multiply-add, so do not double.",
                 k * k * c * m: "that is the number of weights; each one is used at every "
                                "output position.",
                 k * c * m * oh * ow: "the kernel is K x K: multiply by K twice."}
        expect_int(got, expected, describe_call("conv_macs", (c, m, k, oh, ow)), hints)
    passed(f"conv_macs matches a measured FlopCounterMode count on {len(cases)} layers.")


@value_only
def check_conv_costs(conv_params: Callable, conv_macs: Callable,
                     param_cases: Sequence[tuple[int, int, int, bool]] = LAYER_CASES,
                     macs_cases: Sequence[tuple[int, int, int, int, int]] = MACS_CASES) -> None:
    """Part 2: both counting functions, one test (:func:`check_conv_params` on ``param_cases``,
    then :func:`check_conv_macs` on ``macs_cases``)."""
    check_conv_params(conv_params, param_cases)
    check_conv_macs(conv_macs, macs_cases)


@value_only
def check_layer_answers(out_size: object, params: object, macs: object) -> None:
    """Part 3, by number: the output size, parameters and mult-adds of :data:`LAYER` (with bias),
    measured on a real layer."""
    from torch.utils.flop_counter import FlopCounterMode

    # The student's answers first, as plain numbers; the expected values only after.
    answers = (as_int(out_size, "layer_out_size"), as_int(params, "layer_params"),
               as_int(macs, "layer_macs"))
    c, m, k, s, p, size = (LAYER[key] for key in ("in_channels", "out_channels", "kernel_size",
                                                  "stride", "padding", "size"))
    layer = nn.Conv2d(c, m, k, stride=s, padding=p, device="meta")
    with FlopCounterMode(display=False) as counter:
        out = layer(torch.zeros(1, c, size, size, device="meta"))
    side = out.shape[-1]
    expect_int(answers[0], side, "layer_out_size", _output_size_hints(size, k, s, p, 1))
    expected_params = sum(p.numel() for p in layer.parameters())
    weights = k * k * c * m
    expect_int(answers[1], expected_params, "layer_params", named_mistakes([
        (weights, "include the bias (one number per output channel)."),
        (weights + m * k * k, "the bias is one number per output channel, not a K x K matrix."),
        (k * c * m + m, "the kernel is K x K: multiply by K twice.")]))
    expected_macs = counter.get_total_flops() // 2
    expect_int(answers[2], expected_macs, "layer_macs", named_mistakes([
        (2 * expected_macs, "that is FLOPs (2 per MAC); count multiply-adds once."),
        (weights * size * size, "the stride shrinks the output: count output positions, not "
                                "input pixels."),
        (expected_macs + m * side * side, "ignore the bias additions."),
        (weights, "that is the number of weights; each one is used at every output "
                  "position.")]))
    passed(f"{side}x{side} output, {expected_params:,} parameters, {expected_macs:,} MACs.")
