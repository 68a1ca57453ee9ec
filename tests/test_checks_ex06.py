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
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        for check, answers in ((checks.check_dilate_kernel, [good_dilate]),
                               (checks.check_receptive_field, [good_receptive_field]),
                               (checks.check_atrous_conv_same, [good_same])):
            for answer in answers:
                for kwargs in case_sets("ex06_atrous", check.__name__):
                    check(answer, **kwargs)
        checks.check_gridding(25, 81, 529)
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
    # Right for r > 1, but the weight itself (or a view of it) for r = 1: a new tensor is asked.
    for same in (lambda w, r: w, lambda w, r: w[:, :, :, :]):
        lazy = lambda w, r, _same=same: good_dilate(w, r) if r > 1 else _same(w, r)  # noqa: E731
        assert "not a new tensor" in failure(checks.check_dilate_kernel, lazy)

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


def test_padding_by_name_is_refused():
    """padding="same" makes PyTorch do the arithmetic the part asks for: refused, by any route."""
    for named in (lambda x, w, bias=None, dilation=1: F.conv2d(x, w, bias, padding="same",
                                                               dilation=dilation),
                  lambda x, w, bias=None, dilation=1: F.conv2d(x, w, bias, 1, "same", dilation),
                  lambda x, w, bias=None, dilation=1: torch.conv2d(x, w, bias, padding="same",
                                                                   dilation=dilation)):
        assert "padding='same'" in failure(checks.check_atrous_conv_same, named)
    x, w = torch.randn(1, 2, 7, 7), torch.randn(3, 2, 3, 3)
    assert F.conv2d(x, w, padding="same").shape[-2:] == (7, 7)   # works again afterwards


# --- parts 4 and 5 -------------------------------------------------------------------------------

def test_gridding_numbers_match_independent_arithmetic():
    # Offsets of four taps at rate 3 are the multiples of 3 in -12..12 (9 of them): 9 x 9 read.
    from itertools import product
    equal = {sum(t) for t in product(*[(-3, 0, 3)] * 4)}
    hybrid = {sum(t) for t in product(*[(-r, 0, r) for r in (1, 2, 3, 5)])}
    with contextlib.redirect_stdout(io.StringIO()):
        checks.check_gridding(max(equal) - min(equal) + 1, len(equal) ** 2, len(hybrid) ** 2)


def test_gridding_mistakes():
    assert "not every pixel in the field is read" in failure(checks.check_gridding, 25, 625, 529)
    assert "WIDTH" in failure(checks.check_gridding, 625, 81, 529)
    assert "rate 1" in failure(checks.check_gridding, 9, 81, 529)
    assert "in 2-D" in failure(checks.check_gridding, 25, 9, 529)
    assert "in 2-D" in failure(checks.check_gridding, 25, 81, 23)


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
    c, m, size = 512, 128, 65
    assert "adds none" in failure(checks.check_branch_costs, 13 * 13 * c * m * size * size, sep)
    assert "FLOPs" in failure(checks.check_branch_costs, 2 * full, sep)
    assert "each channel on its own" in failure(
        checks.check_branch_costs, full, 9 * c * m * size * size + c * m * size * size)
    assert "whatever the rate" in failure(
        checks.check_branch_costs, full, 13 * 13 * c * size * size + c * m * size * size)
    assert "expected a whole number" in failure(checks.check_branch_costs, "5e9", sep)
