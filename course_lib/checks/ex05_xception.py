"""Checks for exercise 5, grouped convolution and the Xception hypothesis."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from course_lib import xception
from course_lib.separable import DepthwiseSeparableConv2d
from course_lib.checks import (COUNT_ADVICE, CheckFailed, REFERENCE, as_int, as_number,
                               call_student, course_references, describe_call, expect_close,
                               expect_int, expect_tensor, fail, named_mistakes, passed, refusing,
                               tensors_match, value_only)
from course_lib.checks.cases import ConvCase

VISIBLE_SEED = 505
# (in_channels, out_channels, kernel_size, groups, bias) for part 1
PARAM_CASES = [(256, 256, 3, 1, False), (256, 256, 3, 32, False), (32, 64, 3, 32, True),
               (12, 18, 5, 3, True), (8, 4, 1, 4, False), (6, 9, 2, 3, True)]
# (in_channels, towers, segment) for part 3
INCEPTION_CASES = [(8, 3, 4), (5, 2, 3), (1, 4, 2)]

# Part 4's questions, answered from course_lib, not typed in; other widths than the chapter's
# (256 channels, 128 -> 256), so its printed numbers are not the answers.
Q_CHANNELS = 384                 # first_cheaper_groups, extreme_params
Q_ORDER_IN, Q_ORDER_OUT = 96, 240    # order_difference


@value_only
def check_grouped_params(grouped_conv_params: Callable,
                         cases: Sequence[tuple[int, int, int, int, bool]] = PARAM_CASES) -> None:
    """``grouped_conv_params(in_channels, out_channels, kernel_size, groups, bias)`` against the
    parameters of a real ``nn.Conv2d(..., groups=groups)``; cases are those five arguments."""
    with refusing(COUNT_ADVICE, references=course_references("costs", "xception")):
        answers = [call_student(grouped_conv_params, *case, name="grouped_conv_params")
                   for case in cases]
    for (c, m, k, groups, bias), got in zip(cases, answers):
        layer = nn.Conv2d(c, m, k, groups=groups, bias=bias, device="meta")
        expected = sum(p.numel() for p in layer.parameters())
        b = m if bias else 0
        hints = {k * k * c * m + b: "each output channel sees only in_channels / groups input "
                                    "channels: divide by groups.",
                 k * k * (c // groups) * (m // groups) + b:
                     "divide by groups once: there are out_channels filters in total (groups x "
                     "out_channels / groups), each of size K x K x in_channels / groups."}
        if bias:
            hints[k * k * c * m // groups] = "you forgot the bias: one scalar per output channel."
            hints[k * k * c * m // groups + m // groups] = ("the bias is not grouped: still one "
                                                            "scalar per output channel.")
        args = (c, m, k, groups, bias)
        expect_int(got, expected, describe_call("grouped_conv_params", args), hints)
    passed(f"grouped_conv_params matches nn.Conv2d on {len(cases)} layers.")


def grouped_cases(seed: int, count: int) -> list[ConvCase]:
    """Random grouped-conv problems from ``seed``. The first has as many output as input channels
    (the buggy version passes it); the second and third always have more and fewer outputs than
    inputs; the others are random; all but the first use stride, padding and dilation."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(2, 2, 2), (3, 2, 4), (2, 3, 1)] + [
        (int(torch.randint(2, 5, (1,), generator=g)), int(torch.randint(1, 4, (1,), generator=g)),
         int(torch.randint(1, 5, (1,), generator=g))) for _ in range(max(0, count - 3))]
    cases = []
    for i, (groups, c_g, m_g) in enumerate(shapes[:count]):
        k = [1, 3, 3, 5][int(torch.randint(4, (1,), generator=g))]
        stride, padding, dilation = (1, 0, 1) if i == 0 else (
            int(torch.randint(1, 3, (1,), generator=g)), int(torch.randint(0, 3, (1,), generator=g)),
            2 if i in (1, 2) else int(torch.randint(1, 3, (1,), generator=g)))
        span = dilation * (k - 1) + 1
        size = int(torch.randint(max(span, 5), 12, (1,), generator=g))
        x = torch.randn(2, groups * c_g, size, size + 1, generator=g)
        weight = torch.randn(groups * m_g, c_g, k, k, generator=g)
        bias = torch.randn(groups * m_g, generator=g) if i % 2 == 0 else None
        cases.append(ConvCase(x, weight, bias, stride, padding, dilation, groups))
    return cases


