"""Exercise 4's backward part: correct answers (course_lib's and a student's own, written the
"transposed convolution" way) pass on the visible and hidden cases; each mistake a classmate makes
fails with its own ``kind`` and a message that names it, and no message shows a gradient value."""
import contextlib
import io
import re

import pytest
import torch
import torch.nn.functional as F

import course_lib.checks.ex04_separable as checks
from course_lib import backward
from course_lib.checks import CheckFailed
from exercise_helpers import as_student, run_all_cases

reference_depthwise = as_student(backward.depthwise_conv2d_backward)
reference_pointwise = as_student(backward.pointwise_conv2d_backward)
reference_numerical = as_student(backward.numerical_gradient)


def conv_view(flip=True, dilate=True, crop="both", remainder=True, transpose=False,
              weight_grad="sum", loop_pixels=False):
    """A student's depthwise backward, derived as a transposed convolution (dilate grad_out by the
    stride, pad by K - 1, correlate with the flipped kernel, crop the padding); each argument
    plants one mistake."""
    def depthwise_backward(grad_out, x, weight, stride=1, padding=0):
        n, c, h, w = x.shape
        kh, kw = weight.shape[2:]
        ho, wo = grad_out.shape[2:]
        if dilate:
            g = grad_out.new_zeros(n, c, stride * (ho - 1) + 1, stride * (wo - 1) + 1)
            g[..., ::stride, ::stride] = grad_out
        else:
            g = grad_out
        kernel = weight.flip(-2, -1) if flip else weight
        if transpose:
            kernel = kernel.transpose(-2, -1)
        gp = F.pad(g, (kw - 1, kw - 1, kh - 1, kh - 1))
        full_h, full_w = gp.shape[2] - kh + 1, gp.shape[3] - kw + 1
        cols = F.unfold(gp, (kh, kw)).view(n, c, kh * kw, -1)
        full = (cols * kernel.reshape(1, c, kh * kw, 1)).sum(2).view(n, c, full_h, full_w)
        if remainder:   # rows of the padded input that no output reads: zero gradient
            full = F.pad(full, (0, w + 2 * padding - full_w, 0, h + 2 * padding - full_h))
        if crop == "both":
            grad_x = full[..., padding:full.shape[2] - padding, padding:full.shape[3] - padding]
        elif crop == "start":
            grad_x = full[..., :h, :w]
        else:
            grad_x = full
        # weight gradient: tap (a, b) meets the padded input at (stride*i + a, stride*j + b)
        xp = F.pad(x, (padding,) * 4)
        grad_w = torch.zeros_like(weight)
        if loop_pixels:
            for i in range(ho):
                for j in range(wo):
                    patch = xp[..., stride * i:stride * i + kh, stride * j:stride * j + kw]
                    grad_w[:, 0] += (patch * grad_out[..., i:i + 1, j:j + 1]).sum(0)
        else:
            for a in range(kh):
                for b in range(kw):
                    patch = xp[..., a:a + stride * (ho - 1) + 1:stride,
                               b:b + stride * (wo - 1) + 1:stride]
                    grad_w[:, 0, a, b] = (patch * grad_out).sum(dim=(0, 2, 3))
        if weight_grad == "mean":
            grad_w = grad_w / n
        elif weight_grad == "flipped":
            grad_w = grad_w.flip(-2, -1)
        return grad_x, grad_w
    return depthwise_backward


def kind_of(check, *args, **kwargs):
    with pytest.raises(CheckFailed) as info:
        with contextlib.redirect_stdout(io.StringIO()):
            check(*args, **kwargs)
    return getattr(info.value, "kind", None), str(info.value)


def test_correct_answers_pass_on_visible_and_hidden_cases_without_stderr():
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        runs = run_all_cases("ex04_separable", [
            (checks.check_depthwise_backward, reference_depthwise),
            (checks.check_depthwise_backward, conv_view()),
            (checks.check_pointwise_backward, reference_pointwise),
            (checks.check_numerical_gradient, reference_numerical),
        ])
    assert stderr.getvalue() == "" and runs >= 8   # each check on its hidden cases too


@pytest.mark.parametrize("mistake,kind,words", [
    (dict(flip=False), "missing_flip", "flipped"),
    (dict(transpose=True), "transposed_kernel", "transposed"),
    (dict(dilate=False), "stride_not_dilated", "zeros"),
    (dict(crop="start"), "padding_cropped_wrong", "BOTH sides"),
    (dict(crop="none"), "padding_not_cropped", "PADDED input"),
    (dict(remainder=False), "remainder_dropped", "never read"),
    (dict(weight_grad="mean"), "mean_not_sum", "MEAN"),
    (dict(weight_grad="flipped"), "flipped_weight_gradient", "no flip"),
    (dict(loop_pixels=True), "not_vectorised", "not vectorised"),
])
def test_depthwise_mistakes_are_named(mistake, kind, words):
    got_kind, message = kind_of(checks.check_depthwise_backward, conv_view(**mistake))
    assert got_kind == kind and words in message, message
    assert "depthwise_backward" in message


