"""Checks for exercise 3, depthwise convolution.

References: PyTorch's grouped convolution (``groups=C``, bound at import, see
``course_lib.checks``), real layers and ``FlopCounterMode``. The Keras kernel conversion is checked
against TensorFlow's documented channel order (``output[..., c * k + q]`` is filter
``[:, :, c, q]``), written out element by element. Known wrong answers (multiplier-first channel
order, swapped kernel axes, the standard-conv cost formula, FLOPs for MACs) get a targeted hint.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.checks import (COUNT_ADVICE, REFERENCE, as_int, as_number, call_student,
                               course_references, describe_call, expect_close, expect_int,
                               expect_tensor, fail, named_mistakes, passed, refusing,
                               tensors_match, value_only)
from course_lib.checks.cases import conv_cases

VISIBLE_SEED = 303
# Keras-layout kernel shapes (K_h, K_w, C, k): K_h != K_w and k >= 2 in most, one k = 1
KERAS_SHAPES = [(3, 5, 3, 2), (3, 3, 4, 1), (1, 3, 2, 3), (5, 2, 3, 4)]
# (channels, kernel_size, depth_multiplier, out_h, out_w, bias) for part 3
COST_CASES = [(32, 3, 1, 112, 112, False), (64, 3, 1, 56, 56, True), (16, 5, 2, 28, 20, True),
              (7, 2, 3, 9, 13, False), (5, 7, 2, 4, 6, True)]
# Part 4, by number: an inverted-residual-style depthwise layer (chapter 3 works through
# MobileNetV1's first one, 32 channels at 112 x 112, stride 1).
LAYER = dict(channels=144, kernel_size=3, size=28, stride=2, padding=1)


def multiplier_first(t: torch.Tensor, channels: int, axis: int) -> torch.Tensor:
    """Reorder ``axis`` of ``t`` from ``c * k + j`` (the right order) to ``j * C + c``: what a
    multiplier-first channel order produces."""
    size = t.shape[axis]
    split = t.shape[:axis] + (channels, size // channels) + t.shape[axis + 1:]
    return t.reshape(split).transpose(axis, axis + 1).reshape(t.shape)


@value_only
def check_depthwise_conv2d(depthwise_conv2d: Callable, seed: int = VISIBLE_SEED,
                           count: int = 5) -> None:
    """Part 1: ``depthwise_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1)`` with
    ``weight`` (C * k, 1, K, K) equals ``F.conv2d(..., groups=C)``; while it runs, grouped
    convolutions (any route to them) and course_lib's depthwise layers refuse."""
    cases = conv_cases(seed, count=count, depthwise=True)
    advice = ("depthwise_conv2d must call F.conv2d on ONE input channel at a time (a weight of "
              "shape (k, 1, K, K) or (1, 1, K, K)): no grouped convolution (groups > 1), no "
              "dense convolution over all channels (even with a block-diagonal weight), no "
              "course_lib depthwise layer.")
    kwargs = [dict(bias=case.bias, stride=case.stride, padding=case.padding,
                   dilation=case.dilation) for case in cases]
    with refusing(advice, convolutions="single-channel",
                  references=course_references("depthwise", "separable")):
        answers = [call_student(depthwise_conv2d, case.x, case.weight, name="depthwise_conv2d",
                                **kw) for case, kw in zip(cases, kwargs)]
    for case, kw, got in zip(cases, kwargs, answers):
        channels = case.x.shape[1]
        expected = REFERENCE["conv2d"](case.x, case.weight, groups=channels, **kw)
        call = describe_call("depthwise_conv2d", (case.x, case.weight), kw)
        right = tensors_match(got, expected)
        if not right and tensors_match(got, multiplier_first(expected, channels, 1)):
            fail(f"{call}: right values, wrong channel order. Filter j of input channel c is "
                 f"weight[c * k + j] and must land in output channel c * k + j (all k outputs of "
                 f"channel 0 first, then channel 1, ...); you ordered them j * C + c.")
        if not right and case.bias is not None and tensors_match(
                got, REFERENCE["conv2d"](case.x, case.weight, groups=channels, stride=case.stride,
                                    padding=case.padding, dilation=case.dilation)):
            fail(f"{call}: the values lack the bias (one number per output channel).")
        expect_tensor(got, expected, call)
    passed(f"depthwise_conv2d matches F.conv2d(groups=C) on {len(cases)} random cases (depth "
           f"multiplier, stride, padding, dilation).")


