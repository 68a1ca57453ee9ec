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
                               refusing, run_probe, tensors_match, value_only)

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


@value_only
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


@value_only
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


def _block_facts(block: Any, c: int, m: int, k: int, s: int, w_dw: torch.Tensor,
                 w_pw: torch.Tensor, x: torch.Tensor, call: str) -> dict:
    """The student's half of :func:`check_separable_block`, run where the block lives (in the
    re-check, in the student's process: :func:`run_probe`): its layers' structure (a mistake
    there fails here, with its advice), then its output and cost with the check's weights, as
    data. The checker's half compares them with the reference."""
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
    with torch.no_grad():
        depthwise.weight.copy_(w_dw)
        pointwise.weight.copy_(w_pw)
    block.eval()
    with torch.no_grad():
        got = call_student(block, x, name=f"{call}.forward")
    with quiet(), torch.no_grad(), FlopCounterMode(display=False) as counter:
        block(x[:1])
    return {"got": got, "macs": counter.get_total_flops() // 2,
            "extras": sorted({type(layer).__name__ for layer in block.modules()
                              if layer is not block and not isinstance(layer, nn.Conv2d)})}


@value_only
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
        # Same weights into the student's block and the reference computation; the student's
        # forward pass and its cost first, the reference after.
        w_dw = torch.randn(c, 1, k, k, generator=g)
        w_pw = torch.randn(m, c, 1, 1, generator=g)
        x = torch.randn(2, c, size, size, generator=g)
        facts = run_probe(_block_facts, block, c, m, k, s, w_dw, w_pw, x, call, name=call)
        got, macs, extras = facts["got"], facts["macs"], facts["extras"]
        expected = REFERENCE["conv2d"](REFERENCE["conv2d"](x, w_dw, stride=s, padding=k // 2,
                                                           groups=c), w_pw)
        what = f"{call} on an input of shape {tuple(x.shape)} (padding kernel_size // 2)"
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


@value_only
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


@value_only
def check_separable_costs(separable_params: Callable, separable_macs: Callable,
                          param_cases: Sequence[tuple[int, int, int, int]] = LAYER_CASES,
                          macs_cases: Sequence[tuple[int, int, int, int, int, int]] = MACS_CASES
                          ) -> None:
    """Part 1: both counting functions in one test."""
    check_separable_params(separable_params, param_cases)
    check_separable_macs(separable_macs, macs_cases)


@value_only
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


# --- The backward pass, derived and gradient-checked ----------------------------------------------
# References: autograd through PyTorch's conv2d, bound here at import (before any student cell).
# Inputs are float64, so a correct gradient agrees to ~1e-12 and every named mistake is off by
# far more than the tolerance.
import torch.nn.functional as _F  # noqa: E402


_CONV2D = _F.conv2d
_GRAD_TOLERANCE = 1e-6  # relative error (see _relative_error) a float64 gradient must beat
# (N, C, H, W, K_h, K_w, stride, padding): plain first, then padding, stride, both, a stride that
# leaves the last input rows unread, and a rectangular kernel.
DEPTHWISE_BACKWARD_CASES = [(1, 2, 5, 5, 3, 3, 1, 0), (2, 3, 6, 7, 3, 3, 1, 1),
                            (1, 2, 9, 9, 3, 3, 2, 0), (2, 2, 8, 7, 3, 3, 2, 1),
                            (1, 3, 10, 9, 5, 5, 3, 2), (2, 2, 7, 8, 3, 2, 2, 1)]
# (N, C, M, H, W) of the pointwise backward; one case with C == M (a transposed weight has the
# right shape there)
POINTWISE_BACKWARD_CASES = [(1, 3, 5, 4, 4), (2, 4, 4, 3, 5), (3, 6, 2, 2, 3)]
# (shape of x, frequency a, step h) of the gradient-check cases: f(x) = sum(r * sin(a * x))
NUMERICAL_GRADIENT_CASES = [((4,), 2.0, 1e-3), ((2, 3), 3.0, 1e-3), ((2, 2, 3), 4.0, 5e-4)]
_BACKWARD_ADVICE = ("derive the gradient yourself with tensor operations (unfold/fold, einsum, "
                    "indexing, padding): PyTorch's convolutions, their backward, autograd and "
                    "course_lib.backward are what the check compares against, so they are not "
                    "allowed here.")


