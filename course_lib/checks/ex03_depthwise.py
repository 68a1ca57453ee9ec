"""Checks for exercise 3, depthwise convolution.

References: PyTorch's grouped convolution (``groups=C``, bound at import, see
``course_lib.checks``), real layers and ``FlopCounterMode``. The Keras kernel conversion is checked
against TensorFlow's documented channel order (``output[..., c * k + q]`` is filter
``[:, :, c, q]``), written out element by element. Known wrong answers (multiplier-first channel
order, swapped kernel axes, the standard-conv cost formula, FLOPs for MACs) get a targeted hint.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.checks import (_REF, call_student, describe_call, expect_close, expect_int,
                               expect_tensor, fail, passed)
from course_lib.checks.cases import conv_cases

VISIBLE_SEED, HIDDEN_SEED = 303, 50021


def _close(actual: object, other: torch.Tensor) -> bool:
    return (isinstance(actual, torch.Tensor) and actual.shape == other.shape
            and actual.is_floating_point()
            and bool(_REF["allclose"](actual.detach().to(other.dtype), other, atol=1e-4,
                                      rtol=1e-4)))


def multiplier_first(t: torch.Tensor, channels: int, axis: int) -> torch.Tensor:
    """Reorder ``axis`` of ``t`` from ``c * k + j`` (the right order) to ``j * C + c``: what a
    multiplier-first channel order produces."""
    size = t.shape[axis]
    split = t.shape[:axis] + (channels, size // channels) + t.shape[axis + 1:]
    return t.reshape(split).transpose(axis, axis + 1).reshape(t.shape)


@contextlib.contextmanager
def single_channel_convs_only(advice: str) -> Iterator[None]:
    """Let ``F.conv2d`` / ``torch.conv2d`` run only with ``groups=1``: the student must build the
    depthwise convolution out of ordinary convolutions (or unfold), not call the grouped one."""
    originals = (F.conv2d, torch.conv2d)

    def guarded(*args: Any, **kwargs: Any) -> torch.Tensor:
        groups = kwargs.get("groups", args[6] if len(args) > 6 else 1)
        if groups != 1:
            fail(advice)
        return _REF["conv2d"](*args, **kwargs)

    F.conv2d = torch.conv2d = guarded
    try:
        yield
    finally:
        F.conv2d, torch.conv2d = originals


def check_depthwise_conv2d(depthwise_conv2d: Callable, hidden: bool = False) -> None:
    """Part 1: ``depthwise_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1)`` with
    ``weight`` (C * k, 1, K, K) equals ``F.conv2d(..., groups=C)``, without using ``groups``."""
    cases = conv_cases(HIDDEN_SEED if hidden else VISIBLE_SEED, count=8 if hidden else 5,
                       depthwise=True)
    advice = ("depthwise_conv2d must not call a grouped convolution (groups > 1): loop over the "
              "channels and call F.conv2d on one channel at a time.")
    for case in cases:
        kwargs = dict(bias=case.bias, stride=case.stride, padding=case.padding,
                      dilation=case.dilation)
        channels = case.x.shape[1]
        expected = _REF["conv2d"](case.x, case.weight, groups=channels, **kwargs)
        call = describe_call("depthwise_conv2d", (case.x, case.weight), kwargs)
        with single_channel_convs_only(advice):
            got = call_student(depthwise_conv2d, case.x, case.weight, name="depthwise_conv2d",
                               **kwargs)
        right = _close(got, expected)
        if not right and _close(got, multiplier_first(expected, channels, 1)):
            fail(f"{call}: right values, wrong channel order. Filter j of input channel c is "
                 f"weight[c * k + j] and must land in output channel c * k + j (all k outputs of "
                 f"channel 0 first, then channel 1, ...); you ordered them j * C + c.")
        if not right and case.bias is not None and _close(
                got, _REF["conv2d"](case.x, case.weight, groups=channels, stride=case.stride,
                                    padding=case.padding, dilation=case.dilation)):
            fail(f"{call}: the values lack the bias (one number per output channel).")
        expect_tensor(got, expected, call)
    passed(f"depthwise_conv2d matches F.conv2d(groups=C) on {len(cases)} random cases (depth "
           f"multiplier, stride, padding, dilation){' (hidden)' if hidden else ''}.")


def _keras_cases(hidden: bool) -> list[torch.Tensor]:
    """Keras-layout kernels (K_h, K_w, C, k), with K_h != K_w and k >= 2 in most cases so that an
    axis mix-up cannot pass; one k = 1 case."""
    g = torch.Generator().manual_seed(HIDDEN_SEED + 1 if hidden else VISIBLE_SEED + 1)
    shapes = [(3, 5, 3, 2), (3, 3, 4, 1), (1, 3, 2, 3)]
    for _ in range(5 if hidden else 2):
        shapes.append(tuple(int(torch.randint(lo, hi, (1,), generator=g))
                            for lo, hi in ((1, 6), (1, 6), (2, 7), (2, 5))))
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


def check_keras_to_torch(keras_to_torch: Callable, hidden: bool = False) -> None:
    """Part 2 (find and fix the bug): ``keras_to_torch(kernel)`` turns a Keras
    ``DepthwiseConv2D`` kernel (K_h, K_w, C, k) into PyTorch's (C * k, 1, K_h, K_w)."""
    cases = _keras_cases(hidden)
    for kernel in cases:
        kh, kw, channels, k = kernel.shape
        expected = keras_order_reference(kernel)
        call = describe_call("keras_to_torch", (kernel,))
        got = call_student(keras_to_torch, kernel.clone(), name="keras_to_torch")
        if isinstance(got, torch.Tensor) and kh != kw \
                and tuple(got.shape) == (channels * k, 1, kw, kh):
            fail(f"{call}: K_h and K_w are swapped: got shape {tuple(got.shape)}, expected "
                 f"{tuple(expected.shape)}; keep height before width.")
        if isinstance(got, torch.Tensor) and got.numel() == expected.numel() \
                and tuple(got.shape) != tuple(expected.shape):
            fail(f"{call}: wrong shape {tuple(got.shape)}; PyTorch's depthwise weight is "
                 f"(C * k, 1, K_h, K_w) = {tuple(expected.shape)}, with a 1 for the single input "
                 f"channel each filter sees.")
        if not _close(got, expected) and _close(got, multiplier_first(expected, channels, axis=0)):
            fail(f"{call}: still the bug - the filters come out multiplier-first (j * C + c). "
                 f"TensorFlow and PyTorch both put filter q of channel c at c * k + q: put the "
                 f"C axis before the k axis when you flatten them.")
        expect_tensor(got, expected, call, atol=0, rtol=0)
    passed(f"keras_to_torch keeps TensorFlow's channel order on {len(cases)} kernels"
           f"{' (hidden)' if hidden else ''}.")


