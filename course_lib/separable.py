"""Depthwise-separable convolution: a depthwise conv (spatial filtering, per channel) followed by
a pointwise conv (mixing channels), each optionally followed by BatchNorm and an activation, as in
MobileNet (3x3 depthwise -> BN -> ReLU -> 1x1 pointwise -> BN -> ReLU)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from course_lib import _validate as v
from course_lib.depthwise import DepthwiseConv2d
from course_lib.pointwise import PointwiseConv2d


class DepthwiseSeparableConv2d(nn.Module):
    """Depthwise ``K x K`` (stride, dilation, depth multiplier) then pointwise ``1 x 1``.

    ``norm=True`` puts BatchNorm after each conv (convs then have no bias, as BN's shift replaces
    it); ``activation`` is a module factory applied after each BN (``None`` for a purely linear
    block, e.g. to compare with a full convolution). ``mid_activation=False`` drops the activation
    between depthwise and pointwise (Xception's finding, chapter 5).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, padding: int | None = None, dilation: int = 1,
                 depth_multiplier: int = 1, norm: bool = True,
                 activation: Callable[[], nn.Module] | None = nn.ReLU,
                 mid_activation: bool = True, bias: bool | None = None):
        super().__init__()
        v.positive_int(in_channels, "in_channels")
        v.positive_int(out_channels, "out_channels")
        use_bias = (not norm) if bias is None else bias
        self.depthwise = DepthwiseConv2d(in_channels, kernel_size, depth_multiplier, stride,
                                         padding, dilation, bias=use_bias)
        self.bn1 = nn.BatchNorm2d(in_channels * depth_multiplier) if norm else nn.Identity()
        self.act1 = activation() if (activation and mid_activation) else nn.Identity()
        self.pointwise = PointwiseConv2d(in_channels * depth_multiplier, out_channels,
                                         bias=use_bias)
        self.bn2 = nn.BatchNorm2d(out_channels) if norm else nn.Identity()
        self.act2 = activation() if activation else nn.Identity()
        self.in_channels, self.out_channels = in_channels, out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.depthwise(x)))
        return self.act2(self.bn2(self.pointwise(x)))


def separable_to_full_kernel(depthwise_weight: torch.Tensor,
                             pointwise_weight: torch.Tensor) -> torch.Tensor:
    """The standard-conv kernel that a (linear, bias-free, depth multiplier 1) separable conv
    equals: ``W[m, c] = P[m, c] * D[c]``, shape (M, C, K, K)."""
    v.tensor_of_rank(depthwise_weight, 4, "depthwise_weight", "C, 1, K, K")
    v.tensor_of_rank(pointwise_weight, 4, "pointwise_weight", "M, C, 1, 1")
    if depthwise_weight.shape[1] != 1:
        raise ValueError("depthwise_weight must have shape (C, 1, K, K) (depth multiplier 1), got "
                         f"{tuple(depthwise_weight.shape)}")
    c = depthwise_weight.shape[0]
    if pointwise_weight.shape[1:] != (c, 1, 1):
        raise ValueError(f"pointwise_weight must have shape (M, {c}, 1, 1), got "
                         f"{tuple(pointwise_weight.shape)}")
    return pointwise_weight[:, :, 0, 0, None, None] * depthwise_weight[None, :, 0]
