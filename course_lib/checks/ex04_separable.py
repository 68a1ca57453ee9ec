"""Checks for exercise 4, depthwise-separable convolution.

References are independent of the formulas a student writes: parameter counts come from real
``nn.Conv2d`` layers (on the meta device: shapes only), mult-adds from ``FlopCounterMode`` around
PyTorch's own conv2d, and output values from ``F.conv2d`` bound at import (``REFERENCE``).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from course_lib.checks import (COUNT_ADVICE, REFERENCE, as_int, as_number, call_student,
                               course_references, describe_call, expect_close, expect_int,
                               expect_tensor, fail, how_wrong, named_mistakes, passed, quiet,
                               refusing, tensors_match)

VISIBLE_SEED = 404
# (in_channels, out_channels, kernel_size, depth_multiplier): the worked example first
LAYER_CASES = [(3, 16, 3, 1), (32, 64, 3, 1), (8, 8, 5, 2), (5, 7, 2, 3), (12, 1, 7, 1)]
# (in_channels, out_channels, kernel_size, out_h, out_w, depth_multiplier)
MACS_CASES = [(3, 16, 3, 8, 8, 1), (32, 64, 3, 14, 14, 1), (8, 8, 5, 7, 3, 2), (5, 7, 1, 9, 12, 3)]
# (in_channels, out_channels, kernel_size (odd), stride, input size)
BLOCK_CASES = [(4, 8, 3, 1, 9), (6, 5, 3, 2, 11), (3, 7, 5, 3, 13), (8, 2, 1, 2, 6)]
# (in_channels, out_channels, kernel_size) of separable_to_full's weights
FULL_SHAPES = [(3, 16, 3), (4, 4, 3), (5, 2, 1), (2, 6, 5)]
# The by-number part: a 5x5 layer from 6 to 24 channels (chapter 4 works through 3x3, 3 -> 16).
NUMBERS = dict(in_channels=6, out_channels=24, kernel_size=5)


def _reference_params(c: int, m: int, k: int, d: int) -> int:
    depthwise = nn.Conv2d(c, c * d, k, groups=c, bias=False, device="meta")
    pointwise = nn.Conv2d(c * d, m, 1, bias=False, device="meta")
    return sum(p.numel() for layer in (depthwise, pointwise) for p in layer.parameters())


def check_separable_params(separable_params: Callable,
                           cases: Sequence[tuple[int, int, int, int]] = LAYER_CASES) -> None:
    """``separable_params(in_channels, out_channels, kernel_size, depth_multiplier)`` (no bias)
    against real depthwise + pointwise layers; cases are those four arguments."""
    with refusing(COUNT_ADVICE, references=course_references("costs", "separable")):
        answers = [call_student(separable_params, *case, name="separable_params")
                   for case in cases]
    for (c, m, k, d), got in zip(cases, answers):
        expected = _reference_params(c, m, k, d)
        hints = {
            k * k * c * m: "that is a standard convolution's count; a separable one has a "
                           "depthwise part (K*K per channel) plus a pointwise part (C*M).",
            k * k * c * c * d + c * d * m: "the depthwise conv has groups=C: each filter sees ONE "
                                           "channel, so it has K*K weights, not K*K*C.",
            k * c * d + c * d * m: "the depthwise kernel is K x K: multiply by K twice.",
            k * k * c + c * m: "with a depth multiplier d each channel gets d depthwise filters, "
                               "and the pointwise conv then sees C*d channels: both parts grow "
                               "by d.",
            k * k * c * d + c * m: "the pointwise conv follows the depthwise one, so its input "
                                   "has C*d channels, not C.",
            k * k * c * d + c * d * m + c * d + m: "count no bias here (bias=False).",
        }
        expect_int(got, expected, describe_call("separable_params", (c, m, k, d)), hints)
    passed(f"separable_params matches real depthwise + pointwise layers on {len(cases)} cases.")


def _measured_macs(c: int, m: int, k: int, out_h: int, out_w: int, d: int) -> int:
    """MACs of depthwise + pointwise producing an out_h x out_w map, from FlopCounterMode."""
    x = torch.zeros(1, c, out_h + k - 1, out_w + k - 1, device="meta")
    w_depthwise = torch.zeros(c * d, 1, k, k, device="meta")
    w_pointwise = torch.zeros(m, c * d, 1, 1, device="meta")
    with FlopCounterMode(display=False) as counter:
        REFERENCE["conv2d"](REFERENCE["conv2d"](x, w_depthwise, groups=c), w_pointwise)
    return counter.get_total_flops() // 2


def check_separable_macs(separable_macs: Callable,
                         cases: Sequence[tuple[int, int, int, int, int, int]] = MACS_CASES) -> None:
    """``separable_macs(in_channels, out_channels, kernel_size, out_h, out_w, depth_multiplier)``
    against FlopCounterMode (FLOPs / 2) on PyTorch's conv2d; cases are those six arguments."""
    with refusing(COUNT_ADVICE, references=course_references("costs", "separable")):
        answers = [call_student(separable_macs, *case, name="separable_macs") for case in cases]
    for (c, m, k, out_h, out_w, d), got in zip(cases, answers):
        expected = _measured_macs(c, m, k, out_h, out_w, d)
        hw = out_h * out_w
        hints = {
            2 * expected: "that is FLOPs (a multiply and an add); count one MAC per multiply-add.",
            k * k * c * m * hw: "that is a standard convolution's count.",
            _reference_params(c, m, k, d): "that is the number of weights; each weight is used "
                                           "at every output position.",
            k * k * c * hw + c * m * hw: "with a depth multiplier d both parts grow by d.",
            k * k * c * d * hw: "you left out the pointwise (1x1) part.",
            c * d * m * hw: "you left out the depthwise part.",
        }
        args = (c, m, k, out_h, out_w, d)
        expect_int(got, expected, describe_call("separable_macs", args), hints)
    passed(f"separable_macs matches FlopCounterMode on {len(cases)} layers.")


