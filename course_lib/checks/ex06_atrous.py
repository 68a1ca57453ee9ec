"""Checks for exercise 6, atrous (dilated) convolution.

References: zero-inserted kernels from :func:`course_lib.atrous.dilate_kernel` (itself tested equal to
``F.conv2d(dilation=r)``), receptive fields *measured* with autograd
(:func:`course_lib.atrous.measured_receptive_field`, independent of the closed-form formula the
student writes), convolutions from the ``F.conv2d`` captured at import (``REFERENCE``), and mult-adds
from course_lib.costs (checked against ``FlopCounterMode`` in tests/test_checks_ex06.py).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from course_lib import atrous
from course_lib.checks import (CheckFailed, REFERENCE, answer, as_int, call_each, call_student,
                               course_references, describe_call, expect_int, expect_tensor, fail,
                               named_mistakes, passed, refusing, run_probe, value_only)

VISIBLE_SEED = 606
# (out_channels, in_channels, K_h, K_w, rate) for part 1: square AND rectangular kernels
DILATE_CASES = [(1, 1, 3, 3, 2), (4, 2, 3, 3, 1), (2, 3, 2, 5, 3), (1, 2, 4, 1, 2),
                (3, 1, 5, 3, 4), (2, 2, 1, 1, 3)]
# stacks of (kernel_size, stride, dilation) for part 2
STACKS = [[(3, 1, 1)], [(3, 1, 1)] * 3, [(3, 1, 2)] * 3, [(3, 2, 1), (3, 1, 1)],
          [(7, 2, 1), (3, 2, 1), (3, 1, 2)], [(1, 3, 1), (5, 1, 3)], [(2, 2, 2), (4, 3, 1)]]
# (kernel_size, rate) for part 3
SAME_PAIRS = [(3, 1), (3, 2), (3, 6), (5, 3), (1, 4), (7, 2)]
# part 4: stacks of 3x3 convs (chapter 6 works through rates (2, 2, 2) and (1, 2, 5))
EQUAL_RATES = (3, 3, 3, 3)
HYBRID_RATES = (1, 2, 3, 5)
# part 5: one atrous branch on a 65 x 65 map (chapter 6 works through DeepLab's rate-12 ASPP branch
# on 2048 channels at 33 x 33)
BRANCH = dict(in_channels=512, out_channels=128, kernel_size=3, rate=6, size=65)


def _dilated(dilate_kernel: Callable, weight: torch.Tensor, r: int) -> tuple[Any, bool]:
    """The student's half of :func:`check_dilate_kernel`, run where the function lives (in the
    re-check, in the student's process: :func:`run_probe`): its result, and whether that is the
    very tensor it was given (or a view of it). ``weight`` is already a copy (run_probe)."""
    got = dilate_kernel(weight, r)
    return got, bool(isinstance(got, torch.Tensor) and got.numel() and (
        got.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr()))


@value_only
def check_dilate_kernel(dilate_kernel: Callable,
                        cases: Sequence[tuple[int, int, int, int, int]] = DILATE_CASES,
                        seed: int = VISIBLE_SEED) -> None:
    """``dilate_kernel(weight, dilation)`` returns the zero-inserted kernel, and a plain conv with
    it equals ``F.conv2d(..., dilation=dilation)``. Cases are (M, C, K_h, K_w, rate), square and
    rectangular; weights and inputs come from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    weights = [(torch.randn(m, c, kh, kw, generator=g), r) for m, c, kh, kw, r in cases]
    advice = "dilate_kernel must insert the zeros itself, not call course_lib.atrous."

    answers = []
    with refusing(advice, references=course_references("atrous")):
        for weight, r in weights:  # every call first; a failure is raised when its case comes up
            try:
                answers.append(run_probe(_dilated, dilate_kernel, weight, r,
                                         name="dilate_kernel"))
            except CheckFailed as exc:
                answers.append(exc)
    for (weight, r), pair in zip(weights, answers):
        got, aliased = answer(pair)
        call = describe_call("dilate_kernel", (weight, r))
        expected = atrous.dilate_kernel(weight, r)
        if isinstance(got, torch.Tensor) and got.shape != expected.shape:
            kh, kw = weight.shape[-2:]
            hint = ""
            if tuple(got.shape[-2:]) == (kh * r, kw * r):
                hint = (" Hint: K taps have only K - 1 gaps between them; do not add zeros after "
                        "the last tap (the span is K + (K-1)(r-1)).")
            elif tuple(got.shape[-2:]) == (kh, kw) and r > 1:
                hint = " Hint: the result must be larger than the kernel: insert r - 1 zeros."
            elif kh != kw and tuple(got.shape[-2:]) in ((expected.shape[-2],) * 2,
                                                        (expected.shape[-1],) * 2):
                hint = (" Hint: the kernel is not square here: dilate K_h and K_w each with its "
                        "own size.")
            fail(f"{call}: wrong shape {tuple(got.shape)}, expected {tuple(expected.shape)}." + hint)
        if aliased:
            fail(f"{call} returned the weight itself (or a view of it), not a new tensor: a "
                 f"caller who then changes one changes the other. Build a new kernel (for rate 1, "
                 f"a copy: weight.clone()).")
        expect_tensor(got, expected, call, atol=0, rtol=0)
        # The point of the exercise: the zero-inserted kernel *is* the dilated conv.
        x = torch.randn(1, weight.shape[1], expected.shape[-2] + 4, expected.shape[-1] + 3,
                        generator=g)
        expect_tensor(REFERENCE["conv2d"](x, got), REFERENCE["conv2d"](x, weight, dilation=r),
                      f"F.conv2d(x, {call}) vs F.conv2d(x, weight, dilation={r})")
    passed(f"dilate_kernel builds the zero-inserted kernel, equal to F.conv2d(dilation=r), on "
           f"{len(cases)} cases (square and rectangular kernels).")