class _NoAutograd:
    """While active, recording a tensor for autograd (what any backward through autograd needs)
    fails with ``advice``."""

    def __init__(self, advice: str):
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._refuse, lambda packed: packed)
        self.advice = advice

    def _refuse(self, tensor):
        fail(self.advice, "autograd")

    def __enter__(self):
        self.hooks.__enter__()

    def __exit__(self, *exc):
        return self.hooks.__exit__(*exc)


class _CountOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the aten operators a call runs (a Python loop over pixels runs thousands)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = (a.abs() + b.abs()).max().item()
    return 0.0 if scale == 0 else (a - b).abs().max().item() / scale


def _backward_probe(fn: Callable, name: str, args: tuple, kwargs: dict, count: bool
                    ) -> tuple[Any, int]:
    """The student's half of :func:`_run_backward`, run where the function lives (in the
    re-check, in the student's process: :func:`run_probe`): its result with autograd refused,
    and how many aten operators it ran (0 unless ``count``)."""
    counter = _CountOps()
    with _NoAutograd(_BACKWARD_ADVICE):
        if count:
            with counter:
                result = call_student(fn, *args, name=name, **kwargs)
        else:
            result = call_student(fn, *args, name=name, **kwargs)
    return result, counter.count


def _run_backward(fn: Callable, name: str, args: tuple, kwargs: dict, count: bool = False):
    """The student's backward on one case, refusing convolutions and autograd; with ``count``,
    also how many aten operators it ran."""
    with refusing(_BACKWARD_ADVICE, convolutions=True, references=course_references("backward")):
        result, ops = run_probe(_backward_probe, fn, name, args, kwargs, count, name=name)
    return (result, ops) if count else result