def _cost_cases(hidden: bool) -> list[tuple[int, int, int, int, int, bool]]:
    """(C, K, k, H_out, W_out, bias): MobileNet-like layers, then random ones."""
    g = torch.Generator().manual_seed(HIDDEN_SEED + 2 if hidden else VISIBLE_SEED + 2)
    cases = [(32, 3, 1, 112, 112, False), (64, 3, 1, 56, 56, True), (16, 5, 2, 28, 20, True)]
    for _ in range(6):
        cases.append((int(torch.randint(1, 129, (1,), generator=g)),
                      int(torch.randint(1, 8, (1,), generator=g)),
                      int(torch.randint(1, 4, (1,), generator=g)),
                      int(torch.randint(1, 40, (1,), generator=g)),
                      int(torch.randint(1, 40, (1,), generator=g)),
                      bool(torch.randint(2, (1,), generator=g))))
    return cases


def check_depthwise_params(depthwise_params: Callable, hidden: bool = False) -> None:
    """Part 3a: ``depthwise_params(channels, kernel_size, depth_multiplier=1, bias=True)`` against
    ``nn.Conv2d(C, C * k, K, groups=C)``."""
    cases = _cost_cases(hidden)
    for c, kernel, k, _, _, bias in cases:
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
        hints.pop(expected, None)
        args = (c, kernel, k, bias)
        expect_int(call_student(depthwise_params, *args, name="depthwise_params"), expected,
                   describe_call("depthwise_params", args), hints)
    passed(f"depthwise_params matches nn.Conv2d(groups=C) on {len(cases)} layers"
           f"{' (hidden)' if hidden else ''}.")


