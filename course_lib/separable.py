"""Depthwise-separable convolution: a depthwise conv (spatial filtering, per channel) followed by
a pointwise conv (mixing channels), each optionally followed by BatchNorm and an activation, as in
MobileNet (3x3 depthwise -> BN -> ReLU -> 1x1 pointwise -> BN -> ReLU).

Also here (chapter 4):

* costs built on :mod:`course_lib.costs`: :func:`separable_params`, :func:`separable_macs` and the
  cost ratio against a standard convolution, :func:`separable_cost_ratio` (``d/M + d/K^2``);
* the exact link to a standard convolution: :func:`separable_to_full_kernel` builds the
  rank-structured kernel ``W[m, c] = sum_j P[m, c*d + j] * D[c*d + j]``;
* how well a separable conv approximates a given full conv: :func:`fit_separable` (the optimal fit,
  by one SVD per input channel) and :func:`fit_separable_gd` (gradient descent, as a cross-check).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from course_lib import _validate as v
from course_lib import costs
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


def _check_depth_multiplier(depth_multiplier: int) -> int:
    return v.positive_int(depth_multiplier, "depth_multiplier")


def separable_to_full_kernel(depthwise_weight: torch.Tensor, pointwise_weight: torch.Tensor,
                             depth_multiplier: int = 1) -> torch.Tensor:
    """The standard-conv kernel that a linear, bias-free separable conv equals, shape (M, C, K, K).

    With depth multiplier 1: ``W[m, c] = P[m, c] * D[c]`` (a scalar times a K x K filter). With depth
    multiplier ``d`` input channel ``c`` owns the ``d`` depthwise filters ``D[c*d + j]``, so
    ``W[m, c] = sum_j P[m, c*d + j] * D[c*d + j]``: every (M x K^2) slice ``W[:, c]`` has rank <= d.

    ``depthwise_weight``: (C*d, 1, K_h, K_w) (``DepthwiseConv2d.weight``); ``pointwise_weight``:
    (M, C*d, 1, 1) (``PointwiseConv2d.weight``).
    """
    d = _check_depth_multiplier(depth_multiplier)
    v.tensor_of_rank(depthwise_weight, 4, "depthwise_weight", "C * depth_multiplier, 1, K, K")
    v.tensor_of_rank(pointwise_weight, 4, "pointwise_weight", "M, C * depth_multiplier, 1, 1")
    if depthwise_weight.shape[1] != 1:
        raise ValueError("depthwise_weight must have shape (C * depth_multiplier, 1, K, K): one "
                         f"filter per output channel of the depthwise conv, got "
                         f"{tuple(depthwise_weight.shape)}")
    cd = depthwise_weight.shape[0]
    if cd % d:
        raise ValueError(f"depthwise_weight has {cd} filters, not a multiple of "
                         f"depth_multiplier={d}")
    if tuple(pointwise_weight.shape[1:]) != (cd, 1, 1):
        raise ValueError(f"pointwise_weight must have shape (M, {cd}, 1, 1) to follow a depthwise "
                         f"conv with {cd} output channels, got {tuple(pointwise_weight.shape)}")
    c, (kh, kw) = cd // d, depthwise_weight.shape[-2:]
    p = pointwise_weight[:, :, 0, 0].reshape(-1, c, d)        # (M, C, d)
    dw = depthwise_weight[:, 0].reshape(c, d, kh, kw)          # (C, d, K_h, K_w)
    return torch.einsum("mcj,cjhw->mchw", p, dw)


# --- costs ------------------------------------------------------------------------------------

def separable_params(in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                     depth_multiplier: int = 1, bias: bool = False) -> int:
    """Parameters of depthwise (K^2 * C * d) + pointwise (C * d * M), plus biases if ``bias``
    (C * d + M). BatchNorm parameters are not included."""
    d = _check_depth_multiplier(depth_multiplier)
    v.positive_int(in_channels, "in_channels")
    mid = in_channels * d
    return (costs.conv2d_params(in_channels, mid, kernel_size, groups=in_channels, bias=bias)
            + costs.conv2d_params(mid, out_channels, 1, bias=bias))


def separable_macs(in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                   output_size: int | Sequence[int], depth_multiplier: int = 1,
                   batch_size: int = 1) -> int:
    """Mult-adds of depthwise (K^2 * C * d * H * W) + pointwise (C * d * M * H * W), where H x W
    is the output size (any stride is the depthwise conv's, so both run at the output size)."""
    d = _check_depth_multiplier(depth_multiplier)
    v.positive_int(in_channels, "in_channels")
    mid = in_channels * d
    return (costs.conv2d_macs(in_channels, mid, kernel_size, output_size, groups=in_channels,
                              batch_size=batch_size)
            + costs.conv2d_macs(mid, out_channels, 1, output_size, batch_size=batch_size))


def separable_cost_ratio(out_channels: int, kernel_size: int | Sequence[int],
                         depth_multiplier: int = 1) -> float:
    """Separable / standard cost (MACs, and weights without bias): ``d/M + d/K^2``.

    (K^2*C*d + C*d*M) / (K^2*C*M) = d/M + d/K^2: the input channels C cancel, so the saving depends
    only on the output channels M, the kernel size K and the depth multiplier d. It is below 1/K^2
    never, and close to 1/K^2 only when M >> K^2 (and d = 1)."""
    d = _check_depth_multiplier(depth_multiplier)
    v.positive_int(out_channels, "out_channels")
    kh, kw = v.positive_pair(kernel_size, "kernel_size")
    return d / out_channels + d / (kh * kw)


# --- approximating a full convolution ---------------------------------------------------------

@dataclass(frozen=True)
class SeparableFit:
    """A separable approximation of a full kernel ``W`` (M, C, K_h, K_w).

    ``depthwise_weight`` (C*d, 1, K_h, K_w) and ``pointwise_weight`` (M, C*d, 1, 1) load straight
    into ``DepthwiseSeparableConv2d(C, M, K, depth_multiplier=d, norm=False, activation=None,
    bias=False)``; ``relative_error`` is ||W - W_fit||_F / ||W||_F.
    """

    depthwise_weight: torch.Tensor
    pointwise_weight: torch.Tensor
    depth_multiplier: int
    relative_error: float

    def full_kernel(self) -> torch.Tensor:
        return separable_to_full_kernel(self.depthwise_weight, self.pointwise_weight,
                                        self.depth_multiplier)


def _check_full_weight(weight: torch.Tensor) -> torch.Tensor:
    v.tensor_of_rank(weight, 4, "weight", "M, C, K, K")
    if not weight.is_floating_point():
        raise ValueError(f"weight must be a floating-point tensor, got dtype {weight.dtype}")
    if weight.norm() == 0:
        raise ValueError("weight is all zeros: the relative error is undefined")
    return weight.detach()


def _relative_error(weight: torch.Tensor, approx: torch.Tensor) -> float:
    return ((weight - approx).norm() / weight.norm()).item()


def fit_separable(weight: torch.Tensor, depth_multiplier: int = 1) -> SeparableFit:
    """The best separable approximation of a full kernel, in the least-squares (Frobenius) sense.

    A separable kernel's slice ``W[:, c]``, flattened to an M x K^2 matrix, is a sum of
    ``depth_multiplier`` outer products (pointwise column x depthwise filter): a matrix of rank
    <= d. By the Eckart-Young theorem the nearest rank-d matrix is the truncated SVD, and the input
    channels are independent, so one batched SVD gives the optimum; it is exact once
    d >= min(M, K^2).
    """
    w = _check_full_weight(weight)
    d = _check_depth_multiplier(depth_multiplier)
    m, c, kh, kw = w.shape
    slices = w.permute(1, 0, 2, 3).reshape(c, m, kh * kw).double()   # (C, M, K^2)
    u, s, vh = torch.linalg.svd(slices, full_matrices=False)          # rank r = min(M, K^2)
    r = s.shape[-1]
    keep = min(d, r)
    p = torch.zeros(m, c, d, dtype=torch.float64)
    dw = torch.zeros(c, d, kh * kw, dtype=torch.float64)
    # Split each singular value evenly between the two factors (balanced scales).
    root = s[:, :keep].sqrt()                                          # (C, keep)
    p[:, :, :keep] = (u[:, :, :keep] * root[:, None, :]).permute(1, 0, 2)
    dw[:, :keep] = vh[:, :keep] * root[:, :, None]
    depthwise = dw.reshape(c * d, 1, kh, kw).to(w.dtype)
    pointwise = p.reshape(m, c * d, 1, 1).to(w.dtype)
    approx = separable_to_full_kernel(depthwise, pointwise, d)
    return SeparableFit(depthwise, pointwise, d, _relative_error(w, approx))


def fit_separable_gd(weight: torch.Tensor, depth_multiplier: int = 1, steps: int = 500,
                     lr: float = 0.05, seed: int = 0) -> SeparableFit:
    """Fit the same factors by gradient descent (Adam, seeded random start) on the squared kernel
    error. Slower and never better than :func:`fit_separable`; it exists as an independent check
    that the SVD answer is the optimum, and to show the fit as "training" a separable layer."""
    w = _check_full_weight(weight)
    d = _check_depth_multiplier(depth_multiplier)
    v.positive_int(steps, "steps")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    m, c, kh, kw = w.shape
    g = torch.Generator().manual_seed(seed)
    scale = w.std().item() ** 0.5
    depthwise = (torch.randn(c * d, 1, kh, kw, generator=g) * scale).requires_grad_()
    pointwise = (torch.randn(m, c * d, 1, 1, generator=g) * scale).requires_grad_()
    optimizer = torch.optim.Adam([depthwise, pointwise], lr=lr)
    target = w.float()
    for _ in range(steps):
        loss = (separable_to_full_kernel(depthwise, pointwise, d) - target).pow(2).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    depthwise, pointwise = depthwise.detach(), pointwise.detach()
    approx = separable_to_full_kernel(depthwise, pointwise, d)
    return SeparableFit(depthwise, pointwise, d, _relative_error(target, approx))
