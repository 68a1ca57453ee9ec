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


def reference_macs(c, m, h, w, stride=1):
    return conv2d_macs(c, m, 1, (conv_output_size(h, 1, stride), conv_output_size(w, 1, stride)))


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
            (checks.check_pointwise_params, reference_params),
            (checks.check_pointwise_macs, reference_macs),
        ])
    assert stderr.getvalue() == ""
    lines = capsys.readouterr().out.splitlines()
    assert runs == 8 and len(lines) == runs and all(line.startswith("\u2714") for line in lines)


def test_matmul_calling_conv2d_is_refused():
    msg = failure(checks.check_pointwise_matmul, lambda x, w, b=None: F.conv2d(x, w, b))
    assert "must not call a convolution" in msg


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
    doubled = lambda c, m, h, w, stride=1: 2 * reference_macs(c, m, h, w, stride)  # noqa: E731
    assert "do not double" in failure(checks.check_pointwise_macs, doubled)
    assert "count output positions" in failure(checks.check_pointwise_macs,
                                               lambda c, m, h, w, stride=1: c * m * h * w)
    floor = failure(checks.check_pointwise_macs,
                    lambda c, m, h, w, stride=1: c * m * (h // stride) * (w // stride))
    assert "ceil(H/s)" in floor and "pointwise_macs(32, 16, 7, 7, 2)" in floor


def test_strided_answers():
    checks.check_strided_answers(0.25, 16, 4)
    assert "DISCARDED" in failure(checks.check_strided_answers, 0.75, 16, 4)
    assert "percentage" in failure(checks.check_strided_answers, 25, 16, 4)
    assert "ceil(7/2)" in failure(checks.check_strided_answers, 0.25, 9, 4)
    assert "other way round" in failure(checks.check_strided_answers, 0.25, 16, 0.25)