def check_depthwise_macs(depthwise_macs: Callable, hidden: bool = False) -> None:
    """Part 3b: ``depthwise_macs(channels, kernel_size, out_h, out_w, depth_multiplier=1)``
    against a FlopCounterMode measurement of a real grouped conv (FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    cases = _cost_cases(hidden)
    for c, kernel, k, oh, ow, _ in cases:
        # an input that gives exactly oh x ow outputs with no padding, stride 1
        x = torch.zeros(1, c, oh + kernel - 1, ow + kernel - 1, device="meta")
        w = torch.zeros(c * k, 1, kernel, kernel, device="meta")
        with FlopCounterMode(display=False) as counter:
            _REF["conv2d"](x, w, groups=c)
        expected = counter.get_total_flops() // 2
        hints = {2 * expected: "FLOPs count a multiply and an add separately; a MAC is one "
                               "multiply-add, so do not double.",
                 expected * c: "that is a standard convolution's count (K^2 * C * M * H * W); a "
                               "depthwise filter sees one channel, not C.",
                 kernel * kernel * c * k: "that is the number of weights; each one is used at "
                                          "every output position."}
        if k > 1:
            hints[expected // k] = "each channel has depth_multiplier filters: multiply by it."
        hints.pop(expected, None)
        args = (c, kernel, oh, ow, k)
        expect_int(call_student(depthwise_macs, *args, name="depthwise_macs"), expected,
                   describe_call("depthwise_macs", args), hints)
    passed(f"depthwise_macs matches a measured FlopCounterMode count on {len(cases)} layers"
           f"{' (hidden)' if hidden else ''}.")


def check_mobilenet_layer(dw_params: object, dw_macs: object,
                          standard_over_depthwise: object) -> None:
    """Part 4, by number: MobileNetV1's first depthwise layer (3x3, 32 channels, 112x112,
    stride 1, padding 1, no bias) and how many times more MACs a standard 3x3 conv from 32 to 32
    channels would cost, all measured on real layers."""
    from course_lib.costs import count_params, measure_macs

    shape = (1, 32, 112, 112)
    dw = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False)
    full = nn.Conv2d(32, 32, 3, padding=1, bias=False)
    params, macs = count_params(dw), measure_macs(dw, shape)
    expect_int(dw_params, params, "dw_params",
               {params + 32: "MobileNet's convolutions have no bias (BatchNorm follows them).",
                count_params(full): "that is the standard convolution's count; a depthwise "
                                    "filter is 1 x 3 x 3."})
    expect_int(dw_macs, macs, "dw_macs",
               {2 * macs: "that is FLOPs (2 per MAC); count multiply-adds once.",
                3 * 3 * 32 * 110 * 110: "padding 1 keeps the output 112x112."})
    ratio = measure_macs(full, shape) / macs
    if isinstance(standard_over_depthwise, (int, float)) and \
            abs(standard_over_depthwise * ratio - 1) < 1e-9:
        fail("standard_over_depthwise: you divided the other way round; give standard MACs "
             "divided by depthwise MACs (a number > 1).")
    expect_close(standard_over_depthwise, ratio, "standard_over_depthwise")
    passed(f"{params} parameters, {macs:,} MACs; a standard 3x3 conv costs {ratio:.0f}x more.")
