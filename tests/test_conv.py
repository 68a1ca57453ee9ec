"""course_lib.conv against torch.nn.functional.conv2d."""
import pytest
import torch
import torch.nn.functional as F

from course_lib.checks.cases import conv_cases
from course_lib.conv import conv2d_loops, conv2d_output_shape, conv2d_unfold, conv_output_size


@pytest.mark.parametrize("case", conv_cases(seed=7, count=12), ids=lambda c: (
    f"x{tuple(c.x.shape)}-w{tuple(c.weight.shape)}-s{c.stride}p{c.padding}d{c.dilation}g{c.groups}"))
@pytest.mark.parametrize("impl", [conv2d_loops, conv2d_unfold], ids=lambda f: f.__name__)
def test_equals_pytorch(impl, case):
    expected = F.conv2d(case.x, case.weight, **case.kwargs())
    torch.testing.assert_close(impl(case.x, case.weight, **case.kwargs()), expected,
                               atol=1e-4, rtol=1e-4)


def test_rectangular_kernel_and_asymmetric_arguments():
    torch.manual_seed(1)
    x, w, b = torch.randn(2, 6, 11, 9), torch.randn(4, 3, 3, 2), torch.randn(4)
    kwargs = dict(stride=(2, 1), padding=(1, 2), dilation=(2, 1), groups=2)
    expected = F.conv2d(x, w, b, **kwargs)
    torch.testing.assert_close(conv2d_unfold(x, w, b, **kwargs), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(conv2d_loops(x, w, b, **kwargs), expected, atol=1e-5, rtol=1e-5)


def test_gradients_flow_like_pytorch():
    torch.manual_seed(2)
    x = torch.randn(1, 4, 7, 7, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, requires_grad=True)
    conv2d_unfold(x, w, stride=2, padding=1, groups=2).square().sum().backward()
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    F.conv2d(x, w, stride=2, padding=1, groups=2).square().sum().backward()
    torch.testing.assert_close(gx, x.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gw, w.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("size", [1, 5, 8, 31, 224])
@pytest.mark.parametrize("k,s,p,d", [(1, 1, 0, 1), (3, 1, 1, 1), (3, 2, 1, 1), (5, 3, 2, 2),
                                     (7, 2, 3, 1), (3, 1, 0, 4)])
def test_output_size_matches_pytorch(size, k, s, p, d):
    if d * (k - 1) + 1 > size + 2 * p:
        with pytest.raises(ValueError, match="kernel spans"):
            conv_output_size(size, k, s, p, d)
        return
    out = F.conv2d(torch.zeros(1, 1, size, size), torch.zeros(1, 1, k, k), stride=s, padding=p,
                   dilation=d)
    assert conv_output_size(size, k, s, p, d) == out.shape[-1]
    assert conv2d_output_shape((2, 1, size, size), 5, k, s, p, d) == (2, 5, *out.shape[-2:])


@pytest.mark.parametrize("call, message", [
    (lambda: conv2d_unfold(torch.zeros(3, 8, 8), torch.zeros(4, 3, 3, 3)), "4 dimensions"),
    (lambda: conv2d_unfold(torch.zeros(1, 3, 8, 8), torch.zeros(4, 2, 3, 3)), "channel mismatch"),
    (lambda: conv2d_unfold(torch.zeros(1, 4, 8, 8), torch.zeros(4, 2, 3, 3), groups=3),
     "groups=3 must divide"),
    (lambda: conv2d_unfold(torch.zeros(1, 3, 8, 8), torch.zeros(4, 3, 3, 3),
                           bias=torch.zeros(4, 6, 6)), "one scalar per output channel"),
    (lambda: conv2d_loops(torch.zeros(1, 3, 8, 8), torch.zeros(4, 3, 3, 3), stride=0),
     "stride must be >= 1"),
    (lambda: conv2d_unfold(torch.zeros(1, 3, 8, 8), torch.zeros(4, 3, 3, 3), padding=-1),
     "padding must be >= 0"),
    (lambda: conv2d_unfold([[1.0]], torch.zeros(4, 3, 3, 3)), "must be a torch.Tensor"),
    (lambda: conv_output_size(0, 3), "size must be a positive int"),
    (lambda: conv_output_size(4, 3, 1, 0, 3), "kernel spans 7 pixels"),
])
def test_bad_input_names_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()
