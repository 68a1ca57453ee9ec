"""Depthwise convolution: one K x K filter per input channel (groups = channels)."""
from __future__ import annotations

import torch
from torch import nn

from course_lib import _validate as v


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(C, C * depth_multiplier, K, groups=C)``.

    Each input channel gets ``depth_multiplier`` filters of its own and never mixes with other
    channels. Output channel ``c * depth_multiplier + j`` is filter ``j`` of input channel ``c``
    (the same order as Keras' ``DepthwiseConv2D(depth_multiplier=...)``). ``padding=None`` means
    "same" for stride 1: ``dilation * (kernel_size - 1) // 2``.
    """

    def __init__(self, channels: int, kernel_size: int = 3, depth_multiplier: int = 1,
                 stride: int = 1, padding: int | None = None, dilation: int = 1,
                 bias: bool = True):
        v.positive_int(channels, "channels")
        v.positive_int(kernel_size, "kernel_size")
        v.positive_int(depth_multiplier, "depth_multiplier")
        v.positive_int(stride, "stride")
        v.positive_int(dilation, "dilation")
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding must be an int >= 0 or None, got {padding!r}")
        super().__init__(channels, channels * depth_multiplier, kernel_size, stride=stride,
                         padding=padding, dilation=dilation, groups=channels, bias=bias)
        self.depth_multiplier = depth_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(v.image_batch(x, self.in_channels, "DepthwiseConv2d"))


def depthwise_per_channel(x: torch.Tensor, weight: torch.Tensor,
                          bias: torch.Tensor | None = None, stride: int = 1, padding: int = 0,
                          dilation: int = 1) -> torch.Tensor:
    """The teaching version of a depthwise convolution: one ordinary single-channel ``F.conv2d``
    per input channel, no ``groups``.

    ``weight`` is (C * k, 1, K, K) as in PyTorch (k = depth multiplier). Filter ``j`` of input
    channel ``c`` is ``weight[c * k + j]`` and its result is output channel ``c * k + j``: the
    outputs of channel 0 come first, then those of channel 1, ...
    """
    v.tensor_of_rank(x, 4, "input", "N, C, H, W")
    v.tensor_of_rank(weight, 4, "weight", "C * depth_multiplier, 1, K, K")
    v.positive_int(stride, "stride")
    v.positive_int(dilation, "dilation")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be an int >= 0, got {padding!r}")
    channels = x.shape[1]
    if weight.shape[1] != 1 or weight.shape[0] % channels:
        raise ValueError(f"a depthwise weight for {channels} channels must have shape "
                         f"({channels} * depth_multiplier, 1, K, K), got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), one per output channel, "
                         f"got {tuple(bias.shape)}")
    k = weight.shape[0] // channels
    outputs = []
    for c in range(channels):
        filters = weight[c * k:(c + 1) * k]                       # (k, 1, K, K): channel c's own
        b = None if bias is None else bias[c * k:(c + 1) * k]
        outputs.append(torch.nn.functional.conv2d(x[:, c:c + 1], filters, b, stride=stride,
                                                  padding=padding, dilation=dilation))
    return torch.cat(outputs, dim=1)


def keras_to_torch_depthwise_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """Convert a Keras/TensorFlow depthwise kernel (K_h, K_w, C, k) to PyTorch's (C * k, 1, K_h,
    K_w).

    TensorFlow defines ``output[..., c * k + j] = sum filter[di, dj, c, j] * input[..., c]``, the
    same channel order as ``nn.Conv2d(C, C * k, K, groups=C)``; only the axes move. Flattening
    ``(C, k)`` with C first gives index ``c * k + j``.
    """
    v.tensor_of_rank(kernel, 4, "kernel", "K_h, K_w, C, depth_multiplier")
    kh, kw, c, k = kernel.shape
    return kernel.permute(2, 3, 0, 1).reshape(c * k, 1, kh, kw)


def torch_to_keras_depthwise_kernel(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """Inverse of :func:`keras_to_torch_depthwise_kernel`: (C * k, 1, K_h, K_w) -> (K_h, K_w, C,
    k)."""
    v.tensor_of_rank(weight, 4, "weight", "C * depth_multiplier, 1, K_h, K_w")
    v.positive_int(channels, "channels")
    if weight.shape[1] != 1 or weight.shape[0] % channels:
        raise ValueError(f"weight must have shape ({channels} * depth_multiplier, 1, K_h, K_w), "
                         f"got {tuple(weight.shape)}")
    k = weight.shape[0] // channels
    return weight.reshape(channels, k, *weight.shape[2:]).permute(2, 3, 0, 1)