def _conv_attribute(block: nn.Module, name: str, call: str) -> nn.Conv2d:
    layer = getattr(block, name, None)
    if not isinstance(layer, nn.Conv2d):
        fail(f"{call}: the block needs an attribute `{name}` that is an nn.Conv2d, got "
             f"{type(layer).__name__}.")
    if layer.bias is not None:
        fail(f"{call}: `{name}` has a bias; create it with bias=False (in a real network "
             f"BatchNorm follows and its shift replaces the bias).")
    return layer


def check_separable_block(SeparableConv2d: Callable,
                          cases: Sequence[tuple[int, int, int, int, int]] = BLOCK_CASES,
                          seed: int = VISIBLE_SEED + 3) -> None:
    """The fixed block: depthwise (groups = C, stride on it) then pointwise, no bias; values
    against two F.conv2d calls, cost against FlopCounterMode. Cases are (in_channels,
    out_channels, kernel_size, stride, input size); weights and inputs come from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    advice = ("SeparableConv2d must be built from two nn.Conv2d layers, not from course_lib's "
              "separable layers.")
    for c, m, k, s, size in cases:
        call = describe_call("SeparableConv2d", (c, m, k, s))
        with refusing(advice, references=course_references("separable")):
            block = call_student(SeparableConv2d, c, m, k, s, name="SeparableConv2d")
        if not isinstance(block, nn.Module):
            fail(f"{call} should build an nn.Module, got {type(block).__name__}.")
        depthwise = _conv_attribute(block, "depthwise", call)
        pointwise = _conv_attribute(block, "pointwise", call)
        if depthwise.kernel_size == (1, 1) and pointwise.kernel_size == (k, k) and k > 1:
            fail(f"{call}: `depthwise` is 1x1 and `pointwise` is {k}x{k}: the names are swapped. "
                 f"The depthwise conv is the {k}x{k} one, applied per channel.")
        if depthwise.groups != c:
            fail(f"{call}: depthwise.groups is {depthwise.groups}, but it must equal in_channels. "
                 f"Without groups=in_channels it is a full convolution that mixes all channels "
                 f"(K*K*C weights per filter instead of K*K).")
        if tuple(depthwise.weight.shape) != (c, 1, k, k):
            fail(f"{call}: depthwise weight has shape {tuple(depthwise.weight.shape)}, expected "
                 f"{(c, 1, k, k)}: {c} channels in, {c} out, one {k}x{k} filter each.")
        if tuple(pointwise.weight.shape) != (m, c, 1, 1):
            fail(f"{call}: pointwise weight has shape {tuple(pointwise.weight.shape)}, expected "
                 f"{(m, c, 1, 1)}: a 1x1 conv from the {c} depthwise outputs to {m} channels.")
        if pointwise.stride != (1, 1):
            fail(f"{call}: the stride is on the pointwise conv. The outputs come out the same, but "
                 f"the depthwise conv then computes every position and the 1x1 conv throws "
                 f"{1 - 1 / (s * s):.0%} of them away: put stride={s} on the depthwise conv.")
        if depthwise.stride != (s, s):
            fail(f"{call}: depthwise.stride is {depthwise.stride}, but the block's stride is "
                 f"{s}: put stride={s} on the depthwise conv.")
        # Same weights into the student's block and the reference computation; the student's
        # forward pass and its cost first, the reference after.
        w_dw = torch.randn(c, 1, k, k, generator=g)
        w_pw = torch.randn(m, c, 1, 1, generator=g)
        with torch.no_grad():
            depthwise.weight.copy_(w_dw)
            pointwise.weight.copy_(w_pw)
        x = torch.randn(2, c, size, size, generator=g)
        block.eval()
        with torch.no_grad():
            got = call_student(block, x, name=f"{call}.forward")
        with quiet(), torch.no_grad(), FlopCounterMode(display=False) as counter:
            block(x[:1])
        macs = counter.get_total_flops() // 2
        expected = REFERENCE["conv2d"](REFERENCE["conv2d"](x, w_dw, stride=s, padding=k // 2, groups=c),
                                  w_pw)
        what = f"{call} on an input of shape {tuple(x.shape)} (padding kernel_size // 2)"
        extras = sorted({type(layer).__name__ for layer in block.modules()
                         if layer is not block and not isinstance(layer, nn.Conv2d)})
        if extras and type(got) is torch.Tensor and got.shape == expected.shape \
                and not tensors_match(got, expected):
            fail(f"{what}: wrong values, and the block also holds {', '.join(extras)}. The task's "
                 f"block is only the depthwise conv then the pointwise conv (in a network, "
                 f"BatchNorm and ReLU come after each conv, outside this block): remove them.")
        expect_tensor(got, expected, what)
        out = expected.shape[-1] * expected.shape[-2]
        expected_macs = (k * k * c + c * m) * out
        if macs != expected_macs:
            fail(f"{call}: your block costs {macs:,} MACs on a {size}x{size} input, which is "
                 f"{how_wrong(macs, expected_macs)}: compute each layer once, at the output "
                 f"resolution.")
    passed(f"SeparableConv2d is a correct depthwise-separable block on {len(cases)} cases "
           f"(groups, stride, values, cost).")


def check_separable_to_full(separable_to_full: Callable,
                            shapes: Sequence[tuple[int, int, int]] = FULL_SHAPES,
                            seed: int = VISIBLE_SEED + 4) -> None:
    """``separable_to_full(depthwise_weight, pointwise_weight)`` -> (M, C, K, K) kernel whose
    standard convolution equals the separable one; random weights of the given (C, M, K)
    ``shapes`` from ``seed``. course_lib's own converter refuses while it runs."""
    g = torch.Generator().manual_seed(seed)
    weights = [(torch.randn(c, 1, k, k, generator=g), torch.randn(m, c, 1, 1, generator=g))
               for c, m, k in shapes]
    advice = ("separable_to_full must be your own code (broadcast the pointwise weights against "
              "the depthwise filters), not course_lib's separable_to_full_kernel.")
    with refusing(advice, references=course_references("separable")):
        answers = [call_student(separable_to_full, w_dw, w_pw, name="separable_to_full")
                   for w_dw, w_pw in weights]
    for (c, m, k), (w_dw, w_pw), got in zip(shapes, weights, answers):
        call = describe_call("separable_to_full", (w_dw, w_pw))
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (c, m, k, k) and c != m:
            fail(f"{call}: got shape {tuple(got.shape)}, expected {(m, c, k, k)}: a standard "
                 f"conv's weight is (out_channels, in_channels, K, K).")
        x = torch.randn(1, c, k + 4, k + 5, generator=g)
        separable_out = REFERENCE["conv2d"](REFERENCE["conv2d"](x, w_dw, groups=c), w_pw)
        # Independent of any formula: W[m, c] = P[m, c] * D[c], one output channel at a time.
        expected = torch.stack([w_pw[j, :, 0, 0, None, None] * w_dw[:, 0] for j in range(m)])
        expect_tensor(got, expected, call, atol=1e-5, rtol=1e-5)
        expect_tensor(REFERENCE["conv2d"](x, got), separable_out,
                      f"F.conv2d(x, {call}) vs the separable conv", atol=1e-4, rtol=1e-4)
    passed(f"separable_to_full gives the equivalent standard kernel on {len(shapes)} cases.")