@value_only
def check_grouped_conv(grouped_conv: Callable, seed: int = VISIBLE_SEED, count: int = 5) -> None:
    """``grouped_conv(x, weight, bias, stride, padding, dilation, groups)`` against F.conv2d,
    with grouped convolutions refused (at the dispatcher) while it runs; ``count`` random cases
    from ``seed``."""
    cases = grouped_cases(seed, count)
    advice = ("grouped_conv must do the grouping itself: slice the channels and call F.conv2d "
              "with groups=1 on each slice (a grouped convolution was called).")
    answers: list = []
    with refusing(advice, convolutions="grouped", references=course_references("xception")):
        for case in cases:
            try:
                answers.append(call_student(grouped_conv, case.x, case.weight, name="grouped_conv",
                                            **case.kwargs()))
            except CheckFailed as exc:   # reported when its case comes up, in order
                answers.append(exc)
    for case, got in zip(cases, answers):
        c, m = case.x.shape[1], case.weight.shape[0]
        call = describe_call("grouped_conv", (case.x, case.weight), case.kwargs())
        what = f"{call} [C={c}, M={m}, groups={case.groups}]"
        if isinstance(got, CheckFailed):
            if c != m and "raised" in str(got):
                raise CheckFailed(f"{got} Hint: group i reads input channels [i*C/g, (i+1)*C/g) "
                                  f"but owns weight rows (output channels) [i*M/g, (i+1)*M/g); "
                                  f"C/g and M/g differ here.") from None
            raise got
        expected = REFERENCE["conv2d"](case.x, case.weight, **case.kwargs())
        if type(got) is torch.Tensor and not tensors_match(got, expected):
            for wrong, hint in _likely_mistakes(case):
                if wrong is not None and tensors_match(got, wrong):
                    fail(f"{what}: wrong output; {hint}")
        expect_tensor(got, expected, what)
    passed(f"grouped_conv matches F.conv2d on {len(cases)} grouped cases, including "
           f"in_channels != out_channels.")