def _keras_kernels(shapes: list[tuple[int, int, int, int]], seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for shape in shapes]


def keras_order_reference(kernel: torch.Tensor) -> torch.Tensor:
    """TensorFlow's documented order, element by element: PyTorch filter ``c * k + q`` is Keras
    ``kernel[:, :, c, q]``."""
    kh, kw, channels, k = kernel.shape
    weight = torch.empty(channels * k, 1, kh, kw)
    for c in range(channels):
        for q in range(k):
            weight[c * k + q, 0] = kernel[:, :, c, q]
    return weight


@value_only
def check_keras_to_torch(keras_to_torch: Callable,
                         shapes: Sequence[tuple[int, int, int, int]] = KERAS_SHAPES,
                         seed: int = VISIBLE_SEED + 1) -> None:
    """Part 2 (find and fix the bug): ``keras_to_torch(kernel)`` turns a Keras
    ``DepthwiseConv2D`` kernel (K_h, K_w, C, k) into PyTorch's (C * k, 1, K_h, K_w); random
    kernels of the given ``shapes``."""
    cases = _keras_kernels(list(shapes), seed)
    advice = "keras_to_torch must reorder the axes itself, not call course_lib's converter."
    with refusing(advice, references=course_references("depthwise")):
        answers = [call_student(keras_to_torch, kernel, name="keras_to_torch")
                   for kernel in cases]
    for kernel, got in zip(cases, answers):
        kh, kw, channels, k = kernel.shape
        expected = keras_order_reference(kernel)
        call = describe_call("keras_to_torch", (kernel,))
        if isinstance(got, torch.Tensor) and kh != kw \
                and tuple(got.shape) == (channels * k, 1, kw, kh):
            fail(f"{call}: K_h and K_w are swapped: got shape {tuple(got.shape)}, expected "
                 f"{tuple(expected.shape)}; keep height before width.")
        if isinstance(got, torch.Tensor) and got.numel() == expected.numel() \
                and tuple(got.shape) != tuple(expected.shape):
            fail(f"{call}: wrong shape {tuple(got.shape)}; PyTorch's depthwise weight is "
                 f"(C * k, 1, K_h, K_w) = {tuple(expected.shape)}, with a 1 for the single input "
                 f"channel each filter sees.")
        if not tensors_match(got, expected) and tensors_match(got, multiplier_first(expected, channels, axis=0)):
            fail(f"{call}: still the bug - the filters come out multiplier-first (j * C + c). "
                 f"TensorFlow and PyTorch both put filter q of channel c at c * k + q: put the "
                 f"C axis before the k axis when you flatten them.")
        expect_tensor(got, expected, call, atol=0, rtol=0)
    passed(f"keras_to_torch keeps TensorFlow's channel order on {len(cases)} kernels.")


@value_only
def check_depthwise_params(depthwise_params: Callable,
                           cases: Sequence[tuple[int, int, int, int, int, bool]] = COST_CASES
                           ) -> None:
    """Part 3a: ``depthwise_params(channels, kernel_size, depth_multiplier=1, bias=True)`` against
    ``nn.Conv2d(C, C * k, K, groups=C)``; cases are (C, K, k, H_out, W_out, bias)."""
    with refusing(COUNT_ADVICE, references=course_references("costs", "depthwise")):
        answers = [call_student(depthwise_params, c, kernel, k, bias, name="depthwise_params")
                   for c, kernel, k, _, _, bias in cases]
    for (c, kernel, k, _, _, bias), got in zip(cases, answers):
        layer = nn.Conv2d(c, c * k, kernel, groups=c, bias=bias, device="meta")
        expected = sum(p.numel() for p in layer.parameters())
        b = c * k if bias else 0
        hints = {kernel * kernel * c * c * k + b: "that is a standard convolution's count; with "
                                                  "groups = C each filter sees ONE channel.",
                 kernel * kernel * c + (c if bias else 0): "each channel has depth_multiplier "
                                                           "filters (and biases).",
                 kernel * c * k + b: "the kernel is K x K: multiply by K twice."}
        if bias and k > 1:
            hints[kernel * kernel * c * k + c] = "one bias per OUTPUT channel: C * k of them."
        args = (c, kernel, k, bias)
        expect_int(got, expected, describe_call("depthwise_params", args), hints)
    passed(f"depthwise_params matches nn.Conv2d(groups=C) on {len(cases)} layers.")


