"""Checks for exercise 1, standard convolution."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.checks import (_REF, call_student, describe_call, expect_int, expect_tensor,
                               fail, forbid, passed)
from course_lib.checks.cases import conv_cases

VISIBLE_SEED, HIDDEN_SEED = 101, 20231


def _true_output_size(size: int, kernel_size: int, stride: int, padding: int,
                      dilation: int) -> int:
    """Ask PyTorch itself: run conv2d on an empty-channel input and read the width."""
    x = torch.zeros(1, 1, 1, size)
    w = torch.zeros(1, 1, 1, kernel_size)
    return _REF["conv2d"](x, w, stride=(1, stride), padding=(0, padding),
                          dilation=(1, dilation)).shape[-1]


def output_size_cases(hidden: bool) -> list[tuple[int, int, int, int, int]]:
    g = torch.Generator().manual_seed(HIDDEN_SEED if hidden else VISIBLE_SEED)
    cases = [(32, 3, 1, 0, 1), (32, 3, 1, 1, 1), (224, 3, 2, 1, 1), (7, 1, 2, 0, 1),
             (28, 5, 1, 0, 2)]
    for _ in range(10):
        k = int(torch.randint(1, 8, (1,), generator=g))
        d = int(torch.randint(1, 4, (1,), generator=g))
        p = int(torch.randint(0, 4, (1,), generator=g))
        s = int(torch.randint(1, 5, (1,), generator=g))
        size = int(torch.randint(d * (k - 1) + 1, 64, (1,), generator=g))
        cases.append((size, k, s, p, d))
    return cases


def check_output_size(conv_output_size: Callable, hidden: bool = False) -> None:
    """``conv_output_size(size, kernel_size, stride, padding, dilation)`` against PyTorch."""
    for size, k, s, p, d in output_size_cases(hidden):
        expected = _true_output_size(size, k, s, p, d)
        args = (size, k, s, p, d)
        got = call_student(conv_output_size, *args)
        hints = {}
        no_floor = (size + 2 * p - d * (k - 1) - 1) / s + 1
        hints[(size + 2 * p - k) // s + 1] = ("you ignored the dilation: a dilated kernel spans "
                                               "dilation*(kernel_size-1)+1 pixels.")
        hints[(size - d * (k - 1) - 1) // s + 1] = "you ignored the padding (it adds 2*padding)."
        hints.pop(expected, None)
        if not float(no_floor).is_integer():
            hints.setdefault(round(no_floor), "round down (floor), do not round to nearest.")
        expect_int(got, expected, describe_call("conv_output_size", args), hints)
    passed("conv_output_size matches PyTorch on "
           f"{len(output_size_cases(hidden))} cases{' (hidden)' if hidden else ''}.")


def check_conv2d_unfold(conv2d_unfold: Callable, hidden: bool = False) -> None:
    """``conv2d_unfold(x, weight, bias, stride, padding, dilation, groups)`` against F.conv2d,
    without calling F.conv2d."""
    cases = conv_cases(HIDDEN_SEED if hidden else VISIBLE_SEED, count=8 if hidden else 6)
    advice = ("conv2d_unfold must not call F.conv2d / torch.conv2d: build it from F.unfold and a "
              "matrix multiply.")
    for case in cases:
        expected = _REF["conv2d"](case.x, case.weight, **case.kwargs())
        with forbid(F, "conv2d", advice), forbid(torch, "conv2d", advice):
            got = call_student(conv2d_unfold, case.x, case.weight, **case.kwargs())
        expect_tensor(got, expected, describe_call("conv2d_unfold", (case.x, case.weight),
                                                   case.kwargs()))
    passed(f"conv2d_unfold matches F.conv2d on {len(cases)} random cases "
           f"(stride, padding, dilation, groups){' (hidden)' if hidden else ''}.")


def _layer_cases(hidden: bool) -> list[tuple[int, int, int, bool]]:
    g = torch.Generator().manual_seed(HIDDEN_SEED if hidden else VISIBLE_SEED)
    cases = [(3, 16, 3, True), (3, 16, 3, False), (64, 128, 1, True)]
    for _ in range(5):
        cases.append((int(torch.randint(1, 65, (1,), generator=g)),
                      int(torch.randint(1, 129, (1,), generator=g)),
                      int(torch.randint(1, 8, (1,), generator=g)),
                      bool(torch.randint(2, (1,), generator=g))))
    return cases


def check_conv_params(conv_params: Callable, hidden: bool = False) -> None:
    """``conv_params(in_channels, out_channels, kernel_size, bias)`` against nn.Conv2d."""
    for c, m, k, bias in _layer_cases(hidden):
        layer = nn.Conv2d(c, m, k, bias=bias, device="meta")  # meta: shapes only, no memory
        expected = sum(p.numel() for p in layer.parameters())
        weights = k * k * c * m
        hints = {weights + m * k * k: "a bias is ONE scalar per output channel, not a K x K "
                                      "matrix."}
        if bias:
            hints[weights] = "you forgot the bias: one scalar per output channel."
        else:
            hints[weights + m] = "count the bias only when bias=True."
        hints[k * c * m + (m if bias else 0)] = "the kernel is K x K: multiply by K twice."
        hints.pop(expected, None)
        expect_int(call_student(conv_params, c, m, k, bias), expected,
                   describe_call("conv_params", (c, m, k, bias)), hints)
    passed(f"conv_params matches nn.Conv2d on {len(_layer_cases(hidden))} layers"
           f"{' (hidden)' if hidden else ''}.")


def check_conv_macs(conv_macs: Callable, hidden: bool = False) -> None:
    """``conv_macs(in_channels, out_channels, kernel_size, out_h, out_w)`` against the
    FlopCounterMode measurement of a real conv (FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    g = torch.Generator().manual_seed(HIDDEN_SEED + 1 if hidden else VISIBLE_SEED + 1)
    for c, m, k, _ in _layer_cases(hidden):
        size = int(torch.randint(k, k + 20, (1,), generator=g))
        x = torch.zeros(1, c, size, size, device="meta")
        w = torch.zeros(m, c, k, k, device="meta")
        with FlopCounterMode(display=False) as counter:
            out = _REF["conv2d"](x, w)
        expected = counter.get_total_flops() // 2
        oh, ow = out.shape[-2:]
        hints = {2 * expected: "FLOPs count a multiply and an add separately; a MAC is one "
                               "multiply-add, so do not double.",
                 k * k * c * m: "that is the number of weights; each one is used at every "
                                "output position."}
        hints.pop(expected, None)
        expect_int(call_student(conv_macs, c, m, k, oh, ow), expected,
                   describe_call("conv_macs", (c, m, k, oh, ow)), hints)
    passed(f"conv_macs matches a measured FlopCounterMode count on {len(_layer_cases(hidden))} "
           f"layers{' (hidden)' if hidden else ''}.")


def check_bias_shape(conv_bias_shape: Callable) -> None:
    """Common mistake: ``conv_bias_shape(out_channels, out_h, out_w)`` must be (out_channels,)."""
    for m, h, w in [(16, 30, 30), (1, 5, 7), (64, 1, 1)]:
        got = call_student(conv_bias_shape, m, h, w)
        try:
            got_shape = tuple(int(s) for s in got)
        except TypeError:
            fail(f"conv_bias_shape({m}, {h}, {w}) should return a tuple, got {got!r}.")
        if got_shape != tuple(nn.Conv2d(1, m, 1).bias.shape):
            fail(f"conv_bias_shape({m}, {h}, {w}) returned {got_shape}; a conv layer has one "
                 f"scalar bias per output channel, shared by every position.")
    passed("conv_bias_shape: one scalar bias per output channel.")


def check_vgg_layer(out_size: object, params: object, macs: object) -> None:
    """Part 5: a 3x3, 128->256 conv, padding 1, on 56x56, with bias - measured on a real layer."""
    from torch.utils.flop_counter import FlopCounterMode

    layer = nn.Conv2d(128, 256, 3, padding=1, device="meta")
    with FlopCounterMode(display=False) as counter:
        out = layer(torch.zeros(1, 128, 56, 56, device="meta"))
    expect_int(out_size, out.shape[-1], "vgg_out_size",
               {54: "padding 1 keeps a 3x3 conv's output the same size as its input."})
    expected_params = sum(p.numel() for p in layer.parameters())
    expect_int(params, expected_params, "vgg_params",
               {expected_params - 256: "include the bias (256 numbers)."})
    expected_macs = counter.get_total_flops() // 2
    expect_int(macs, expected_macs, "vgg_macs",
               {2 * expected_macs: "that is FLOPs (2 per MAC); count multiply-adds once.",
                128 * 256 * 9 * 54 * 54: "the output is 56x56, not 54x54 (padding 1)."})
    passed(f"{out.shape[-1]}x{out.shape[-1]} output, {expected_params:,} parameters, "
           f"{expected_macs:,} MACs.")
