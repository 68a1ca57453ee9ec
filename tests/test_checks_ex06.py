"""Exercise 6's checks: correct answers pass with nothing on stderr; typical wrong answers fail with a
message that names the input and the mistake, never a bare AssertionError."""
import contextlib
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import course_lib.checks.ex06_atrous as checks
from course_lib import atrous, costs
from course_lib.checks import CheckFailed
from exercise_helpers import case_sets


def failure(check, *args, **kwargs) -> str:
    with pytest.raises(CheckFailed) as info:
        check(*args, **kwargs)
    return str(info.value)


# Student-style reference answers (written here, not imported, as a student would write them).
def good_dilate(weight, dilation):
    m, c, kh, kw = weight.shape
    out = torch.zeros(m, c, dilation * (kh - 1) + 1, dilation * (kw - 1) + 1)
    out[:, :, ::dilation, ::dilation] = weight
    return out


def good_receptive_field(layers):
    size, jump = 1, 1
    for k, s, d in layers:
        size += d * (k - 1) * jump
        jump *= s
    return size, jump


def good_same(x, weight, bias=None, dilation=1):
    return F.conv2d(x, weight, bias, padding=dilation * (weight.shape[-1] - 1) // 2,
                    dilation=dilation)


def buggy_same(x, weight, bias=None, dilation=1):
    """The notebook's buggy version: padding forgets the rate."""
    return F.conv2d(x, weight, bias, padding=(weight.shape[-1] - 1) // 2, dilation=dilation)


def test_reference_answers_pass_without_stderr():
    """Visible and hidden cases (the hidden ones read from the solution notebook)."""
    stderr, stdout = io.StringIO(), io.StringIO()
    same_padding = lambda x, w, bias=None, dilation=1: F.conv2d(  # noqa: E731
        x, w, bias, padding="same", dilation=dilation)   # padding="same" is a correct fix too
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        for check, answers in ((checks.check_dilate_kernel, [good_dilate]),
                               (checks.check_receptive_field, [good_receptive_field]),
                               (checks.check_atrous_conv_same, [good_same, same_padding])):
            for answer in answers:
                for kwargs in case_sets("ex06_atrous", check.__name__):
                    check(answer, **kwargs)
        checks.check_gridding(13, 49, 289)
        checks.check_branch_costs(*checks.branch_macs())
    assert stderr.getvalue() == ""
    assert all(line.startswith("\u2714") for line in stdout.getvalue().splitlines())


def test_visible_cases_hold_every_class_of_hidden_input():
    """No surprises: rectangular kernels are visible, not only hidden."""
    assert any(kh != kw for _, _, kh, kw, _ in checks.DILATE_CASES)
    for kwargs in case_sets("ex06_atrous", "check_dilate_kernel")[1:]:
        assert any(kh != kw for _, _, kh, kw, _ in kwargs["cases"])


# --- part 1 --------------------------------------------------------------------------------------

def test_dilate_kernel_with_a_zero_too_many_is_explained():
    def too_big(weight, r):
        m, c, kh, kw = weight.shape
        out = torch.zeros(m, c, kh * r, kw * r)
        out[:, :, ::r, ::r] = weight
        return out

    msg = failure(checks.check_dilate_kernel, too_big)
    assert "wrong shape" in msg and "do not add zeros after the last tap" in msg
    assert "dilate_kernel(<tensor of shape (1, 1, 3, 3)>, 2)" in msg


def test_dilate_kernel_mistakes():
    # Taps in the wrong place (zeros before each tap instead of between).
    def shifted(weight, r):
        out = good_dilate(weight, r)
        return torch.roll(out, 1, dims=-1) if r > 1 else out
    assert "wrong values" in failure(checks.check_dilate_kernel, shifted)
    # Returning the kernel unchanged.
    assert "insert r - 1 zeros" in failure(checks.check_dilate_kernel, lambda w, r: w)

    # Changing the input in place cannot change the case the reference is computed from.
    def in_place(weight, r):
        out = good_dilate(weight, r)
        weight.zero_()
        return out
    checks.check_dilate_kernel(in_place)


def test_dilate_kernel_square_only_fails_the_visible_rectangular_cases():
    def square_only(weight, r):
        m, c, k, _ = weight.shape
        out = torch.zeros(m, c, r * (k - 1) + 1, r * (k - 1) + 1)
        out[:, :, ::r, ::r] = weight
        return out
    msg = failure(checks.check_dilate_kernel, square_only)  # visible, not only hidden
    assert "<tensor of shape (2, 3, 2, 5)>" in msg   # a visible rectangular kernel


# --- part 2 --------------------------------------------------------------------------------------

def test_receptive_field_without_the_jump_is_explained():
    def no_jump(layers):
        return 1 + sum(d * (k - 1) for k, s, d in layers), 1

    msg = failure(checks.check_receptive_field, no_jump)
    assert "EARLIER strides" in msg and "measured with gradients" in msg


def test_receptive_field_other_mistakes():
    def no_dilation(layers):
        return good_receptive_field([(k, s, 1) for k, s, d in layers])
    assert "effective kernel size" in failure(checks.check_receptive_field, no_dilation)

    def jump_first(layers):
        size, jump = 1, 1
        for k, s, d in layers:
            jump *= s
            size += d * (k - 1) * jump
        return size, jump
    assert "AFTER" in failure(checks.check_receptive_field, jump_first)

    def forgets_jump_value(layers):
        return good_receptive_field(layers)[0], 1
    assert "product of all the strides" in failure(checks.check_receptive_field, forgets_jump_value)

    assert "pair (size, jump)" in failure(checks.check_receptive_field, lambda layers: 13)


# --- part 3 --------------------------------------------------------------------------------------

def test_the_notebooks_bug_fails_with_a_padding_hint():
    msg = failure(checks.check_atrous_conv_same, buggy_same)
    assert "ignores the rate" in msg and "r * (K - 1) // 2" in msg and "dilation=2" in msg


def test_same_conv_dropping_the_bias_or_dilation_fails():
    no_bias = lambda x, w, bias=None, dilation=1: good_same(x, w, None, dilation)  # noqa: E731
    assert "wrong values" in failure(checks.check_atrous_conv_same, no_bias)
    no_dilation = lambda x, w, bias=None, dilation=1: F.conv2d(  # noqa: E731
        x, w, bias, padding=dilation * (w.shape[-1] - 1) // 2)
    assert "output shape" in failure(checks.check_atrous_conv_same, no_dilation)


def test_not_implemented_stub_is_explained():
    def stub(*args, **kwargs):
        raise NotImplementedError()

    assert "not implemented yet" in failure(checks.check_atrous_conv_same, stub)


# --- parts 4 and 5 -------------------------------------------------------------------------------

def test_gridding_numbers_match_independent_arithmetic():
    # Offsets of three taps at rate 2 are the even numbers -6..6 (7 of them): 7 x 7 pixels read.
    equal = {a + b + c for a in (-2, 0, 2) for b in (-2, 0, 2) for c in (-2, 0, 2)}
    hybrid = {a + b + c for a in (-1, 0, 1) for b in (-2, 0, 2) for c in (-5, 0, 5)}
    checks.check_gridding(max(equal) - min(equal) + 1, len(equal) ** 2, len(hybrid) ** 2)


def test_gridding_mistakes():
    assert "not every pixel in the field is read" in failure(checks.check_gridding, 13, 169, 289)
    assert "WIDTH" in failure(checks.check_gridding, 169, 49, 289)
    assert "rate 1" in failure(checks.check_gridding, 7, 49, 289)
    assert "in 2-D" in failure(checks.check_gridding, 13, 49, 17)


def test_branch_reference_equals_a_flop_counter_measurement():
    """The check's formula-based reference agrees with FlopCounterMode on real rate-12 layers."""
    b = checks.BRANCH
    shape = (1, b["in_channels"], b["size"], b["size"])
    x = torch.zeros(shape, device="meta")
    full = nn.Conv2d(b["in_channels"], b["out_channels"], 3, padding=b["rate"],
                     dilation=b["rate"], bias=False, device="meta")
    with torch.device("meta"):
        sep = atrous.atrous_separable_conv(b["in_channels"], b["out_channels"], 3,
                                           dilation=b["rate"]).eval()
    assert checks.branch_macs() == (costs.measure_macs(full, x), costs.measure_macs(sep, x))


def test_branch_cost_mistakes():
    full, sep = checks.branch_macs()
    c, m, size = 2048, 256, 33
    assert "adds none" in failure(checks.check_branch_costs, 25 * 25 * c * m * size * size, sep)
    assert "FLOPs" in failure(checks.check_branch_costs, 2 * full, sep)
    assert "each channel on its own" in failure(
        checks.check_branch_costs, full, 9 * c * m * size * size + c * m * size * size)
    assert "whatever the rate" in failure(
        checks.check_branch_costs, full, 25 * 25 * c * size * size + c * m * size * size)
    assert "expected a whole number" in failure(checks.check_branch_costs, "5e9", sep)
