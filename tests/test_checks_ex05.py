"""Exercise 5's checks: correct answers pass with nothing on stderr; realistic wrong answers fail
with a message that names the input and the mistake."""
import contextlib
import io

import pytest
import torch
import torch.nn.functional as F

import course_lib.checks.ex05_xception as checks
from course_lib.checks import CheckFailed
from exercise_helpers import case_sets, run_all_cases


def reference_params(c, m, k, groups, bias=True):
    return k * k * (c // groups) * m + (m if bias else 0)


def sliced_conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, buggy=False):
    """Grouped conv from channel slices; ``buggy`` slices the weight with the input group size."""
    c_g = x.shape[1] // groups
    m_g = c_g if buggy else weight.shape[0] // groups
    outs = [F.conv2d(x[:, g * c_g:(g + 1) * c_g], weight[g * m_g:(g + 1) * m_g], None, stride,
                     padding, dilation) for g in range(groups)]
    out = torch.cat(outs, 1)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def towers_to_grouped(pw, spatial):
    return torch.cat(pw, 0), torch.cat(spatial, 0)


def failure(check, *args, **kwargs) -> str:
    with pytest.raises(CheckFailed) as info:
        check(*args, **kwargs)
    return str(info.value)


def test_reference_answers_pass_without_stderr():
    """Visible and hidden cases (the hidden ones read from the solution notebook)."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        run_all_cases("ex05_xception", [
            (checks.check_grouped_params, reference_params),
            (checks.check_grouped_conv, sliced_conv),
            (checks.check_towers_to_grouped, towers_to_grouped),
        ])
    assert stderr.getvalue() == ""


def test_missing_dilation_is_named_not_blamed_on_the_slicing():
    msg = failure(checks.check_grouped_conv,
                  lambda x, w, bias=None, stride=1, padding=0, dilation=1, groups=1:
                  sliced_conv(x, w, bias, stride, padding, 1, groups))
    assert "dilation is missing" in msg and "owns weight rows" not in msg


def test_middle_flow_share_without_batchnorm_fails():
    from course_lib import xception
    with torch.device("meta"):
        by_flow = xception.params_by_flow(xception.Xception())
    total = sum(by_flow.values())
    checks.check_middle_flow_share(by_flow["middle flow"] / total)
    checks.check_middle_flow_share(round(by_flow["middle flow"] / total, 3))
    msg = failure(checks.check_middle_flow_share, 24 * (9 * 728 + 728 * 728) / total)
    assert "BatchNorm" in msg


def test_part4_answers_computed_independently():
    c = 384
    # 9*C*C/g < C*C  <=>  g > 9; the smallest divisor of 384 above 9 is 12.
    checks.check_first_cheaper_groups(12)
    checks.check_extreme_params(c * c + 9 * c)
    checks.check_order_difference((96 * 240 + 9 * 240) - (9 * 96 + 96 * 240))
    checks.check_middle_flow_share(8 * 3 * (9 * 728 + 728 * 728 + 2 * 728) / 22_855_952)


def test_part4_mistakes_are_named():
    assert "strictly fewer" in failure(checks.check_first_cheaper_groups, 9)
    assert "must divide" in failure(checks.check_first_cheaper_groups, 10)
    assert "only the depthwise" in failure(checks.check_extreme_params, 9 * 384)
    assert "full 3x3 conv" in failure(checks.check_extreme_params, 10 * 384 * 384)
    assert "other way round" in failure(checks.check_order_difference, -9 * (240 - 96))
    assert "not a percentage" in failure(checks.check_middle_flow_share, 56.5)
    assert "too low" in failure(checks.check_middle_flow_share, 0.4)
    assert "got list" in failure(checks.check_extreme_params, [67840])


def test_grouped_params_mistakes():
    assert "divide by groups" in failure(
        checks.check_grouped_params, lambda c, m, k, g, bias=True: k * k * c * m + (m if bias else 0))
    assert "divide by groups once" in failure(
        checks.check_grouped_params,
        lambda c, m, k, g, bias=True: k * k * (c // g) * (m // g) + (m if bias else 0))
    assert "forgot the bias" in failure(
        checks.check_grouped_params, lambda c, m, k, g, bias=True: k * k * (c // g) * m)
    assert "grouped_conv_params(32, 64, 3, 32, True)" in failure(
        checks.check_grouped_params,
        lambda c, m, k, g, bias=True: k * k * (c // g) * m + (m // g if bias else 0))


def test_the_buggy_grouped_conv_fails_with_the_slicing_hint():
    msg = failure(checks.check_grouped_conv,
                  lambda *a, **kw: sliced_conv(*a, **kw, buggy=True))
    assert "owns weight rows (output channels)" in msg and "grouped_conv(" in msg


def test_the_buggy_version_agrees_when_channels_match():
    """The bug the exercise is built on is real: it passes when C == M, fails otherwise."""
    case = checks.grouped_cases(checks.VISIBLE_SEED, 5)[0]
    assert case.x.shape[1] == case.weight.shape[0]
    torch.testing.assert_close(sliced_conv(case.x, case.weight, **case.kwargs(), buggy=True),
                               F.conv2d(case.x, case.weight, **case.kwargs()))
    assert any(c.x.shape[1] != c.weight.shape[0]
               for c in checks.grouped_cases(checks.VISIBLE_SEED, 5))


def test_grouped_conv_must_not_delegate_the_grouping():
    msg = failure(checks.check_grouped_conv, lambda x, w, **kw: F.conv2d(x, w, **kw))
    assert "slice the channels" in msg and "groups=1" in msg
    assert F.conv2d is checks.REFERENCE["conv2d"] or F.conv2d.__name__ == "conv2d"  # restored


def test_grouped_conv_ignoring_bias_reports_values():
    msg = failure(checks.check_grouped_conv,
                  lambda x, w, bias=None, **kw: sliced_conv(x, w, None, **kw))
    assert "bias is missing" in msg


def test_towers_mistakes():
    stacked_wrong_axis = failure(checks.check_towers_to_grouped,
                                 lambda pw, sp: (torch.cat(pw, 0), torch.cat(sp, 1)))
    assert "grouped_weight has shape" in stacked_wrong_axis and "along dim 0" in stacked_wrong_axis
    reversed_towers = failure(checks.check_towers_to_grouped,
                              lambda pw, sp: (torch.cat(pw, 0), torch.cat(sp[::-1], 0)))
    assert "wrong values" in reversed_towers
    not_a_pair = failure(checks.check_towers_to_grouped, lambda pw, sp: torch.cat(pw, 0))
    assert "should return a pair" in not_a_pair


def test_not_implemented_stub_is_explained():
    def stub(*args, **kwargs):
        raise NotImplementedError()

    assert "not implemented yet" in failure(checks.check_towers_to_grouped, stub)
    assert "not implemented yet" in failure(checks.check_grouped_conv, stub)