def _pair_of_tensors(result: Any, call: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        fail(f"{call} should return a pair (grad_x, grad_weight), got "
                      f"{type(result).__name__}"
                      + (f" of length {len(result)}" if isinstance(result, (tuple, list)) else "")
                      + ".", "type")
    for value, what in zip(result, ("grad_x", "grad_weight")):
        if type(value) is not torch.Tensor:
            fail(f"{call}: {what} should be a plain torch.Tensor, got "
                          f"{type(value).__name__}.", "type")
        if not value.is_floating_point():
            fail(f"{call}: {what} should be a floating-point tensor, got {value.dtype}.", "type")
    return result[0].detach(), result[1].detach()


def _compare_gradient(got: torch.Tensor, expected: torch.Tensor, what: str,
                      shape_hints: dict, candidates: list) -> str | None:
    """None when ``got`` is right; fails at once for a shape or a named mistake; otherwise
    returns the message for a wrong value (the caller may add what the case has that others
    lack). Never shows an expected value."""
    if tuple(got.shape) != tuple(expected.shape):
        kind, hint = shape_hints.get(tuple(got.shape), ("shape", None))
        fail(f"{what}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}."
              + (f" Hint: {hint}" if hint else ""), kind)
    got = got.to(expected.dtype)
    if not torch.isfinite(got).all():
        fail(f"{what}: {int((~torch.isfinite(got)).sum())} value(s) are NaN or "
                            f"infinite.", "not_finite")
    error = _relative_error(got, expected)
    if error <= _GRAD_TOLERANCE:
        return None
    for candidate, kind, hint in candidates:
        if candidate is not None and tuple(candidate.shape) == tuple(got.shape) \
                and _relative_error(got, candidate) <= _GRAD_TOLERANCE:
            fail(f"{what}: wrong values. Hint: {hint}", kind)
    worst = tuple(int(i) for i in torch.unravel_index((got - expected).abs().argmax(),
                                                      expected.shape))
    return (f"{what}: wrong values (relative error {error:.2g}, largest at index {worst}; a "
            f"correct gradient is within {_GRAD_TOLERANCE:g}).")


def _depthwise_case(case: tuple, g: torch.Generator):
    n, c, h, w, k_h, k_w, s, p = case
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(c, 1, k_h, k_w, generator=g, dtype=torch.float64)
    out_h, out_w = (h + 2 * p - k_h) // s + 1, (w + 2 * p - k_w) // s + 1
    grad_out = torch.randn(n, c, out_h, out_w, generator=g, dtype=torch.float64)
    return x, weight, grad_out


def _autograd_depthwise(x, weight, grad_out, s, p, pad_first=False):
    """(grad_x, grad_weight) by autograd; with ``pad_first`` the gradient of the padded input."""
    x = (_F.pad(x, (p, p, p, p)) if pad_first else x).clone().requires_grad_()
    weight = weight.clone().requires_grad_()
    out = _CONV2D(x, weight, stride=s, padding=0 if pad_first else p, groups=x.shape[1])
    return torch.autograd.grad(out, (x, weight), grad_out)


def _undilated(x, weight, grad_out, s, p):
    """The input gradient a student gets by forgetting to dilate grad_out by the stride: the
    stride-1 transposed convolution, zero-filled or cut to the padded input, then cropped."""
    n, c, h, w = x.shape
    k_h, k_w = weight.shape[2:]
    out_h, out_w = grad_out.shape[2:]
    full = _autograd_depthwise(torch.zeros(n, c, out_h + k_h - 1, out_w + k_w - 1,
                                           dtype=x.dtype), weight, grad_out, 1, 0)[0]
    padded = torch.zeros(n, c, h + 2 * p, w + 2 * p, dtype=x.dtype)
    rows, cols = min(full.shape[2], h + 2 * p), min(full.shape[3], w + 2 * p)
    padded[..., :rows, :cols] = full[..., :rows, :cols]
    return padded[..., p:p + h, p:p + w]


def _depthwise_diagnosis(case: tuple, x, weight, grad_out, got_x, got_w) -> str | None:
    n, c, h, w, k_h, k_w, s, p = case
    call = describe_call("depthwise_backward", (grad_out, x, weight), dict(stride=s, padding=p))
    grad_x, grad_w = _autograd_depthwise(x, weight, grad_out, s, p)
    out_h, out_w = grad_out.shape[2:]
    padded_x, _ = _autograd_depthwise(x, weight, grad_out, s, p, pad_first=True)
    flip = "the input gradient is grad_out sent back through the same taps: as a convolution, " \
           "that is grad_out convolved with the kernel flipped in both directions (rotated by " \
           "180 degrees)"
    x_shapes = {
        (n, c, h + 2 * p, w + 2 * p): ("padding_not_cropped",
                                       "that is the gradient of the PADDED input: the padding "
                                       "is not part of x, so drop it on every side."),
        (n, c, out_h + k_h - 1 - 2 * p, out_w + k_w - 1 - 2 * p): (
            "stride_not_dilated", f"with stride {s}, neighbouring outputs read input pixels {s} "
            f"apart: before the transposed convolution, spread grad_out out with {s} - 1 zeros "
            f"between its values (dilate it by the stride).") if s > 1 else ("shape", None),
        (n, c, s * (out_h - 1) + k_h - 2 * p, s * (out_w - 1) + k_w - 2 * p): (
            "remainder_dropped", "when the stride does not divide the padded input evenly, the "
            "last input rows (or columns) are never read: their gradient is zero, but grad_x "
            "still has x's shape (add them back as zeros)."),
    }
    x_candidates = [
        (_autograd_depthwise(x, weight.flip(-2, -1), grad_out, s, p)[0], "missing_flip",
         f"yours matches the kernel NOT flipped: {flip}."),
        (_autograd_depthwise(x, weight.transpose(-2, -1), grad_out, s, p)[0]
         if k_h == k_w else None, "transposed_kernel",
         "yours matches the kernel transposed (rows and columns swapped): flipping reverses "
         "both axes, it does not transpose."),
        (_autograd_depthwise(x, weight.flip(-2, -1).transpose(-2, -1), grad_out, s, p)[0]
         if k_h == k_w else None, "transposed_kernel",
         "yours matches the kernel transposed (rows and columns swapped): flipping reverses "
         "both axes, it does not transpose."),
        (_undilated(x, weight, grad_out, s, p) if s > 1 else None, "stride_not_dilated",
         f"yours matches grad_out sent back as if the stride were 1: with stride {s}, "
         f"neighbouring outputs read input pixels {s} apart, so spread grad_out out with "
         f"{s} - 1 zeros between its values (dilate it by the stride) before the transposed "
         f"convolution."),
        (padded_x[..., :h, :w], "padding_cropped_wrong",
         "you cropped the padded input's gradient at the wrong place: the padding adds rows "
         "and columns on BOTH sides, so drop the same number at the start and at the end."),
        (padded_x[..., 2 * p:2 * p + h, 2 * p:2 * p + w] if p else None, "padding_cropped_wrong",
         "you cropped the padded input's gradient at the wrong place: the padding adds rows "
         "and columns on BOTH sides, so drop the same number at the start and at the end."),
    ]
    w_shapes = {
        (n, c, 1, k_h, k_w): ("batch_not_summed", "a weight is shared by every image of the "
                                                  "batch: sum its gradient over the batch."),
        (n, c, k_h, k_w): ("batch_not_summed", "a weight is shared by every image of the "
                                               "batch: sum its gradient over the batch."),
        (c, 1, k_w, k_h) if k_h != k_w else None: (
            "transposed_kernel", "rows and columns of the kernel are swapped."),
        (c, k_h, k_w): ("shape", "return it with the weight's own shape (C, 1, K_h, K_w)."),
    }
    first_only = _autograd_depthwise(x[:1], weight, grad_out[:1], s, p)[1] if n > 1 else None
    w_candidates = [
        (grad_w.flip(-2, -1), "flipped_weight_gradient",
         "the weight gradient needs no flip: tap (a, b) of the kernel meets, at output (i, j), "
         "the input pixel at (stride * i + a, stride * j + b) of the padded input."),
        (grad_w.transpose(-2, -1) if k_h == k_w else None, "transposed_kernel",
         "rows and columns of the kernel are swapped."),
        (first_only, "batch_not_summed",
         "yours matches the first image alone: sum over every image of the batch."),
        (grad_w / n if n > 1 else None, "mean_not_sum",
         "yours is the batch MEAN: the loss is a sum over the outputs, so sum over the batch."),
    ]
    wrong = _compare_gradient(got_x, grad_x, f"{call}: grad_x", x_shapes, x_candidates)
    if wrong is None:
        wrong = _compare_gradient(got_w, grad_w, f"{call}: grad_weight",
                                  {k: v for k, v in w_shapes.items() if k}, w_candidates)
    return wrong


@value_only
def check_depthwise_backward(depthwise_backward: Callable,
                             cases: Sequence[tuple] = DEPTHWISE_BACKWARD_CASES,
                             seed: int = VISIBLE_SEED + 5) -> None:
    """``depthwise_backward(grad_out, x, weight, stride=1, padding=0)`` -> (grad_x, grad_weight)
    for a depthwise convolution (weight (C, 1, K_h, K_w)), against autograd through conv2d, on
    float64 cases (N, C, H, W, K_h, K_w, stride, padding); then whether it is vectorised: its
    number of torch operations must not grow with the image size."""
    g = torch.Generator().manual_seed(seed)
    tensors = [_depthwise_case(case, g) for case in cases]
    answers = []
    for case, (x, weight, grad_out) in zip(cases, tensors):
        s, p = case[6:]
        call = describe_call("depthwise_backward", (grad_out, x, weight), dict(stride=s, padding=p))
        result = _run_backward(depthwise_backward, "depthwise_backward", (grad_out, x, weight),
                               dict(stride=s, padding=p))
        answers.append(_pair_of_tensors(result, call))
    # Expected values only now, after every call of the student's code.
    passed_cases = []
    for case, (x, weight, grad_out), (got_x, got_w) in zip(cases, tensors, answers):
        wrong = _depthwise_diagnosis(case, x, weight, grad_out, got_x, got_w)
        if wrong is None:
            passed_cases.append(case)
            continue
        s, p = case[6:]
        notes = []
        if s > 1 and any(c[6] == 1 for c in passed_cases):
            notes.append(f"your gradient is right on a case with stride 1 and wrong with stride "
                         f"{s}: output (i, j) reads the padded input from row stride * i and "
                         f"column stride * j, so its gradient goes back there")
        if p > 0 and any(c[7] == 0 and c[6] == s for c in passed_cases):
            notes.append(f"it is right without padding and wrong with padding {p}: taps that "
                         f"fall in the padding read zeros, and their gradient is not part of x")
        fail(wrong + (" Hint: " + "; ".join(notes) + "." if notes else ""), "wrong_values")
    # Vectorised: the same layer on a small and a 4x larger image must run about as many torch
    # operations (a loop over output positions runs 16 times as many).
    counts = []
    for size in (6, 24):
        x = torch.randn(1, 2, size, size, generator=g, dtype=torch.float64)
        weight = torch.randn(2, 1, 3, 3, generator=g, dtype=torch.float64)
        grad_out = torch.randn(1, 2, size // 2, size // 2, generator=g, dtype=torch.float64)
        counts.append(_run_backward(depthwise_backward, "depthwise_backward",
                                    (grad_out, x, weight), dict(stride=2, padding=1),
                                    count=True)[1])
    if counts[1] > 2 * counts[0] + 20:
        fail(f"depthwise_backward is right but not vectorised: it runs {counts[0]} torch "
              f"operations for a 6x6 image and {counts[1]} for a 24x24 one (same layer). A Python "
              f"loop over pixels is slow; loop at most over the K_h * K_w kernel taps, or use "
              f"F.unfold / F.fold.", "not_vectorised")
    passed(f"depthwise_backward matches autograd on {len(cases)} cases (stride, padding, "
           f"rectangular kernels) and is vectorised.")


@value_only
def check_pointwise_backward(pointwise_backward: Callable,
                             cases: Sequence[tuple] = POINTWISE_BACKWARD_CASES,
                             seed: int = VISIBLE_SEED + 6) -> None:
    """``pointwise_backward(grad_out, x, weight)`` -> (grad_x, grad_weight) of a 1x1 convolution
    (weight (M, C, 1, 1)) against autograd, on float64 cases (N, C, M, H, W)."""
    g = torch.Generator().manual_seed(seed)
    tensors = []
    for n, c, m, h, w in cases:
        tensors.append((torch.randn(n, c, h, w, generator=g, dtype=torch.float64),
                        torch.randn(m, c, 1, 1, generator=g, dtype=torch.float64),
                        torch.randn(n, m, h, w, generator=g, dtype=torch.float64)))
    answers = []
    for x, weight, grad_out in tensors:
        call = describe_call("pointwise_backward", (grad_out, x, weight))
        result = _run_backward(pointwise_backward, "pointwise_backward", (grad_out, x, weight), {})
        answers.append(_pair_of_tensors(result, call))
    for (n, c, m, h, w), (x, weight, grad_out), (got_x, got_w) in zip(cases, tensors, answers):
        call = describe_call("pointwise_backward", (grad_out, x, weight))
        xa, wa = x.clone().requires_grad_(), weight.clone().requires_grad_()
        grad_x, grad_w = torch.autograd.grad(_CONV2D(xa, wa), (xa, wa), grad_out)
        transposed = ("transposed_weight", "the weight maps C channels to M; going back, the "
                                           "gradient is multiplied by its TRANSPOSE (W^T g).")
        wrong = _compare_gradient(
            got_x, grad_x, f"{call}: grad_x", {(n, m, h, w): transposed},
            [(torch.einsum("mc,nchw->nmhw", weight[:, :, 0, 0], grad_out) if c == m else None,
              *transposed),
             (torch.einsum("cm,nmhw->nchw", weight.reshape(c, m), grad_out),
              "reshaped_not_transposed", "reshaping the (M, C) weight to (C, M) reorders its "
                                         "numbers but does not transpose it: use .T (or swap "
                                         "the indices in einsum).")])
        if wrong is None:
            per_image = ("batch_not_summed", "a weight is used at every pixel of every image: "
                                             "sum its gradient over the batch and the pixels.")
            swapped = ("transposed_weight_gradient", "dL/dW[m, c] is the sum of g[m] * x[c]: "
                                                     "its rows follow the OUTPUT channels.")
            wrong = _compare_gradient(
                got_w, grad_w, f"{call}: grad_weight",
                {(c, m, 1, 1) if c != m else None: swapped, (m, c): (
                    "shape", "return it with the weight's own shape (M, C, 1, 1)."),
                 (n, m, c, 1, 1): per_image, (n, m, c): per_image, (m, c, h, w): per_image,
                 (n, m, c, h, w): per_image},
                [(grad_w.transpose(0, 1) if c == m else None, *swapped),
                 (grad_w / (n * h * w), "mean_not_sum",
                  "yours is a MEAN over the batch and the pixels: the loss sums over them, so "
                  "sum."),
                 (grad_w / n if n > 1 else None, "mean_not_sum",
                  "yours is the batch MEAN: the loss sums over the images, so sum.")])
        if wrong is not None:
            fail(wrong, "wrong_values")
    passed(f"pointwise_backward matches autograd on {len(cases)} cases.")


def _not_restored(f: Callable, x: torch.Tensor, h: float) -> torch.Tensor:
    """A central difference that leaves each element at x - h: later elements see moved ones."""
    x, grad = x.clone(), torch.zeros_like(x)
    for i in range(x.numel()):
        x.view(-1)[i] += h
        plus = float(f(x))
        x.view(-1)[i] -= 2 * h
        grad.view(-1)[i] = (plus - float(f(x))) / (2 * h)
    return grad


def _make_f(r: torch.Tensor, q: torch.Tensor, a: float, calls: list) -> Callable:
    """f(x) = sum(r * sin(a * x)) + (q . x)^2 / 2, counting its calls in ``calls``."""
    def f(t):
        calls.append(1)
        return (r * torch.sin(a * t)).sum() + 0.5 * (q * t).sum() ** 2
    return f


def _numerical_probe(numerical_gradient: Callable, r: torch.Tensor, q: torch.Tensor, a: float,
                     x: torch.Tensor, h: float) -> tuple[Any, int]:
    """The student's half of :func:`check_numerical_gradient`, run where the function lives
    (:func:`run_probe`): its result on f (built here), with autograd refused, and how many
    times it called f."""
    calls: list = []
    with _NoAutograd("compute the gradient from values of f alone: autograd is what you will "
                     "compare it with."):
        got = call_student(numerical_gradient, _make_f(r, q, a, calls), x, h,
                           name="numerical_gradient")
    return got, len(calls)


@value_only
def check_numerical_gradient(numerical_gradient: Callable,
                             cases: Sequence[tuple] = NUMERICAL_GRADIENT_CASES,
                             seed: int = VISIBLE_SEED + 7) -> None:
    """``numerical_gradient(f, x, h)``: the central difference of a scalar ``f`` at every element
    of ``x``, compared with the exact gradient of f(x) = sum(r * sin(a * x)) + (q . x)^2 / 2 (cases:
    shape of x, a, h), within the central difference's own error. The square couples the
    elements, so an element left perturbed changes the next ones' results."""
    g = torch.Generator().manual_seed(seed)
    problems = [tuple(torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(3))
                + (a, h) for shape, a, h in cases]

    answers = []
    for x, r, q, a, h in problems:
        with refusing(_BACKWARD_ADVICE, references=course_references("backward")):
            answers.append(run_probe(_numerical_probe, numerical_gradient, r, q, a, x, h,
                                     name="numerical_gradient"))
    for (shape, _, _), (x, r, q, a, h), (got, n_calls) in zip(cases, problems, answers):
        call = f"numerical_gradient(f, <tensor of shape {tuple(shape)}>, h={h:g})"
        if type(got) is not torch.Tensor:
            fail(f"{call}: expected a torch.Tensor shaped like x, got "
                          f"{type(got).__name__}.", "type")
        if tuple(got.shape) != tuple(x.shape):
            fail(f"{call}: shape {tuple(got.shape)}, expected x's shape "
                           f"{tuple(x.shape)} (one partial derivative per element).", "shape")
        # The exact gradient, independent of any difference quotient; a central difference is
        # within h^2/6 times the largest third derivative of it (the square's is zero).
        exact = r * a * torch.cos(a * x) + q * (q * x).sum()
        slack = 2 * h * h / 6 * a ** 3 * r.abs().max().item() + 1e-9
        f = _make_f(r, q, a, [])
        one_sided = torch.stack([(f(x + h * e.view(x.shape)) - f(x)) / h
                                 for e in torch.eye(x.numel(), dtype=x.dtype)]).view(x.shape)
        candidates = {
            "one_sided_difference": (one_sided, "yours matches the one-sided difference "
                                                "(f(x + h) - f(x)) / h, whose error is O(h); the "
                                                "central difference (f(x + h) - f(x - h)) / (2h) "
                                                "is O(h^2)."),
            "central_difference_spans_2h": (2 * exact, "the central difference spans 2h, from "
                                                       "x - h to x + h: divide by 2h."),
            "input_changed": (_not_restored(f, x, h), "each element is left moved after its "
                                                      "difference, so the next ones are taken at "
                                                      "the wrong point: put it back (or perturb "
                                                      "a copy)."),
        }
        got = got.detach().to(torch.float64)
        if (got - exact).abs().max().item() <= slack:
            if n_calls > 2 * x.numel() + 2:
                fail(f"{call}: right, but f was called {n_calls} times; a "
                                        f"central difference needs two calls per element.", "too_many_calls")
            continue
        for kind, (candidate, hint) in candidates.items():
            if (got - candidate).abs().max().item() <= slack:
                fail(f"{call}: wrong values. Hint: {hint}", kind)
        worst = tuple(int(i) for i in torch.unravel_index((got - exact).abs().argmax(), x.shape))
        fail(f"{call}: wrong values, largest error at index {worst}. Perturb "
                              f"ONE element at a time by +h and -h and divide the change of f "
                              f"by 2h.", "wrong_values")
    passed(f"numerical_gradient is a central difference on {len(cases)} cases.")