def _wrong_receptive_fields(layers: list[tuple[int, int, int]]) -> dict[int, str]:
    """Sizes that typical mistakes produce, with advice."""
    no_jump = 1 + sum(d * (k - 1) for k, s, d in layers)
    no_dilation = atrous.receptive_field([(k, s, 1) for k, s, d in layers]).size
    jump_too_early, jump = 1, 1
    for k, s, d in layers:
        jump *= s
        jump_too_early += d * (k - 1) * jump
    return {
        no_jump: "after a strided layer each later tap is `jump` input pixels apart: multiply "
                 "(K_eff - 1) by the product of the EARLIER strides.",
        no_dilation: "use the effective kernel size K + (K-1)(r-1), not K.",
        jump_too_early: "a layer's own stride does not widen its own field: update the jump "
                        "AFTER adding (K_eff - 1) * jump.",
    }


@value_only
def check_receptive_field(receptive_field: Callable,
                          stacks: Sequence[Sequence[tuple[int, int, int]]] = STACKS) -> None:
    """``receptive_field(layers) -> (size, jump)`` against a gradient measurement; ``stacks`` are
    lists of (kernel_size, stride, dilation)."""
    advice = "receptive_field must apply the recurrence itself, not call course_lib.atrous."
    with refusing(advice, references=course_references("atrous")):
        answers = [call_student(receptive_field, [tuple(layer) for layer in layers],
                                name="receptive_field") for layers in stacks]
    for layers, got in zip(stacks, answers):
        call = describe_call("receptive_field", (list(layers),))
        try:
            size, jump = got
        except (TypeError, ValueError):
            fail(f"{call} should return a pair (size, jump), got {got!r}.")
        size, jump = as_int(size, f"{call}: size"), as_int(jump, f"{call}: jump")
        expected = atrous.measured_receptive_field(list(layers))
        expect_int(size, expected.size, f"{call}: size (measured with gradients)",
                   _wrong_receptive_fields(list(layers)))
        expect_int(jump, expected.jump, f"{call}: jump",
                   {1: "the jump is the product of all the strides."})
    passed(f"receptive_field agrees with gradient measurements on {len(stacks)} stacks.")


