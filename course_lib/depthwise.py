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
        v.tensor_of_rank(x, 4, "input", "N, C, H, W")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"DepthwiseConv2d expects {self.in_channels} input channels, "
                             f"got input of shape {tuple(x.shape)}")
        return super().forward(x)