@value_only
def check_depthwise_macs(depthwise_macs: Callable,
                         cases: Sequence[tuple[int, int, int, int, int, bool]] = COST_CASES
                         ) -> None:
    """Part 3b: ``depthwise_macs(channels, kernel_size, out_h, out_w, depth_multiplier=1)``
    against a FlopCounterMode measurement of a real grouped conv (FLOPs / 2); cases are
    (C, K, k, H_out, W_out, bias)."""
    from torch.utils.flop_counter import FlopCounterMode

    with refusing(COUNT_ADVICE, references=course_references("costs", "depthwise")):
        answers = [call_student(depthwise_macs, c, kernel, oh, ow, k, name="depthwise_macs")
                   for c, kernel, k, oh, ow, _ in cases]
    for (c, kernel, k, oh, ow, _), got in zip(cases, answers):
        # an input that gives exactly oh x ow outputs with no padding, stride 1
        x = torch.zeros(1, c, oh + kernel - 1, ow + kernel - 1, device="meta")
        w = torch.zeros(c * k, 1, kernel, kernel, device="meta")
        with FlopCounterMode(display=False) as counter:
            REFERENCE["conv2d"](x, w, groups=c)
        expected = counter.get_total_flops() // 2
        hints = {2 * expected: "FLOPs count a multiply and an add separately; a MAC is one "
                               "multiply-add, so do not double.",
                 expected * c: "that is a standard convolution's count (K^2 * C * M * H * W); a "
                               "depthwise filter sees one channel, not C.",
                 kernel * kernel * c * k: "that is the number of weights; each one is used at "
                                          "every output position."}
        if k > 1:
            hints[expected // k] = "each channel has depth_multiplier filters: multiply by it."
        args = (c, kernel, oh, ow, k)
        expect_int(got, expected, describe_call("depthwise_macs", args), hints)
    passed(f"depthwise_macs matches a measured FlopCounterMode count on {len(cases)} layers.")


@value_only
def check_depthwise_costs(depthwise_params: Callable, depthwise_macs: Callable,
                          cases: Sequence[tuple[int, int, int, int, int, bool]] = COST_CASES
                          ) -> None:
    """Part 3: both counting functions in one test, on the same (C, K, k, H_out, W_out, bias)
    cases."""
    check_depthwise_params(depthwise_params, cases)
    check_depthwise_macs(depthwise_macs, cases)


@value_only
def check_depthwise_layer(dw_params: object, dw_macs: object,
                          standard_over_depthwise: object) -> None:
    """Part 4, by number: the depthwise layer of :data:`LAYER` (no bias) and how many times more
    MACs a standard conv with the same channels in and out would cost, measured on real
    layers."""
    from course_lib.costs import count_params, measure_macs

    # The answers as plain numbers first; the expected values only after.
    answers = (as_int(dw_params, "dw_params"), as_int(dw_macs, "dw_macs"),
               as_number(standard_over_depthwise, "standard_over_depthwise"))
    c, k, size, stride, padding = (LAYER[key] for key in ("channels", "kernel_size", "size",
                                                          "stride", "padding"))
    shape = torch.zeros(1, c, size, size, device="meta")   # meta: shapes and counts only
    dw = nn.Conv2d(c, c, k, stride=stride, padding=padding, groups=c, bias=False, device="meta")
    full = nn.Conv2d(c, c, k, stride=stride, padding=padding, bias=False, device="meta")
    params, macs = count_params(dw), measure_macs(dw, shape)
    expect_int(answers[0], params, "dw_params", named_mistakes([
        (params + c, "depthwise layers in such networks have no bias (BatchNorm follows them)."),
        (count_params(full), "that is the standard convolution's count; a depthwise filter is "
                             f"1 x {k} x {k}.")]))
    expect_int(answers[1], macs, "dw_macs", named_mistakes([
        (2 * macs, "that is FLOPs (2 per MAC); count multiply-adds once."),
        (k * k * c * size * size, f"with stride {stride} the output is smaller than the input: "
                                  f"count output positions."),
        (k * k * c * (size - k + 1) ** 2, "padding keeps more output positions: apply the "
                                          "output-size formula with the padding.")]))
    ratio = measure_macs(full, shape) / macs
    expect_close(answers[2], ratio, "standard_over_depthwise", hints={
        1 / ratio: "you divided the other way round; give standard MACs divided by depthwise "
                   "MACs (a number > 1)."})
    passed(f"{params:,} parameters, {macs:,} MACs; a standard {k}x{k} conv costs {ratio:.0f}x "
           f"more.")
