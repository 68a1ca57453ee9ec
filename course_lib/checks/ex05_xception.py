"""Checks for exercise 5, grouped convolution and the Xception hypothesis."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from course_lib import xception
from course_lib.separable import DepthwiseSeparableConv2d
from course_lib.checks import (_REF, CheckFailed, call_student, describe_call, expect_close,
                               expect_int, expect_tensor, fail, passed)
from course_lib.checks.cases import ConvCase

VISIBLE_SEED, HIDDEN_SEED = 505, 50551

# Part 4's questions, answered from course_lib (the chapter's numbers), not typed in.
Q_CHANNELS = 256                 # first_cheaper_groups, extreme_params
Q_ORDER_IN, Q_ORDER_OUT = 128, 256   # order_difference


def _suffix(hidden: bool) -> str:
    return " (hidden)" if hidden else ""


# --- part 1: parameters of a grouped conv --------------------------------------------------------

def _param_cases(hidden: bool) -> list[tuple[int, int, int, int, bool]]:
    g = torch.Generator().manual_seed(HIDDEN_SEED if hidden else VISIBLE_SEED)
    cases = [(256, 256, 3, 1, False), (256, 256, 3, 32, False), (32, 64, 3, 32, True),
             (12, 18, 5, 3, True)]
    for _ in range(6):
        groups = int(torch.randint(1, 9, (1,), generator=g))
        c = groups * int(torch.randint(1, 9, (1,), generator=g))
        m = groups * int(torch.randint(1, 9, (1,), generator=g))
        cases.append((c, m, int(torch.randint(1, 6, (1,), generator=g)), groups,
                      bool(torch.randint(2, (1,), generator=g))))
    return cases


def check_grouped_params(grouped_conv_params: Callable, hidden: bool = False) -> None:
    """``grouped_conv_params(in_channels, out_channels, kernel_size, groups, bias)`` against the
    parameters of a real ``nn.Conv2d(..., groups=groups)``."""
    cases = _param_cases(hidden)
    for c, m, k, groups, bias in cases:
        layer = nn.Conv2d(c, m, k, groups=groups, bias=bias, device="meta")
        expected = sum(p.numel() for p in layer.parameters())
        b = m if bias else 0
        hints = {k * k * c * m + b: "each output channel sees only in_channels / groups input "
                                    "channels: divide by groups.",
                 k * k * (c // groups) * (m // groups) + b:
                     "divide by groups once: there are out_channels filters in total (groups x "
                     "out_channels / groups), each of size K x K x in_channels / groups.",
                 k * k * c * m // groups + m // groups if bias else -1:
                     "the bias is not grouped: still one scalar per output channel."}
        if bias:
            hints[k * k * c * m // groups] = "you forgot the bias: one scalar per output channel."
        hints.pop(expected, None)
        args = (c, m, k, groups, bias)
        expect_int(call_student(grouped_conv_params, *args), expected,
                   describe_call("grouped_conv_params", args), hints)
    passed(f"grouped_conv_params matches nn.Conv2d on {len(cases)} layers{_suffix(hidden)}.")


# --- part 2: grouped conv from slices (find and fix the bug) ---------------------------------------

def grouped_cases(hidden: bool) -> list[ConvCase]:
    """Random grouped-conv problems. The first has as many output as input channels (the buggy
    version passes it); the others mostly do not."""
    g = torch.Generator().manual_seed(HIDDEN_SEED if hidden else VISIBLE_SEED)
    shapes = [(2, 2, 2)] + [(int(torch.randint(2, 5, (1,), generator=g)),
                             int(torch.randint(1, 4, (1,), generator=g)),
                             int(torch.randint(1, 5, (1,), generator=g))) for _ in range(6)]
    shapes[1:3] = [(3, 2, 4), (2, 3, 1)]  # always one wider and one narrower output
    cases = []
    for i, (groups, c_g, m_g) in enumerate(shapes):
        k = [1, 3, 3, 5][int(torch.randint(4, (1,), generator=g))]
        stride, padding, dilation = (1, 0, 1) if i == 0 else (
            int(torch.randint(1, 3, (1,), generator=g)), int(torch.randint(0, 3, (1,), generator=g)),
            int(torch.randint(1, 3, (1,), generator=g)))
        span = dilation * (k - 1) + 1
        size = int(torch.randint(max(span, 5), 12, (1,), generator=g))
        x = torch.randn(2, groups * c_g, size, size + 1, generator=g)
        weight = torch.randn(groups * m_g, c_g, k, k, generator=g)
        bias = torch.randn(groups * m_g, generator=g) if i % 2 == 0 else None
        cases.append(ConvCase(x, weight, bias, stride, padding, dilation, groups))
    return cases


@contextlib.contextmanager
def _only_ungrouped_conv() -> Iterator[None]:
    """Let the student call F.conv2d / torch.conv2d, but only with groups=1."""
    advice = ("grouped_conv must do the grouping itself: slice the channels and call F.conv2d "
              "with groups=1 on each slice (you passed groups={} to conv2d).")

    def guarded(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
                dilation: Any = 1, groups: int = 1) -> torch.Tensor:
        if groups != 1:
            fail(advice.format(groups))
        return _REF["conv2d"](input, weight, bias, stride, padding, dilation, 1)

    originals = (F.conv2d, torch.conv2d)
    F.conv2d, torch.conv2d = guarded, guarded
    try:
        yield
    finally:
        F.conv2d, torch.conv2d = originals


def check_grouped_conv(grouped_conv: Callable, hidden: bool = False) -> None:
    """``grouped_conv(x, weight, bias, stride, padding, dilation, groups)`` against F.conv2d,
    with conv2d allowed only for groups=1."""
    cases = grouped_cases(hidden)
    slicing_hint = ("Hint: group i reads input channels [i*C/g, (i+1)*C/g) but owns weight rows "
                    "(output channels) [i*M/g, (i+1)*M/g); C/g and M/g differ here.")
    for case in cases:
        c, m = case.x.shape[1], case.weight.shape[0]
        call = describe_call("grouped_conv", (case.x, case.weight), case.kwargs())
        expected = _REF["conv2d"](case.x, case.weight, **case.kwargs())
        try:
            with _only_ungrouped_conv():
                got = call_student(grouped_conv, case.x, case.weight, **case.kwargs())
            expect_tensor(got, expected, f"{call} [C={c}, M={m}, groups={case.groups}]")
        except CheckFailed as exc:
            if c != m and "groups=1" not in str(exc):
                raise CheckFailed(f"{exc} {slicing_hint}") from None
            raise
    passed(f"grouped_conv matches F.conv2d on {len(cases)} grouped cases, including "
           f"in_channels != out_channels{_suffix(hidden)}.")


# --- part 3: Inception towers -> one 1x1 conv + a grouped 3x3 conv ----------------------------------

def _inception_cases(hidden: bool) -> list[tuple[int, int, int]]:
    """(in_channels, towers, segment)."""
    g = torch.Generator().manual_seed(HIDDEN_SEED if hidden else VISIBLE_SEED)
    cases = [(8, 3, 4), (5, 2, 3)]
    for _ in range(3 if hidden else 1):
        cases.append((int(torch.randint(1, 12, (1,), generator=g)),
                      int(torch.randint(2, 6, (1,), generator=g)),
                      int(torch.randint(1, 6, (1,), generator=g))))
    return cases


def check_towers_to_grouped(towers_to_grouped: Callable, hidden: bool = False) -> None:
    """``towers_to_grouped(pointwise_weights, spatial_weights)`` -> (big 1x1 weight, grouped 3x3
    weight), checked by running the grouped form against a real simplified Inception module."""
    cases = _inception_cases(hidden)
    for seed, (c, towers, segment) in enumerate(cases):
        torch.manual_seed((HIDDEN_SEED if hidden else VISIBLE_SEED) + seed)
        module = xception.SimplifiedInception(c, towers, segment, bias=False).eval()
        pw = [t[0].weight.detach().clone() for t in module.towers]
        spatial = [t[2].weight.detach().clone() for t in module.towers]
        what = (f"towers_to_grouped(<{towers} towers: 1x1 weights {tuple(pw[0].shape)}, 3x3 "
                f"weights {tuple(spatial[0].shape)}>)")
        result = call_student(towers_to_grouped, pw, spatial, name="towers_to_grouped")
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            fail(f"{what} should return a pair (pointwise_weight, grouped_weight), got "
                 f"{type(result).__name__}.")
        big, grouped = result
        width = towers * segment
        for name, tensor, shape, advice in (
                ("pointwise_weight", big, (width, c, 1, 1),
                 "stack the towers' 1x1 filters as output channels (dim 0)."),
                ("grouped_weight", grouped, (width, segment, 3, 3),
                 "a grouped conv's weight is (out_channels, in_channels / groups, K, K): stack "
                 "the towers' 3x3 weights along dim 0.")):
            if not isinstance(tensor, torch.Tensor):
                fail(f"{what}: {name} should be a tensor, got {type(tensor).__name__}.")
            if tuple(tensor.shape) != shape:
                fail(f"{what}: {name} has shape {tuple(tensor.shape)}, expected {shape}; "
                     f"{advice}")
        x = torch.randn(2, c, 7, 6)
        with torch.no_grad():
            expected = module(x)
            got = F.relu(_REF["conv2d"](F.relu(_REF["conv2d"](x, big.detach())),
                                        grouped.detach(), padding=1, groups=towers))
        expect_tensor(got, expected, f"{what}: the grouped form's output (1x1 conv, ReLU, 3x3 conv "
                                     f"with groups={towers}, ReLU) vs the towers' output")
    passed(f"towers_to_grouped: the grouped form reproduces {len(cases)} Inception modules"
           f"{_suffix(hidden)}.")


# --- part 4: answers by number ----------------------------------------------------------------------

def _spectrum_answer() -> int:
    pointwise = Q_CHANNELS * Q_CHANNELS
    return next(r.groups for r in xception.groups_spectrum(Q_CHANNELS, 3)
                if r.params < pointwise)


def check_first_cheaper_groups(first_cheaper_groups: object) -> None:
    expected = _spectrum_answer()
    expect_int(first_cheaper_groups, expected, "first_cheaper_groups", {
        9: "at groups = 9 the two costs would be equal (and 9 does not divide 256); "
           "you need strictly fewer, with groups dividing 256.",
        10: "groups must divide the channel count (256).",
        8: "at groups = 8 the 3x3 conv still has 9/8 of the 1x1 conv's parameters."})
    passed(f"from groups = {expected} on, the grouped 3x3 conv is cheaper than the 1x1 conv.")


def check_extreme_params(extreme_params: object) -> None:
    module = xception.GroupedInception(Q_CHANNELS, Q_CHANNELS, 1, bias=False, activation=None)
    expected = sum(p.numel() for p in module.parameters())
    c = Q_CHANNELS
    expect_int(extreme_params, expected, "extreme_params", {
        9 * c * c + c * c: "that is a full 3x3 conv plus the 1x1 conv; the extreme version's "
                           "3x3 conv has one group per channel (depthwise).",
        9 * c: "that is only the depthwise conv; add the 1x1 conv.",
        c * c: "that is only the 1x1 conv; add the depthwise 3x3 conv."})
    passed(f"the extreme Inception module ({c} -> {c}) has {expected:,} parameters.")


def check_order_difference(order_difference: object) -> None:
    c, m = Q_ORDER_IN, Q_ORDER_OUT
    pw_dw = xception.GroupedInception(c, m, 1, bias=False, activation=None)
    dw_pw = DepthwiseSeparableConv2d(c, m, norm=False, activation=None, bias=False)
    expected = (sum(p.numel() for p in pw_dw.parameters())
                - sum(p.numel() for p in dw_pw.parameters()))
    expect_int(order_difference, expected, "order_difference", {
        -expected: "subtract the other way round: pointwise-first minus depthwise-first.",
        0: "the 1x1 convs are the same size, but the depthwise conv works on M channels in one "
           "order and on C in the other."})
    passed(f"pointwise-first has {expected:,} more parameters ({c} -> {m}, 3x3).")


def check_middle_flow_share(middle_flow_share: object) -> None:
    with torch.device("meta"):
        net = xception.Xception()
    by_flow = xception.params_by_flow(net)
    expected = by_flow["middle flow"] / sum(by_flow.values())
    if isinstance(middle_flow_share, (int, float)) and not isinstance(middle_flow_share, bool) \
            and 1 < middle_flow_share <= 100:
        fail(f"middle_flow_share: got {middle_flow_share}; give a fraction between 0 and 1, "
             "not a percentage.")
    expect_close(middle_flow_share, expected, "middle_flow_share (to within 0.005)",
                 rel=0.0, abs_tol=0.005)
    passed(f"the middle flow holds {100 * expected:.1f}% of Xception's parameters.")
