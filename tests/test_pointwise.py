"""course_lib.pointwise against PyTorch's own convolution, on random shapes."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib.pointwise import (PointwiseConv2d, input_positions_used, pointwise_as_linear,
                                  pointwise_as_matmul)


def random_problems(seed, count=8):
    g = torch.Generator().manual_seed(seed)
    for _ in range(count):
        n, c, m, h, w = (int(torch.randint(lo, hi, (1,), generator=g))
                         for lo, hi in ((1, 4), (1, 9), (1, 9), (1, 12), (1, 12)))
        bias = bool(torch.randint(2, (1,), generator=g))
        yield (torch.randn(n, c, h, w, generator=g), torch.randn(m, c, 1, 1, generator=g),
               torch.randn(m, generator=g) if bias else None)


@pytest.mark.parametrize("seed", range(3))
def test_matmul_and_linear_forms_equal_conv2d(seed):
    for x, weight, bias in random_problems(seed):
        expected = F.conv2d(x, weight, bias)
        torch.testing.assert_close(pointwise_as_matmul(x, weight, bias), expected)
        torch.testing.assert_close(pointwise_as_linear(x, weight, bias), expected)
        # the (M, C) matrix form of the weight is accepted too
        torch.testing.assert_close(pointwise_as_linear(x, weight[:, :, 0, 0], bias), expected)


@pytest.mark.parametrize("stride,groups", [(1, 1), (2, 1), (3, 1), (1, 2), (2, 4)])
def test_module_equals_nn_conv2d(stride, groups):
    torch.manual_seed(stride * 10 + groups)
    layer = PointwiseConv2d(8, 12, stride=stride, groups=groups)
    reference = nn.Conv2d(8, 12, 1, stride=stride, groups=groups)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(2, 8, 9, 10)
    torch.testing.assert_close(layer(x), reference(x))
    assert layer(x).shape[-2:] == ((9 - 1) // stride + 1, (10 - 1) // stride + 1)


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("size", [(7, 7), (8, 6), (5, 11)])
def test_strided_1x1_reads_every_stride_th_pixel(stride, size):
    mask = input_positions_used(PointwiseConv2d(3, 2, stride=stride), (1, 3, *size))
    rows = torch.arange(size[0]) % stride == 0
    cols = torch.arange(size[1]) % stride == 0
    assert torch.equal(mask, rows[:, None] & cols[None, :])


def test_positions_used_agree_with_perturbation():
    """Independent check: perturbing a pixel changes the output exactly where the mask says."""
    layer = nn.Sequential(nn.Conv2d(2, 2, 3, stride=2), nn.Conv2d(2, 2, 1, stride=2))
    mask = input_positions_used(layer, (1, 2, 9, 9))
    x = torch.randn(1, 2, 9, 9)
    with torch.no_grad():
        base = layer(x)
        for i in range(9):
            for j in range(9):
                poked = x.clone()
                poked[0, :, i, j] += 5.0
                assert (not torch.equal(layer(poked), base)) == bool(mask[i, j]), (i, j)


def test_full_coverage_for_3x3_same_padding():
    assert input_positions_used(nn.Conv2d(2, 2, 3, padding=1), (1, 2, 6, 6)).all()


@pytest.mark.parametrize("make", [
    lambda: PointwiseConv2d(0, 3), lambda: PointwiseConv2d(3, -1), lambda: PointwiseConv2d(3, 4, 0),
    lambda: PointwiseConv2d(True, 4), lambda: PointwiseConv2d(6, 4, groups=4),
    lambda: PointwiseConv2d(4, 6, groups=4)])
def test_bad_constructor_arguments(make):
    with pytest.raises(ValueError):
        make()


def test_bad_inputs_are_named():
    layer = PointwiseConv2d(3, 4)
    with pytest.raises(ValueError, match="expects 3 input channels"):
        layer(torch.randn(1, 5, 4, 4))
    with pytest.raises(ValueError, match="4 dimensions"):
        layer(torch.randn(3, 4, 4))
    with pytest.raises(ValueError, match="weight must be"):
        pointwise_as_matmul(torch.randn(1, 3, 4, 4), torch.randn(4, 5))
    with pytest.raises(ValueError, match="weight must be"):
        pointwise_as_linear(torch.randn(1, 3, 4, 4), torch.randn(4, 3, 3, 3))
    with pytest.raises(ValueError, match="bias must have shape"):
        pointwise_as_linear(torch.randn(1, 3, 4, 4), torch.randn(4, 3), torch.randn(3))
    with pytest.raises(ValueError, match="nn.Module"):
        input_positions_used(lambda x: x, (1, 1, 2, 2))
    with pytest.raises(ValueError, match="input_shape"):
        input_positions_used(layer, (3, 4, 4))
