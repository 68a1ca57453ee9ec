"""Exercise 2's checks: correct answers pass with nothing on stderr; realistic wrong answers fail
with a message that names the input and the mistake."""
import contextlib
import io
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F

import course_lib.checks.ex02_pointwise as checks
from course_lib.checks import CheckFailed
from course_lib import conv, costs, pointwise
from exercise_helpers import as_student, case_sets, run_all_cases

conv2d_macs, conv2d_params = as_student(costs.conv2d_macs), as_student(costs.conv2d_params)
conv_output_size = as_student(conv.conv_output_size)
pointwise_as_linear = as_student(pointwise.pointwise_as_linear)
pointwise_as_matmul = as_student(pointwise.pointwise_as_matmul)

REPO = Path(__file__).resolve().parents[1]


def reference_params(c, m, bias=True):
    return conv2d_params(c, m, 1, bias=bias)


def reference_macs(c, m, h, w):
    return conv2d_macs(c, m, 1, (h, w))


def reference_via_linear(x, linear):
    return linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def failure(check, *args, **kwargs) -> str:
    with pytest.raises(CheckFailed) as info:
        check(*args, **kwargs)
    return str(info.value)


def test_reference_answers_pass_without_stderr(capsys):
    """Visible and hidden cases (the hidden ones read from the solution notebook)."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        runs = run_all_cases("ex02_pointwise", [
            (checks.check_pointwise_matmul, pointwise_as_matmul),
            (checks.check_pointwise_via_linear, reference_via_linear),
            (checks.check_pointwise_costs, (reference_params, reference_macs)),
        ])
    assert stderr.getvalue() == ""
    lines = capsys.readouterr().out.splitlines()
    # the cost check passes two functions: two lines per run
    assert runs == 6 and len(lines) == 8 and all(line.startswith("\u2714") for line in lines)


def test_matmul_calling_conv2d_is_refused():
    msg = failure(checks.check_pointwise_matmul, lambda x, w, b=None: F.conv2d(x, w, b))
    assert "may call neither a convolution" in msg
    # course_lib's own einsum version is refused too, and the message names it
    msg = failure(checks.check_pointwise_matmul, lambda x, w, b=None: pointwise.pointwise_as_matmul(
        x, w, b))
    assert "pointwise_as_matmul" in msg


def test_linear_part_must_use_linear_not_a_convolution():
    """ex02 part 2 says: use the given `linear`. A convolution refuses; not calling linear fails."""
    as_conv = lambda x, linear: F.conv2d(x, linear.weight[:, :, None, None], linear.bias)  # noqa
    assert "must use the given `linear`" in failure(checks.check_pointwise_via_linear, as_conv)
    by_hand = lambda x, linear: (x.permute(0, 2, 3, 1) @ linear.weight.T  # noqa: E731
                                 + (0 if linear.bias is None else linear.bias)).permute(0, 3, 1, 2)
    assert "never called `linear`" in failure(checks.check_pointwise_via_linear, by_hand)


def test_matmul_without_bias_is_named():
    msg = failure(checks.check_pointwise_matmul, lambda x, w, b=None: pointwise_as_matmul(x, w))
    assert "lack the bias" in msg and "pointwise_matmul(<tensor of shape" in msg


def test_matmul_with_transposed_weight_reports_values_or_shape():
    def transposed(x, w, b=None):  # reads the (M, C) matrix as (C, M)
        out = torch.einsum("cm,nchw->nmhw", w.reshape(w.shape[1], w.shape[0]), x)
        return out if b is None else out + b.view(1, -1, 1, 1)
    msg = failure(checks.check_pointwise_matmul, transposed)
    assert "pointwise_matmul(" in msg and ("wrong" in msg or "raised" in msg)


def notebook_cell(grade_id, assignment="ex02_pointwise"):
    """Run one read-only cell of an exercise source and return its names (the buggy function the
    student is given is tested as it is, not as a copy)."""
    nb = nbformat.read(REPO / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    (cell,) = [c for c in nb.cells if c.get("id") == grade_id]
    namespace = {"torch": torch, "F": F, "nn": torch.nn}
    exec(cell.source, namespace)
    return namespace


def test_buggy_linear_version_is_recognised():
    buggy = notebook_cell("part2-buggy")["buggy_pointwise_via_linear"]
    msg = failure(checks.check_pointwise_via_linear, buggy)
    assert "still the buggy result" in msg and "permute(0, 2, 3, 1)" in msg


def test_half_fixed_linear_version_is_recognised():
    def half(x, linear):
        n, c, h, w = x.shape
        return linear(x.permute(0, 2, 3, 1)).reshape(n, -1, h, w)
    assert "permute(0, 3, 1, 2)" in failure(checks.check_pointwise_via_linear, half)


def test_stub_is_explained():
    def stub(*args):
        raise NotImplementedError()
    assert "not implemented yet" in failure(checks.check_pointwise_via_linear, stub)


def test_param_mistakes():
    assert "image size does not enter" not in failure(
        checks.check_pointwise_params, lambda c, m, bias=True: c * m + m)  # bias always counted
    assert "only when bias=True" in failure(checks.check_pointwise_params,
                                            lambda c, m, bias=True: c * m + m)
    assert "multiply, do not add" in failure(checks.check_pointwise_params,
                                             lambda c, m, bias=True: c + m + (m if bias else 0))


def test_mac_mistakes():
    doubled = lambda c, m, h, w: 2 * reference_macs(c, m, h, w)  # noqa: E731
    assert "do not double" in failure(checks.check_pointwise_macs, doubled)
    assert "1 x 1, not 3 x 3" in failure(checks.check_pointwise_macs,
                                         lambda c, m, h, w: 9 * c * m * h * w)
    assert "number of weights" in failure(checks.check_pointwise_macs, lambda c, m, h, w: c * m)


def test_strided_answers():
    """45x45 at stride 3: 15 x 15 read; 17x17 at stride 3: ceil(17/3) = 6 per axis; 48 -> 96 on
    29x29: 29^2 positions at stride 1, ceil(29/2)^2 = 15^2 at stride 2."""
    fraction, read, ratio = 15 ** 2 / 45 ** 2, 6 * 6, 29 ** 2 / 15 ** 2
    with contextlib.redirect_stdout(io.StringIO()):
        checks.check_strided_answers(fraction, read, ratio)
    assert "DISCARDED" in failure(checks.check_strided_answers, 1 - fraction, read, ratio)
    assert "percentage" in failure(checks.check_strided_answers, 100 * fraction, read, ratio)
    assert "ceil(17/3)" in failure(checks.check_strided_answers, fraction, 25, ratio)
    assert "other way round" in failure(checks.check_strided_answers, fraction, read, 1 / ratio)
    assert "not exactly stride^2" in failure(checks.check_strided_answers, fraction, read, 4)