def check_separable_costs(separable_params: Callable, separable_macs: Callable,
                          param_cases: Sequence[tuple[int, int, int, int]] = LAYER_CASES,
                          macs_cases: Sequence[tuple[int, int, int, int, int, int]] = MACS_CASES
                          ) -> None:
    """Part 1: both counting functions in one test."""
    check_separable_params(separable_params, param_cases)
    check_separable_macs(separable_macs, macs_cases)


def check_numbers(standard_weights: Any, separable_weights: Any, mac_saving: Any,
                  exact_depth_multiplier: Any) -> None:
    """By number, for the layer of :data:`NUMBERS` (no bias): the weights of the standard and
    the separable conv, the mult-add saving, and the smallest depth multiplier with which every
    standard kernel of that shape is reachable."""
    # The answers as plain numbers first; the expected values only after.
    answers = (as_int(standard_weights, "standard_weights"),
               as_int(separable_weights, "separable_weights"),
               as_number(mac_saving, "mac_saving"),
               as_int(exact_depth_multiplier, "exact_depth_multiplier"))
    c, m, k = (NUMBERS[key] for key in ("in_channels", "out_channels", "kernel_size"))
    standard = nn.Conv2d(c, m, k, bias=False, device="meta")
    std_params = sum(p.numel() for p in standard.parameters())
    sep_params = _reference_params(c, m, k, 1)
    expect_int(answers[0], std_params, "standard_weights", named_mistakes([
        (std_params + m, "no bias here (bias=False)."),
        (k * k * m, "a standard filter sees every input channel: K * K * C per filter.")]))
    expect_int(answers[1], sep_params, "separable_weights", named_mistakes([
        (k * k * c * c + c * m, f"the depthwise part has groups={c}: {k}x{k} weights per "
                                f"channel."),
        (sep_params + c + m, "no bias here (bias=False)."),
        (std_params, "that is the standard conv's count.")]))
    x = torch.zeros(1, 2 * c, 3 * k, 3 * k, device="meta")
    with FlopCounterMode(display=False) as counter:
        REFERENCE["conv2d"](x, torch.zeros(m, 2 * c, k, k, device="meta"))
    std_macs = counter.get_total_flops()
    out = 3 * k - k + 1
    sep_macs = 2 * _measured_macs(2 * c, m, k, out, out, 1)
    saving = std_macs / sep_macs
    expect_close(answers[2], saving, "mac_saving", rel=1e-3, hints={
        float(k * k): "K^2 is the limit for very many output channels; with M output channels "
                      "the saving is 1 / (1/M + 1/K^2).",
        float(m): "the saving is 1 / (1/M + 1/K^2), not M.",
        1 / saving: "that is separable / standard; the saving is standard / separable (how many "
                    "times fewer)."})
    # The slices W[:, c] are M x K^2 matrices: a generic one has rank min(M, K^2).
    g = torch.Generator().manual_seed(VISIBLE_SEED)
    rank = int(torch.linalg.matrix_rank(torch.randn(m, k * k, generator=g)))
    expect_int(answers[3], rank, "exact_depth_multiplier", named_mistakes([
        (max(m, k * k), f"each channel's slice W[:, c] is an M x K^2 matrix: its rank is at "
                        f"most the smaller of its two sizes."),
        (c, "the input channels are independent of each other; what limits the fit is the "
            "rank of each channel's M x K^2 slice."),
        (1, "d = 1 gives rank-1 slices, but a generic kernel's slices have higher rank.")]))
    passed(f"{std_params:,} vs {sep_params:,} weights; {saving:.2f}x fewer mult-adds; exact "
           f"from depth multiplier {rank}.")
