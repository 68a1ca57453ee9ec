"""Exercise 1's checks: correct answers pass silently on stderr; typical wrong answers fail with a
message that names the input and the mistake, never a bare AssertionError."""
import contextlib
import io

import pytest
import torch
import torch.nn.functional as F

import course_lib.checks.ex01_standard as checks
from course_lib.checks.cases import conv_cases
from course_lib import conv, costs
from course_lib.checks import CheckFailed
from exercise_helpers import as_student, case_sets, run_all_cases

# course_lib's own functions refuse while a student's function runs: answer with private copies.
conv2d_unfold, conv_output_size = as_student(conv.conv2d_unfold), as_student(conv.conv_output_size)
conv2d_macs, conv2d_params = as_student(costs.conv2d_macs), as_student(costs.conv2d_params)


def reference_params(c, m, k, bias=True):
    return conv2d_params(c, m, k, bias=bias)


def reference_macs(c, m, k, h, w):
    return conv2d_macs(c, m, k, (h, w))


def test_reference_answers_pass_without_stderr():
    """Visible and hidden cases (the hidden ones read from the solution notebook)."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        run_all_cases("ex01_standard", [
            (checks.check_output_size, conv_output_size),
            (checks.check_conv2d_unfold, conv2d_unfold),
            (checks.check_conv_costs, (reference_params, reference_macs)),
        ])
    assert stderr.getvalue() == ""


def test_course_lib_and_every_convolution_alias_are_refused():
    """An alias bound before the check, torch.ops.aten, nn.Conv2d or a wrapper of course_lib's own
    implementation all refuse, with advice; afterwards everything works again."""
    alias = F.conv2d
    for cheat in (lambda x, w, **kw: alias(x, w, **kw),
                  lambda x, w, bias=None, stride=1, padding=0, dilation=1, groups=1:
                  torch.ops.aten.convolution(x, w, bias, [stride] * 2, [padding] * 2,
                                             [dilation] * 2, False, [0, 0], groups),
                  lambda x, w, **kw: torch.conv2d(x, w, **kw),
                  lambda x, w, **kw: conv.conv2d_unfold(x, w, **kw)):
        msg = failure(checks.check_conv2d_unfold, cheat)
        assert "must compute the convolution itself" in msg and "F.unfold" in msg
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    assert torch.allclose(conv.conv2d_unfold(x, w), alias(x, w), atol=1e-5)


def test_counting_with_course_lib_is_refused():
    msg = failure(checks.check_conv_params, lambda c, m, k, bias=True: costs.conv2d_params(
        c, m, k, bias=bias))
    assert "write the formula yourself" in msg


def test_off_by_one_output_size_and_missing_bias_get_hints():
    assert "off by one" in failure(checks.check_output_size,
                                   lambda n, k, s, p, d: (n + 2 * p - d * (k - 1) - 1) // s)
    msg = failure(checks.check_conv2d_unfold,
                  lambda x, w, bias=None, **kw: conv2d_unfold(x, w, None, **kw))
    assert "lack the bias" in msg


def failure(check, *args, **kwargs) -> str:
    with pytest.raises(CheckFailed) as info:
        check(*args, **kwargs)
    return str(info.value)


def test_bias_as_matrix_mistake_is_named():
    msg = failure(checks.check_conv_params, lambda c, m, k, bias=True: k * k * c * m + m * k * k)
    assert "conv_params(3, 16, 3, True)" in msg and "ONE scalar per output channel" in msg


def test_forgotten_bias_and_missing_k():
    assert "forgot the bias" in failure(checks.check_conv_params,
                                        lambda c, m, k, bias=True: k * k * c * m)
    assert "multiply by K twice" in failure(
        checks.check_conv_params, lambda c, m, k, bias=True: k * c * m + (m if bias else 0))


def test_output_size_mistakes():
    no_dilation = failure(checks.check_output_size, lambda n, k, s, p, d: (n + 2 * p - k) // s + 1)
    assert "ignored the dilation" in no_dilation and "conv_output_size(28, 5, 1, 0, 2)" in no_dilation
    returns_float = failure(checks.check_output_size,
                            lambda n, k, s, p, d: (n + 2 * p - d * (k - 1) - 1) / s + 1)
    assert "expected a whole number" in returns_float or "round down" in returns_float


def test_flops_instead_of_macs():
    msg = failure(checks.check_conv_macs, lambda c, m, k, h, w: 2 * k * k * c * m * h * w)
    assert "do not double" in msg


def test_unfold_that_calls_conv2d_is_refused():
    msg = failure(checks.check_conv2d_unfold, lambda x, w, **kw: F.conv2d(x, w, **kw))
    assert "must compute the convolution itself" in msg


def test_wrong_shape_and_type_are_reported():
    shape_msg = failure(checks.check_conv2d_unfold, lambda x, w, **kw: torch.zeros(1))
    assert "wrong shape (1,)" in shape_msg
    type_msg = failure(checks.check_conv2d_unfold, lambda x, w, **kw: [[0.0]])
    assert "expected a torch.Tensor" in type_msg and "got list" in type_msg
    nan_msg = failure(checks.check_conv2d_unfold,
                      lambda x, w, **kw: conv2d_unfold(x, w, **kw) * float("nan"))
    assert "NaN" in nan_msg


def test_not_implemented_stub_is_explained():
    def stub(*args, **kwargs):
        raise NotImplementedError()

    assert "not implemented yet" in failure(checks.check_conv2d_unfold, stub)


def test_student_replacing_conv2d_does_not_change_the_reference():
    """A notebook that reassigns F.conv2d to its own (wrong) function cannot make a wrong
    conv2d_unfold pass: the reference was bound at import."""
    original = F.conv2d
    fake = lambda x, w, bias=None, **kw: torch.zeros(  # noqa: E731
        x.shape[0], w.shape[0], *checks_shape(x, w, **kw))
    try:
        F.conv2d = fake
        msg = failure(checks.check_conv2d_unfold, fake)
    finally:
        F.conv2d = original
    assert "wrong values" in msg


def checks_shape(x, w, stride=1, padding=0, dilation=1, groups=1):
    return [conv_output_size(s, k, stride, padding, dilation)
            for s, k in zip(x.shape[-2:], w.shape[-2:])]


def test_visible_cases_hold_rectangular_kernels():
    """No surprises: the hidden cases' rectangular kernels appear in the visible ones too."""
    shapes = {tuple(case.weight.shape[-2:]) for case in conv_cases(checks.VISIBLE_SEED, 6,
                                                                          rectangular=True)}
    assert any(kh != kw for kh, kw in shapes) and any(kh == kw for kh, kw in shapes)


def test_layer_numbers():
    """Part 4's layer (5x5, 48 -> 96, stride 2, padding 2, 27x27, bias), from the formulas."""
    out = (27 + 2 * 2 - 5) // 2 + 1
    params, macs = 25 * 48 * 96 + 96, 25 * 48 * 96 * out * out
    with contextlib.redirect_stdout(io.StringIO()):
        checks.check_layer_answers(out, params, macs)
    assert "stride" in failure(checks.check_layer_answers, 27, params, macs)
    assert "FLOPs" in failure(checks.check_layer_answers, out, params, 2 * macs)
    assert "include the bias" in failure(checks.check_layer_answers, out, params - 96, macs)
    assert "output positions" in failure(checks.check_layer_answers, out, params,
                                         25 * 48 * 96 * 27 * 27)


def test_merged_cost_check_reports_the_first_wrong_function():
    assert "conv_params" in failure(checks.check_conv_costs, lambda c, m, k, bias=True: 0,
                                    reference_macs)
    assert "conv_macs" in failure(checks.check_conv_costs, reference_params,
                                  lambda c, m, k, h, w: 2 * k * k * c * m * h * w)