@value_only
def check_towers_to_grouped(towers_to_grouped: Callable,
                            cases: Sequence[tuple[int, int, int]] = INCEPTION_CASES,
                            seed: int = VISIBLE_SEED) -> None:
    """``towers_to_grouped(pointwise_weights, spatial_weights)`` -> (big 1x1 weight, grouped 3x3
    weight), checked by running the grouped form against a real simplified Inception module;
    cases are (in_channels, towers, segment), weights and inputs from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    for c, towers, segment in cases:
        module = xception.SimplifiedInception(c, towers, segment, bias=False).eval()
        with torch.no_grad():
            for parameter in module.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=g) * 0.5)
        pw = [t[0].weight.detach().clone() for t in module.towers]
        spatial = [t[2].weight.detach().clone() for t in module.towers]
        what = (f"towers_to_grouped(<{towers} towers: 1x1 weights {tuple(pw[0].shape)}, 3x3 "
                f"weights {tuple(spatial[0].shape)}>)")
        advice = ("towers_to_grouped must stack the weights itself, not call course_lib's "
                  "Inception modules.")
        with refusing(advice, references=course_references("xception")):
            result = call_student(towers_to_grouped, [w.clone() for w in pw],
                                  [w.clone() for w in spatial], name="towers_to_grouped")
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            fail(f"{what} should return a pair (pointwise_weight, grouped_weight), got "
                 f"{type(result).__name__}.")
        big, grouped = result
        width = towers * segment
        for name, tensor, shape, hint in (
                ("pointwise_weight", big, (width, c, 1, 1),
                 "stack the towers' 1x1 filters as output channels (dim 0)."),
                ("grouped_weight", grouped, (width, segment, 3, 3),
                 "a grouped conv's weight is (out_channels, in_channels / groups, K, K): stack "
                 "the towers' 3x3 weights along dim 0.")):
            if type(tensor) is not torch.Tensor:
                fail(f"{what}: {name} should be a tensor, got {type(tensor).__name__}.")
            if tensor.device.type != "cpu":  # a meta tensor has no values to convolve with
                fail(f"{what}: {name} is on {tensor.device}, expected the CPU (the towers' "
                     f"weights are CPU tensors: stack them, do not make new ones).", "device")
            if tuple(tensor.shape) != shape:
                fail(f"{what}: {name} has shape {tuple(tensor.shape)}, expected {shape}; {hint}")
        x = torch.randn(2, c, 7, 6, generator=g)
        with torch.no_grad():
            got = F.relu(REFERENCE["conv2d"](F.relu(REFERENCE["conv2d"](x, big.detach().float())),
                                        grouped.detach().float(), padding=1, groups=towers))
            expected = module(x)
        expect_tensor(got, expected, f"{what}: the grouped form's output (1x1 conv, ReLU, 3x3 conv "
                                     f"with groups={towers}, ReLU) vs the towers' output")
    passed(f"towers_to_grouped: the grouped form reproduces {len(cases)} Inception modules.")


def _spectrum_answer() -> int:
    pointwise = Q_CHANNELS * Q_CHANNELS
    return next(r.groups for r in xception.groups_spectrum(Q_CHANNELS, 3)
                if r.params < pointwise)


@value_only
def check_first_cheaper_groups(first_cheaper_groups: object) -> None:
    answer = as_int(first_cheaper_groups, "first_cheaper_groups")
    expected = _spectrum_answer()
    c = Q_CHANNELS
    hints = [(9, f"at groups = 9 the two costs would be equal; you need strictly fewer "
                 f"parameters, with groups dividing {c}."),
             (8, "at groups = 8 the 3x3 conv still has 9/8 of the 1x1 conv's parameters.")]
    hints += [(g, f"groups must divide the channel count ({c}).") for g in range(10, expected)
              if c % g]
    expect_int(answer, expected, "first_cheaper_groups", named_mistakes(hints))
    passed(f"from groups = {expected} on, the grouped 3x3 conv is cheaper than the 1x1 conv.")


@value_only
def check_extreme_params(extreme_params: object) -> None:
    answer = as_int(extreme_params, "extreme_params")
    module = xception.GroupedInception(Q_CHANNELS, Q_CHANNELS, 1, bias=False, activation=None)
    expected = sum(p.numel() for p in module.parameters())
    c = Q_CHANNELS
    expect_int(answer, expected, "extreme_params", named_mistakes([
        (9 * c * c + c * c, "that is a full 3x3 conv plus the 1x1 conv; the extreme version's "
                            "3x3 conv has one group per channel (depthwise)."),
        (9 * c, "that is only the depthwise conv; add the 1x1 conv."),
        (c * c, "that is only the 1x1 conv; add the depthwise 3x3 conv.")]))
    passed(f"the extreme Inception module ({c} -> {c}) has {expected:,} parameters.")


@value_only
def check_order_difference(order_difference: object) -> None:
    answer = as_int(order_difference, "order_difference")
    c, m = Q_ORDER_IN, Q_ORDER_OUT
    pw_dw = xception.GroupedInception(c, m, 1, bias=False, activation=None)
    dw_pw = DepthwiseSeparableConv2d(c, m, norm=False, activation=None, bias=False)
    expected = (sum(p.numel() for p in pw_dw.parameters())
                - sum(p.numel() for p in dw_pw.parameters()))
    expect_int(answer, expected, "order_difference", named_mistakes([
        (-expected, "subtract the other way round: pointwise-first minus depthwise-first."),
        (0, "the 1x1 convs are the same size, but the depthwise conv works on M channels in one "
            "order and on C in the other.")]))
    passed(f"pointwise-first has {expected:,} more parameters ({c} -> {m}, 3x3).")


@value_only
def check_middle_flow_share(middle_flow_share: object) -> None:
    """The middle flow's share of Xception's parameters, to within 0.0005: close enough for any
    rounding to 3 decimals, tight enough that leaving out BatchNorm's parameters (0.0015 less)
    fails."""
    answer = as_number(middle_flow_share, "middle_flow_share")
    if 1 < answer <= 100:
        fail(f"middle_flow_share: got {answer:g}; give a fraction between 0 and 1, not a "
             f"percentage.")
    with torch.device("meta"):
        net = xception.Xception()
    by_flow = xception.params_by_flow(net)
    total = sum(by_flow.values())
    expected = by_flow["middle flow"] / total
    no_bn = 8 * 3 * (9 * 728 + 728 * 728) / total
    expect_close(answer, expected, "middle_flow_share (to within 0.0005)", rel=0.0,
                 abs_tol=0.0005, hints={
                     100 * expected: "give a fraction between 0 and 1, not a percentage.",
                     no_bn: "count the BatchNorm after each separable conv too (2 parameters per "
                            "channel).",
                     8 * (9 * 728 + 728 * 728 + 2 * 728) / total:
                         "each of the 8 blocks has THREE separable convs."})
    passed(f"the middle flow holds {100 * expected:.1f}% of Xception's parameters.")


def _likely_mistakes(case: ConvCase) -> list[tuple[torch.Tensor | None, str]]:
    """What typical mistakes compute on ``case``, with the advice for each (None when the
    mistake cannot even run on this case)."""
    x, weight, groups = case.x, case.weight, case.groups
    c_g, m_g = x.shape[1] // groups, weight.shape[0] // groups
    kwargs = dict(stride=case.stride, padding=case.padding, dilation=case.dilation)

    def sliced(rows_per_group: int, **overrides: Any) -> torch.Tensor | None:
        args = dict(kwargs, **overrides)
        parts = [REFERENCE["conv2d"](x[:, i * c_g:(i + 1) * c_g],
                                weight[i * rows_per_group:(i + 1) * rows_per_group], None, **args)
                 for i in range(groups)]
        if any(p.shape[1] == 0 for p in parts):
            return None
        out = torch.cat(parts, dim=1)
        if case.bias is not None and out.shape[1] == case.bias.shape[0]:
            out = out + case.bias.view(1, -1, 1, 1)
        return out

    mistakes = []
    if c_g != m_g:
        try:
            mistakes.append((sliced(c_g), "this is still the bug: group i owns weight rows "
                                          "(output channels) [i*M/g, (i+1)*M/g), and M/g differs "
                                          "from C/g here."))
        except RuntimeError:
            pass
    for name, neutral in (("dilation", 1), ("stride", 1), ("padding", 0)):
        if kwargs[name] != neutral:
            mistakes.append((sliced(m_g, **{name: neutral}),
                             f"the {name} is missing: pass {name} on to every F.conv2d call."))
    if case.bias is not None:
        no_bias = ConvCase(x, weight, None, case.stride, case.padding, case.dilation, groups)
        mistakes.append((REFERENCE["conv2d"](x, weight, **no_bias.kwargs()),
                         "the bias is missing: add bias[m] to output channel m."))
    return mistakes