def same_cases(pairs: Sequence[tuple[int, int]], seed: int
               ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]]:
    """(x, weight, bias, rate) for each (kernel_size, rate) pair, sizes and values from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    cases = []
    for i, (k, r) in enumerate(pairs):
        c, m = (int(torch.randint(1, 6, (1,), generator=g)) for _ in range(2))
        span = r * (k - 1) + 1
        h = int(torch.randint(max(span // 2, 5), span + 12, (1,), generator=g))
        w = int(torch.randint(max(span // 2, 5), span + 12, (1,), generator=g))
        x = torch.randn(int(torch.randint(1, 3, (1,), generator=g)), c, h, w, generator=g)
        weight = torch.randn(m, c, k, k, generator=g)
        bias = torch.randn(m, generator=g) if i % 2 == 0 else None
        cases.append((x, weight, bias, r))
    return cases


@value_only
def check_atrous_conv_same(atrous_conv_same: Callable,
                           pairs: Sequence[tuple[int, int]] = SAME_PAIRS,
                           seed: int = VISIBLE_SEED + 3) -> None:
    """``atrous_conv_same(x, weight, bias=None, dilation=1)``: stride-1 atrous conv, output the
    same H x W as the input; one random case per (kernel_size, rate) pair."""
    cases = same_cases(pairs, seed)
    advice = ("atrous_conv_same must compute the padding itself, as a number from K and the rate, "
              "and pass it to F.conv2d: padding='same' lets PyTorch work out exactly what this "
              "part asks, and course_lib.atrous is what the check compares against.")
    with refusing(advice, named_padding=True, references=course_references("atrous")):
        answers = call_each(atrous_conv_same, [((x, weight), dict(bias=bias, dilation=r))
                                               for x, weight, bias, r in cases],
                            name="atrous_conv_same")
    for (x, weight, bias, r), got in zip(cases, answers):
        k = weight.shape[-1]
        call = describe_call("atrous_conv_same", (x, weight), {"bias": bias, "dilation": r})
        if isinstance(got, CheckFailed) and r > 1 and "size" in str(got):
            raise CheckFailed(f"{got} Hint: does the padding take the rate into account? A "
                              f"{k}x{k} kernel at rate {r} spans r * (K - 1) + 1 pixels.") from None
        got = answer(got)
        expected = REFERENCE["conv2d"](x, weight, bias, padding=r * (k - 1) // 2, dilation=r)
        if isinstance(got, torch.Tensor) and got.shape != expected.shape:
            hint = ""
            if got.dim() == 4 and tuple(got.shape[-2:]) == tuple(
                    s - (r - 1) * (k - 1) for s in x.shape[-2:]):
                hint = (f" Hint: the padding ignores the rate. A {k}x{k} kernel at rate {r} spans "
                        f"r * (K - 1) + 1 pixels, so 'same' padding is r * (K - 1) // 2, not "
                        f"(K - 1) // 2.")
            fail(f"{call}: output shape {tuple(got.shape)}, but a 'same' conv keeps the input's "
                 f"H x W: expected {tuple(expected.shape)}." + hint)
        expect_tensor(got, expected, call)
    passed(f"atrous_conv_same keeps H x W and matches F.conv2d on {len(cases)} cases.")


@value_only
def check_gridding(equal_field: Any, equal_read: Any, hybrid_read: Any) -> None:
    """3x3 convs at the rates :data:`EQUAL_RATES`: field width and pixels read; at
    :data:`HYBRID_RATES`: pixels read. Measured from the gradient of one output pixel."""
    answers = (as_int(equal_field, "equal_field"), as_int(equal_read, "equal_read"),
               as_int(hybrid_read, "hybrid_read"))
    equal = atrous.sampled_pixels([(3, 1, r) for r in EQUAL_RATES])
    field = equal.shape[-1]
    rate = EQUAL_RATES[0]
    expect_int(answers[0], field, "equal_field", named_mistakes([
        (1 + 2 * len(EQUAL_RATES), f"that is rate 1: with rate {rate} each layer adds "
                                   f"{rate} * (3 - 1) pixels."),
        (field * field, "give the WIDTH of the field (one axis), not its area.")]))
    read = int((equal > 0).sum())
    expect_int(answers[1], read, "equal_read", named_mistakes([
        (field * field, f"not every pixel in the field is read: every tap offset is a multiple "
                        f"of {rate}, so their sums are too - only the rows and columns at "
                        f"multiples of {rate} are read."),
        (int(round(read ** 0.5)), "count pixels in 2-D (rows x columns), not along one axis.")]))
    hybrid = atrous.sampled_pixels([(3, 1, r) for r in HYBRID_RATES])
    hybrid_field = hybrid.shape[-1]
    expect_int(answers[2], int((hybrid > 0).sum()), "hybrid_read",
               {hybrid_field: "count pixels in 2-D (rows x columns), not along one axis."})
    passed(f"rates {EQUAL_RATES}: a {field}-wide field with only {read} of {field * field} pixels "
           f"read; rates {HYBRID_RATES}: all {hybrid_field * hybrid_field} pixels of a "
           f"{hybrid_field}-wide field.")


def branch_macs() -> tuple[int, int]:
    """(full, separable) MACs of :data:`BRANCH`, from :func:`course_lib.atrous.compare_atrous_costs`
    (course_lib.costs' formulas; tests/test_checks_ex06.py checks them against FlopCounterMode on
    real layers at the rate - measuring here would cost the student ~5 s of FlopCounterMode start-up)."""
    result = atrous.compare_atrous_costs(BRANCH["in_channels"], BRANCH["out_channels"],
                                         BRANCH["kernel_size"], BRANCH["size"])
    return result.full_macs, result.separable_macs


@value_only
def check_branch_costs(full_macs: Any, separable_macs: Any) -> None:
    """MACs of the atrous branch :data:`BRANCH` (no bias): a full atrous conv and an atrous
    separable one."""
    full_macs, separable_macs = as_int(full_macs, "full_macs"), as_int(separable_macs,
                                                                       "separable_macs")
    c, m, k, r, size = (BRANCH[key] for key in
                        ("in_channels", "out_channels", "kernel_size", "rate", "size"))
    expected_full, expected_sep = branch_macs()
    span = r * (k - 1) + 1
    expect_int(full_macs, expected_full, "full_macs",
               {span * span * c * m * size * size:
                    "the rate spreads the taps apart but adds none: a 3x3 atrous kernel still "
                    "has 9 taps per input channel, not K_eff x K_eff.",
                2 * expected_full: "that is FLOPs; count each multiply-add once."})
    expect_int(separable_macs, expected_sep, "separable_macs",
               {span * span * c * size * size + c * m * size * size:
                    "the depthwise conv has 9 taps per channel whatever the rate.",
                k * k * c * m * size * size + c * m * size * size:
                    "the depthwise conv filters each channel on its own: K*K*C*H*W, not "
                    "K*K*C*M*H*W.",
                2 * expected_sep: "that is FLOPs; count each multiply-add once."})
    passed(f"full atrous branch {expected_full:,} MACs, atrous separable {expected_sep:,} MACs "
           f"({expected_full / expected_sep:.1f}x fewer).")
