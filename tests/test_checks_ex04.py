"""Exercise 4's checks: reference answers pass with nothing on stderr; realistic wrong answers fail
with a message that names the input and the mistake."""
import contextlib
import io

import pytest
import torch
from torch import nn

import course_lib.checks.ex04_separable as checks
from course_lib.checks import CheckFailed
from course_lib import separable
from exercise_helpers import as_student, case_sets, run_all_cases

separable_to_full_kernel = as_student(separable.separable_to_full_kernel)


# Student-style formulas (course_lib's counters refuse while a student's function runs).
def ref_params(c, m, k, d=1):
    return k * k * c * d + c * d * m


def ref_macs(c, m, k, h, w, d=1):
    return (k * k * c * d + c * d * m) * h * w


def ref_full(dw, pw):
    return separable_to_full_kernel(dw, pw)


def make_block(groups_bug=False, stride_on_pointwise=False, bias=False, swap=False,
               order_bug=False):
    class Block(nn.Module):
        def __init__(self, c, m, k=3, s=1):
            super().__init__()
            self.depthwise = nn.Conv2d(c, c, k, stride=1 if stride_on_pointwise else s,
                                       padding=k // 2, groups=1 if groups_bug else c, bias=bias)
            self.pointwise = nn.Conv2d(c, m, 1, stride=s if stride_on_pointwise else 1,
                                       bias=bias)
            if swap:
                self.depthwise, self.pointwise = (nn.Conv2d(c, m, 1, bias=False),
                                                  nn.Conv2d(m, m, k, s, k // 2, groups=m,
                                                            bias=False))

        def forward(self, x):
            if order_bug:   # pointwise applied twice / depthwise skipped
                return self.pointwise(x[..., ::self.depthwise.stride[0], ::self.depthwise.stride[0]])
            return self.pointwise(self.depthwise(x))
    return Block


def test_reference_answers_pass_without_stderr():
    """Visible and hidden cases (the hidden ones read from the solution notebook)."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        run_all_cases("ex04_separable", [
            (checks.check_separable_costs, (ref_params, ref_macs)),
            (checks.check_separable_block, make_block()),
            (checks.check_separable_to_full, ref_full),
        ])
    assert stderr.getvalue() == ""


def test_wrappers_of_course_lib_are_refused():
    """A one-line wrapper of course_lib's reference (the old guard only looked at __module__)."""
    wrapper = lambda dw, pw: separable.separable_to_full_kernel(dw, pw)  # noqa: E731
    assert "your own code" in failure(checks.check_separable_to_full, wrapper)
    own = lambda c, m, k, d=1: separable.separable_params(c, m, k, d)  # noqa: E731
    assert "formula yourself" in failure(checks.check_separable_params, own)


def test_block_with_batchnorm_and_relu_is_told_so():
    class WithExtras(nn.Module):
        def __init__(self, c, m, k=3, s=1):
            super().__init__()
            self.depthwise = nn.Conv2d(c, c, k, s, k // 2, groups=c, bias=False)
            self.bn, self.relu = nn.BatchNorm2d(c), nn.ReLU()
            self.pointwise = nn.Conv2d(c, m, 1, bias=False)

        def forward(self, x):
            return self.pointwise(self.relu(self.bn(self.depthwise(x))))
    msg = failure(checks.check_separable_block, WithExtras)
    assert "BatchNorm2d" in msg and "ReLU" in msg and "remove them" in msg


# Part 4's layer: 5x5, 6 -> 24 channels, no bias (independent arithmetic)
STANDARD, SEPARABLE, SAVING, RANK = 25 * 6 * 24, 25 * 6 + 6 * 24, 1 / (1 / 24 + 1 / 25), 24


def test_numbers_pass():
    checks.check_numbers(STANDARD, SEPARABLE, SAVING, RANK)


def failure(check, *args, **kwargs) -> str:
    with pytest.raises(CheckFailed) as info:
        check(*args, **kwargs)
    return str(info.value)


def test_params_mistakes_are_named():
    msg = failure(checks.check_separable_params, lambda c, m, k, d=1: k * k * c * m)
    assert "separable_params(3, 16, 3, 1)" in msg and "standard convolution" in msg
    msg = failure(checks.check_separable_params, lambda c, m, k, d=1: k * k * c * c + c * m)
    assert "groups=C" in msg
    msg = failure(checks.check_separable_params, lambda c, m, k, d=1: k * k * c + c * m)
    assert "depth multiplier" in msg and "(8, 8, 5, 2)" in msg
    msg = failure(checks.check_separable_params, lambda c, m, k, d=1: k * k * c * d + c * m)
    assert "C*d channels" in msg


def test_macs_mistakes_are_named():
    assert "FLOPs" in failure(checks.check_separable_macs,
                              lambda *a: 2 * ref_macs(*a))
    assert "left out the pointwise" in failure(
        checks.check_separable_macs, lambda c, m, k, h, w, d=1: k * k * c * d * h * w)
    assert "number of weights" in failure(
        checks.check_separable_macs, lambda c, m, k, h, w, d=1: ref_params(c, m, k, d))


def test_buggy_block_from_the_notebook_fails_on_groups_first():
    msg = failure(checks.check_separable_block, make_block(groups_bug=True,
                                                           stride_on_pointwise=True))
    assert "groups" in msg and "SeparableConv2d(4, 8, 3, 1)" in msg


def test_stride_on_pointwise_is_explained():
    msg = failure(checks.check_separable_block, make_block(stride_on_pointwise=True))
    assert "stride is on the pointwise" in msg and "75%" in msg


def test_bias_swap_and_wrong_forward_are_caught():
    assert "bias=False" in failure(checks.check_separable_block, make_block(bias=True))
    assert "swapped" in failure(checks.check_separable_block, make_block(swap=True))
    assert "wrong values" in failure(checks.check_separable_block, make_block(order_bug=True))


def test_block_that_is_not_a_module_or_not_implemented():
    def stub(*args):
        raise NotImplementedError()

    assert "not implemented yet" in failure(checks.check_separable_block, stub)
    assert "nn.Module" in failure(checks.check_separable_block, lambda *a: 3)


def test_full_kernel_mistakes():
    transposed = lambda dw, pw: ref_full(dw, pw).transpose(0, 1)  # noqa: E731
    msg = failure(checks.check_separable_to_full, transposed)
    assert "(out_channels, in_channels, K, K)" in msg
    summed = lambda dw, pw: ref_full(dw, pw).sum(1, keepdim=True)  # noqa: E731
    assert "wrong shape" in failure(checks.check_separable_to_full, summed)
    wrong = lambda dw, pw: ref_full(dw, pw) + 0.1  # noqa: E731
    assert "wrong values" in failure(checks.check_separable_to_full, wrong)
    assert "your own code" in failure(checks.check_separable_to_full,
                                      separable.separable_to_full_kernel)


def test_number_mistakes():
    assert "K^2 is the limit" in failure(checks.check_numbers, STANDARD, SEPARABLE, 25, RANK)
    assert "separable / standard" in failure(checks.check_numbers, STANDARD, SEPARABLE,
                                             1 / 24 + 1 / 25, RANK)
    assert "groups=6" in failure(checks.check_numbers, STANDARD, 25 * 6 * 6 + 6 * 24, SAVING,
                                 RANK)
    assert "smaller of its two sizes" in failure(checks.check_numbers, STANDARD, SEPARABLE,
                                                 SAVING, 25)
    assert "no bias" in failure(checks.check_numbers, STANDARD + 24, SEPARABLE, SAVING, RANK)
    assert "expected a whole number" in failure(checks.check_numbers, "3600", SEPARABLE, SAVING,
                                                RANK)
    assert "expected a number" in failure(checks.check_numbers, STANDARD, SEPARABLE, None, RANK)


def test_student_overwriting_conv2d_does_not_change_the_reference():
    import torch.nn.functional as F

    original = F.conv2d
    try:
        F.conv2d = lambda *a, **k: torch.zeros(1)
        checks.check_separable_to_full(ref_full)
    finally:
        F.conv2d = original
