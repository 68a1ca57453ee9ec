"""course_lib.depthwise against PyTorch's grouped convolution and TensorFlow's documented channel
order, on random shapes."""
import pytest
import torch
import torch.nn.functional as F

from course_lib.costs import conv2d_macs, conv2d_params, count_params, measure_macs
from course_lib.depthwise import (DepthwiseConv2d, depthwise_per_channel,
                                  keras_to_torch_depthwise_kernel, torch_to_keras_depthwise_kernel)


def random_layers(seed, count=8):
    g = torch.Generator().manual_seed(seed)
    pick = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g))  # noqa: E731
    for _ in range(count):
        yield dict(channels=pick(1, 7), kernel_size=pick(1, 6), depth_multiplier=pick(1, 4),
                   stride=pick(1, 4), padding=pick(0, 3), dilation=pick(1, 3),
                   bias=bool(pick(0, 2)))


@pytest.mark.parametrize("seed", range(3))
def test_module_and_loop_equal_grouped_conv2d(seed):
    torch.manual_seed(seed)
    for args in random_layers(seed):
        layer = DepthwiseConv2d(**args)
        c = args["channels"]
        size = args["dilation"] * (args["kernel_size"] - 1) + 1 + 5
        x = torch.randn(2, c, size, size + 2)
        conv_kwargs = dict(stride=args["stride"], padding=args["padding"],
                           dilation=args["dilation"])
        expected = F.conv2d(x, layer.weight, layer.bias, groups=c, **conv_kwargs)
        assert layer.weight.shape == (c * args["depth_multiplier"], 1, args["kernel_size"],
                                      args["kernel_size"])
        torch.testing.assert_close(layer(x), expected)
        torch.testing.assert_close(depthwise_per_channel(x, layer.weight, layer.bias,
                                                         **conv_kwargs), expected)


def test_output_channel_order_is_channel_major():
    """Filter j of channel c lands in output c * k + j: each output channel, computed alone from
    its own input channel, matches."""
    layer = DepthwiseConv2d(4, 3, depth_multiplier=3)
    x = torch.randn(1, 4, 8, 8)
    out = layer(x)
    for c in range(4):
        for j in range(3):
            o = c * 3 + j
            alone = F.conv2d(x[:, c:c + 1], layer.weight[o:o + 1], layer.bias[o:o + 1], padding=1)
            torch.testing.assert_close(out[:, o:o + 1], alone)


@pytest.mark.parametrize("kernel_size,dilation", [(1, 1), (3, 1), (5, 1), (3, 2), (7, 3)])
def test_default_padding_keeps_the_size(kernel_size, dilation):
    layer = DepthwiseConv2d(3, kernel_size, dilation=dilation)
    assert layer(torch.randn(1, 3, 13, 10)).shape == (1, 3, 13, 10)


def test_costs_match_formulas():
    layer = DepthwiseConv2d(32, 3, depth_multiplier=2, bias=False)
    assert count_params(layer) == 3 * 3 * 32 * 2 == conv2d_params(32, 64, 3, groups=32, bias=False)
    assert measure_macs(layer, (1, 32, 20, 20)) == 3 * 3 * 32 * 2 * 20 * 20 == conv2d_macs(
        32, 64, 3, 20, groups=32)


@pytest.mark.parametrize("shape", [(3, 3, 4, 1), (3, 5, 3, 2), (1, 2, 5, 3), (5, 5, 1, 4)])
def test_keras_kernel_conversion_and_round_trip(shape):
    """TensorFlow documents output[..., c * k + q] = sum filter[di, dj, c, q] * input[..., c]:
    compute each output channel that way, alone, and compare with the grouped conv holding the
    converted kernel."""
    kernel = torch.randn(*shape)
    kh, kw, c, k = shape
    weight = keras_to_torch_depthwise_kernel(kernel)
    x = torch.randn(2, c, 9, 8)
    out = F.conv2d(x, weight, groups=c)
    for ci in range(c):
        for q in range(k):
            alone = F.conv2d(x[:, ci:ci + 1], kernel[:, :, ci, q][None, None])
            torch.testing.assert_close(out[:, ci * k + q:ci * k + q + 1], alone)
    assert torch.equal(torch_to_keras_depthwise_kernel(weight, c), kernel)


def test_tensorflow_documented_example():
    """The usage example printed in tf.nn.depthwise_conv2d's documentation (VALID padding)."""
    x = torch.tensor([[1., 2.], [3., 4.], [5., 6.]]).reshape(1, 3, 2, 1).permute(0, 3, 1, 2)
    kernel = torch.tensor([[1., 2.], [3., 4.]]).reshape(2, 1, 1, 2)
    out = F.conv2d(x, keras_to_torch_depthwise_kernel(kernel), groups=1)
    expected = torch.tensor([[[10., 14.], [14., 20.]], [[18., 26.], [22., 32.]]])
    torch.testing.assert_close(out[0].permute(1, 2, 0), expected)


@pytest.mark.parametrize("make", [
    lambda: DepthwiseConv2d(0), lambda: DepthwiseConv2d(3, 0), lambda: DepthwiseConv2d(3, 3, 0),
    lambda: DepthwiseConv2d(3, 3, stride=0), lambda: DepthwiseConv2d(3, 3, dilation=0),
    lambda: DepthwiseConv2d(3, 3, padding=-1), lambda: DepthwiseConv2d(3, 3, padding=1.5),
    lambda: DepthwiseConv2d(3.0, 3)])
def test_bad_constructor_arguments(make):
    with pytest.raises(ValueError):
        make()


def test_bad_inputs_are_named():
    layer = DepthwiseConv2d(3)
    with pytest.raises(ValueError, match="expects 3 input channels"):
        layer(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="4 dimensions"):
        layer(torch.randn(3, 8, 8))
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="depth_multiplier, 1, K, K"):
        depthwise_per_channel(x, torch.randn(4, 1, 3, 3))
    with pytest.raises(ValueError, match="depth_multiplier, 1, K, K"):
        depthwise_per_channel(x, torch.randn(3, 3, 3, 3))
    with pytest.raises(ValueError, match="bias must have shape"):
        depthwise_per_channel(x, torch.randn(6, 1, 3, 3), torch.randn(3))
    with pytest.raises(ValueError, match="stride"):
        depthwise_per_channel(x, torch.randn(3, 1, 3, 3), stride=0)
    with pytest.raises(ValueError, match="kernel"):
        keras_to_torch_depthwise_kernel(torch.randn(3, 3, 3))
    with pytest.raises(ValueError, match="weight must have shape"):
        torch_to_keras_depthwise_kernel(torch.randn(5, 1, 3, 3), 3)
