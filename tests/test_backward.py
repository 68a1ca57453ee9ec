"""course_lib.backward against PyTorch's own gradients: torch.nn.grad.conv2d_input/conv2d_weight
and autograd through F.conv2d; the gradient check against known derivatives."""
import pytest
import torch
import torch.nn.functional as F

from course_lib.backward import (depthwise_conv2d_backward, numerical_gradient,
                                 pointwise_conv2d_backward, relative_error)

# (N, C, H, W, K_h, K_w, stride, padding): square and rectangular kernels, strides that do and
# do not divide the padded input evenly (the last rows are then never read: zero gradient).
DEPTHWISE = [(2, 3, 7, 7, 3, 3, 1, 0), (1, 4, 9, 8, 3, 3, 2, 1), (2, 2, 10, 11, 5, 3, 3, 2),
             (1, 5, 8, 6, 2, 4, 2, 0), (3, 1, 6, 6, 1, 1, 2, 0), (1, 3, 12, 9, 3, 2, 3, 1)]


@pytest.mark.parametrize("case", DEPTHWISE)
def test_depthwise_backward_matches_torch(case):
    n, c, h, w, kh, kw, s, p = case
    g = torch.Generator().manual_seed(sum(case))
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(c, 1, kh, kw, generator=g, dtype=torch.float64)
    out = F.conv2d(x, weight, stride=s, padding=p, groups=c)
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
    grad_x, grad_w = depthwise_conv2d_backward(grad_out, x, weight, stride=s, padding=p)
    expected_x = torch.nn.grad.conv2d_input(x.shape, weight, grad_out, stride=s, padding=p,
                                            groups=c)
    expected_w = torch.nn.grad.conv2d_weight(x, weight.shape, grad_out, stride=s, padding=p,
                                             groups=c)
    torch.testing.assert_close(grad_x, expected_x)
    torch.testing.assert_close(grad_w, expected_w)
    # ... and autograd, the same numbers by a third route
    xa, wa = x.clone().requires_grad_(), weight.clone().requires_grad_()
    (F.conv2d(xa, wa, stride=s, padding=p, groups=c) * grad_out).sum().backward()
    torch.testing.assert_close(grad_x, xa.grad)
    torch.testing.assert_close(grad_w, wa.grad)


@pytest.mark.parametrize("n,c,m,h,w", [(2, 3, 5, 4, 6), (1, 4, 4, 3, 3), (3, 6, 1, 5, 2)])
def test_pointwise_backward_matches_torch(n, c, m, h, w):
    g = torch.Generator().manual_seed(n * 100 + c * 10 + m)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(m, c, 1, 1, generator=g, dtype=torch.float64)
    grad_out = torch.randn(n, m, h, w, generator=g, dtype=torch.float64)
    grad_x, grad_w = pointwise_conv2d_backward(grad_out, x, weight)
    torch.testing.assert_close(grad_x, torch.nn.grad.conv2d_input(x.shape, weight, grad_out))
    torch.testing.assert_close(grad_w, torch.nn.grad.conv2d_weight(x, weight.shape, grad_out))


def test_numerical_gradient_is_central_and_leaves_x_alone():
    x = torch.linspace(-1, 1, 7, dtype=torch.float64).view(7, 1)
    before = x.clone()
    # d/dx sum(sin(3x)) = 3 cos(3x); a central difference with h = 1e-2 is within h^2 * 27 / 6
    grad = numerical_gradient(lambda t: torch.sin(3 * t).sum(), x, h=1e-2)
    assert torch.equal(x, before)
    assert (grad - 3 * torch.cos(3 * x)).abs().max() < 27 * 1e-4 / 6
    # a one-sided difference would be off by about h/2 * f'' = 0.045 here: the test tells them apart
    forward = (torch.sin(3 * (x + 1e-2)) - torch.sin(3 * x)) / 1e-2
    assert (forward - 3 * torch.cos(3 * x)).abs().max() > 0.02


def test_gradient_check_of_the_depthwise_backward():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 2, 5, 6, generator=g, dtype=torch.float64)
    weight = torch.randn(2, 1, 3, 3, generator=g, dtype=torch.float64)
    grad_out = torch.randn(1, 2, 3, 3, generator=g, dtype=torch.float64)
    grad_x, grad_w = depthwise_conv2d_backward(grad_out, x, weight, stride=2, padding=1)
    num_x = numerical_gradient(lambda t: (F.conv2d(t, weight, stride=2, padding=1, groups=2)
                                          * grad_out).sum(), x)
    num_w = numerical_gradient(lambda t: (F.conv2d(x, t, stride=2, padding=1, groups=2)
                                          * grad_out).sum(), weight)
    assert relative_error(grad_x, num_x) < 1e-7 and relative_error(grad_w, num_w) < 1e-7
    assert relative_error(grad_x, grad_x.flip(-1, -2)) > 1e-2
    assert relative_error(torch.zeros(3), torch.zeros(3)) == 0.0


def test_bad_input_says_what_to_pass():
    x, weight = torch.randn(1, 3, 6, 6), torch.randn(3, 1, 3, 3)
    with pytest.raises(ValueError, match=r"grad_out must have the output's shape \(1, 3, 2, 2\)"):
        depthwise_conv2d_backward(torch.randn(1, 3, 4, 4), x, weight, stride=2)
    with pytest.raises(ValueError, match="depth multiplier 1"):
        depthwise_conv2d_backward(torch.randn(1, 6, 4, 4), x, torch.randn(6, 1, 3, 3))
    with pytest.raises(ValueError, match="pointwise weight"):
        pointwise_conv2d_backward(torch.randn(1, 2, 6, 6), x, torch.randn(2, 4, 1, 1))
    with pytest.raises(ValueError, match="h must be a positive number"):
        numerical_gradient(lambda t: t.sum(), x, h=0)