def test_no_message_shows_a_gradient_value():
    """Messages give a relative error and a position, never a value of the right gradient."""
    def off_a_little(grad_out, x, weight, stride=1, padding=0):
        grad_x, grad_w = reference_depthwise(grad_out, x, weight, stride, padding)
        return grad_x, grad_w + 0.37 * (grad_w.abs() > 1).double()
    kind, message = kind_of(checks.check_depthwise_backward, off_a_little)
    assert kind == "wrong_values"
    g = torch.Generator().manual_seed(checks.VISIBLE_SEED + 5)
    x, weight, grad_out = checks._depthwise_case(checks.DEPTHWISE_BACKWARD_CASES[0], g)
    values = {round(v, 3) for v in backward.depthwise_conv2d_backward(grad_out, x, weight)[1]
              .flatten().tolist()}
    printed = {round(float(t), 3) for t in re.findall(r"-?\d+\.\d+", message)}
    assert not printed & values, message


def test_stride_only_mistake_gets_the_stride_hint():
    """Right for stride 1, wrong otherwise, in a way no named mistake matches."""
    def ignores_stride_in_weight(grad_out, x, weight, stride=1, padding=0):
        grad_x, grad_w = reference_depthwise(grad_out, x, weight, stride, padding)
        if stride > 1:
            grad_w = grad_w + 0.5
        return grad_x, grad_w
    kind, message = kind_of(checks.check_depthwise_backward, ignores_stride_in_weight)
    assert kind == "wrong_values" and "right on a case with stride 1" in message


def test_convolutions_and_autograd_are_refused():
    def with_conv(grad_out, x, weight, stride=1, padding=0):
        grad_x = torch.nn.grad.conv2d_input(x.shape, weight, grad_out, stride, padding,
                                            groups=x.shape[1])
        return grad_x, torch.nn.grad.conv2d_weight(x, weight.shape, grad_out, stride, padding,
                                                   groups=x.shape[1])
    assert "derive the gradient yourself" in kind_of(checks.check_depthwise_backward, with_conv)[1]

    def with_autograd(grad_out, x, weight, stride=1, padding=0):
        x, weight = x.clone().requires_grad_(), weight.clone().requires_grad_()
        with torch.enable_grad():
            cols = F.unfold(x, weight.shape[2:], padding=padding, stride=stride)
            out = (cols.view(x.shape[0], x.shape[1], -1, cols.shape[-1])
                   * weight.view(1, x.shape[1], -1, 1)).sum(2)
            return torch.autograd.grad(out, (x, weight), grad_out.flatten(2))
    kind, message = kind_of(checks.check_depthwise_backward, with_autograd)
    assert kind == "autograd" and "autograd" in message


def test_pointwise_mistakes_are_named():
    def transposed_x(grad_out, x, weight):   # W g instead of W^T g: runs only when C == M
        gx, gw = reference_pointwise(grad_out, x, weight)
        return torch.einsum("mc,nchw->nmhw", weight[:, :, 0, 0], grad_out), gw
    assert kind_of(checks.check_pointwise_backward, transposed_x,
                   cases=[(2, 4, 4, 3, 5)])[0] == "transposed_weight"

    def reshaped_x(grad_out, x, weight):
        gx, gw = reference_pointwise(grad_out, x, weight)
        m, c = weight.shape[:2]
        return torch.einsum("cm,nmhw->nchw", weight.reshape(c, m), grad_out), gw
    assert kind_of(checks.check_pointwise_backward, reshaped_x)[0] == "reshaped_not_transposed"

    def per_image(grad_out, x, weight):
        return (reference_pointwise(grad_out, x, weight)[0],
                torch.einsum("nmhw,nchw->nmc", grad_out, x)[..., None, None])
    assert kind_of(checks.check_pointwise_backward, per_image)[0] == "batch_not_summed"

    def mean(grad_out, x, weight):
        gx, gw = reference_pointwise(grad_out, x, weight)
        return gx, gw / grad_out[:, :1].numel()
    assert kind_of(checks.check_pointwise_backward, mean)[0] == "mean_not_sum"

    def swapped(grad_out, x, weight):
        gx, gw = reference_pointwise(grad_out, x, weight)
        return gx, gw.transpose(0, 1)
    assert kind_of(checks.check_pointwise_backward, swapped)[0] == "transposed_weight_gradient"


def one_sided(f, x, h=1e-6):
    grad, base = torch.zeros_like(x), float(f(x))
    for i in range(x.numel()):
        x.view(-1)[i] += h
        grad.view(-1)[i] = (float(f(x)) - base) / h
        x.view(-1)[i] -= h
    return grad


def over_h(f, x, h=1e-6):
    return 2 * reference_numerical(f, x, h)


def not_restored(f, x, h=1e-6):   # each element is left at x - h
    flat, out = x.view(-1), []
    for i in range(len(flat)):
        flat[i] = flat[i] + h
        up = f(x).item()
        flat[i] = flat[i] - 2 * h
        out.append((up - f(x).item()) / (2 * h))
    return torch.tensor(out, dtype=x.dtype).view(x.shape)


@pytest.mark.parametrize("answer,kind", [(one_sided, "one_sided_difference"),
                                         (over_h, "central_difference_spans_2h"),
                                         (not_restored, "input_changed")])
def test_gradient_check_mistakes_are_named(answer, kind):
    assert kind_of(checks.check_numerical_gradient, answer)[0] == kind


def test_gradient_check_by_autograd_is_refused():
    def by_autograd(f, x, h=1e-6):
        x = x.clone().requires_grad_()
        with torch.enable_grad():
            return torch.autograd.grad(f(x), x)[0]
    assert kind_of(checks.check_numerical_gradient, by_autograd)[0] == "autograd"
