"""Exercise 3's checks: correct answers pass with nothing on stderr; realistic wrong answers fail
with a message that names the input and the mistake."""
import contextlib
import io

import pytest
import torch
import torch.nn.functional as F

import course_lib.checks.ex03_depthwise as checks
from course_lib import costs, depthwise
from exercise_helpers import as_student, case_sets, run_all_cases
from test_checks_ex02 import failure, notebook_cell

conv2d_macs, conv2d_params = as_student(costs.conv2d_macs), as_student(costs.conv2d_params)
depthwise_per_channel = as_student(depthwise.depthwise_per_channel)
keras_to_torch_depthwise_kernel = as_student(depthwise.keras_to_torch_depthwise_kernel)


def reference_params(c, kernel, k=1, bias=True):
    return conv2d_params(c, c * k, kernel, groups=c, bias=bias)


def reference_macs(c, kernel, oh, ow, k=1):
    return conv2d_macs(c, c * k, kernel, (oh, ow), groups=c)




def test_reference_answers_pass_without_stderr(capsys):
    """Visible and hidden cases (the hidden ones read from the solution notebook)."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        runs = run_all_cases("ex03_depthwise", [
            (checks.check_depthwise_conv2d, depthwise_per_channel),
            (checks.check_keras_to_torch, keras_to_torch_depthwise_kernel),
            (checks.check_depthwise_costs, (reference_params, reference_macs)),
        ])
    assert stderr.getvalue() == ""
    lines = capsys.readouterr().out.splitlines()
    # the cost check passes two functions: two lines per run
    assert runs == 6 and len(lines) == 8 and all(line.startswith("\u2714") for line in lines)


def test_conv2d_is_restored_after_the_check():
    original = F.conv2d
    checks.check_depthwise_conv2d(depthwise_per_channel)
    assert F.conv2d is original and torch.conv2d is original


def test_grouped_conv_is_refused():
    msg = failure(checks.check_depthwise_conv2d,
                  lambda x, w, bias=None, **kw: F.conv2d(x, w, bias, groups=x.shape[1], **kw))
    assert "ONE input channel at a time" in msg


def test_dense_conv_with_a_block_diagonal_weight_is_refused():
    """One groups=1 convolution over all channels, with zeros off the block diagonal, computes the
    right numbers but is not "one input channel at a time"."""
    def block_diagonal(x, w, bias=None, **kw):
        c, k = x.shape[1], w.shape[0] // x.shape[1]
        dense = torch.zeros(w.shape[0], c, *w.shape[-2:])
        for o in range(w.shape[0]):
            dense[o, o // k] = w[o, 0]
        return F.conv2d(x, dense, bias, **kw)

    assert "ONE input channel at a time" in failure(checks.check_depthwise_conv2d, block_diagonal)

    def batched_channels(x, w, bias=None, stride=1, padding=0, dilation=1):
        """Channels folded into the batch: every convolution sees one input channel (allowed)."""
        n, c, h, wd = x.shape
        k = w.shape[0] // c
        maps = [F.conv2d(x[:, i:i + 1], w[i * k:(i + 1) * k], None, stride, padding, dilation)
                for i in range(c)]
        out = torch.cat(maps, dim=1)
        return out if bias is None else out + bias.view(1, -1, 1, 1)

    with contextlib.redirect_stdout(io.StringIO()):
        checks.check_depthwise_conv2d(batched_channels)


def test_multiplier_first_output_order_is_named():
    def wrong_order(x, w, bias=None, **kw):
        out = depthwise_per_channel(x, w, bias, **kw)
        return checks.multiplier_first(out, x.shape[1], 1)
    msg = failure(checks.check_depthwise_conv2d, wrong_order)
    assert "wrong channel order" in msg and "c * k + j" in msg


def test_missing_bias_is_named():
    msg = failure(checks.check_depthwise_conv2d,
                  lambda x, w, bias=None, **kw: depthwise_per_channel(x, w, None, **kw))
    assert "lack the bias" in msg and "depthwise_conv2d(<tensor of shape (2, 4, 7, 11)>" in msg


def test_ignored_stride_reports_shape():
    msg = failure(checks.check_depthwise_conv2d,
                  lambda x, w, bias=None, stride=1, padding=0, dilation=1:
                  depthwise_per_channel(x, w, bias, 1, padding, dilation))
    assert "wrong shape" in msg and "stride=2" in msg


def test_the_given_bug_and_other_conversion_mistakes():
    buggy = notebook_cell("part2-buggy", "ex03_depthwise")["buggy_keras_to_torch"]
    assert "still the bug" in failure(checks.check_keras_to_torch, buggy)
    swapped = failure(checks.check_keras_to_torch,
                      lambda kernel: keras_to_torch_depthwise_kernel(kernel.transpose(0, 1)))
    assert "K_h and K_w are swapped" in swapped
    no_one = failure(checks.check_keras_to_torch,
                     lambda kernel: keras_to_torch_depthwise_kernel(kernel)[:, 0])
    assert "wrong shape" in no_one and "with a 1 for the single input" in no_one


def test_keras_order_reference_is_independent_of_course_lib():
    kernel = torch.randn(3, 2, 4, 3)
    torch.testing.assert_close(checks.keras_order_reference(kernel),
                               keras_to_torch_depthwise_kernel(kernel))


def test_cost_mistakes():
    standard = failure(checks.check_depthwise_params,
                       lambda c, kernel, k=1, bias=True: conv2d_params(c, c * k, kernel, bias=bias))
    assert "standard convolution's count" in standard
    doubled = lambda c, kernel, oh, ow, k=1: 2 * reference_macs(c, kernel, oh, ow, k)  # noqa: E731
    assert "do not double" in failure(checks.check_depthwise_macs, doubled)
    no_mult = failure(checks.check_depthwise_macs,
                      lambda c, kernel, oh, ow, k=1: kernel * kernel * c * oh * ow)
    assert "multiply by it" in no_mult and "depthwise_macs(16, 5, 28, 20, 2)" in no_mult
    def bias_per_input_channel(c, kernel, k=1, bias=True):
        return kernel * kernel * c * k + (c if bias else 0)
    bias_per_channel = failure(checks.check_depthwise_params, bias_per_input_channel)
    assert "C * k of them" in bias_per_channel


def test_depthwise_layer():
    """Part 4: 3x3 depthwise on 144 channels, 28x28, stride 2, padding 1: a 14x14 output."""
    out = (28 + 2 - 3) // 2 + 1
    params, macs = 9 * 144, 9 * 144 * out * out
    with contextlib.redirect_stdout(io.StringIO()):
        checks.check_depthwise_layer(params, macs, 144)
    assert "no bias" in failure(checks.check_depthwise_layer, params + 144, macs, 144)
    assert "FLOPs" in failure(checks.check_depthwise_layer, params, 2 * macs, 144)
    assert "stride 2" in failure(checks.check_depthwise_layer, params, 9 * 144 * 28 * 28, 144)
    assert "other way round" in failure(checks.check_depthwise_layer, params, macs, 1 / 144)
