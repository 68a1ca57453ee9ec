"""Pointwise (1x1) convolution: a per-pixel linear map over channels."""
from __future__ import annotations

import torch
from torch import nn

from course_lib import _validate as v


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 convolution from ``in_channels`` to ``out_channels``: ``nn.Conv2d`` with kernel 1.

    It is nothing but a standard convolution with K = 1; the class exists to name the idea and to
    validate its arguments. Stride s > 1 keeps only every s-th pixel in each direction.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, bias: bool = True,
                 groups: int = 1):
        v.positive_int(in_channels, "in_channels")
        v.positive_int(out_channels, "out_channels")
        v.positive_int(stride, "stride")
        v.check_groups(in_channels, out_channels, groups)
        super().__init__(in_channels, out_channels, kernel_size=1, stride=stride, bias=bias,
                         groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(v.image_batch(x, self.in_channels, "PointwiseConv2d"))


def pointwise_as_matmul(x: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor | None = None) -> torch.Tensor:
    """The same computation as a matrix multiply over the channel axis at every pixel:
    ``out[n, :, i, j] = W @ x[n, :, i, j] + b`` with ``W`` of shape (M, C) (or (M, C, 1, 1))."""
    v.tensor_of_rank(x, 4, "input", "N, C, H, W")
    w = weight.reshape(weight.shape[0], -1) if weight.dim() == 4 else weight
    if w.dim() != 2 or w.shape[1] != x.shape[1]:
        raise ValueError(f"weight must be (M, {x.shape[1]}) or (M, {x.shape[1]}, 1, 1), "
                         f"got {tuple(weight.shape)}")
    out = torch.einsum("mc,nchw->nmhw", w, x)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def pointwise_as_linear(x: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor | None = None) -> torch.Tensor:
    """The same computation as ``nn.Linear`` applied to a channels-last view.

    ``permute`` (not ``reshape``!) moves the channel axis last, so every pixel becomes a row of
    ``C`` numbers; ``F.linear`` maps each row to ``M`` numbers; a second ``permute`` puts the
    channels back in front. ``weight`` is (M, C) or (M, C, 1, 1), as for
    :func:`pointwise_as_matmul`.
    """
    v.tensor_of_rank(x, 4, "input", "N, C, H, W")
    w = weight.reshape(weight.shape[0], -1) if weight.dim() == 4 else weight
    if w.dim() != 2 or w.shape[1] != x.shape[1]:
        raise ValueError(f"weight must be (M, {x.shape[1]}) or (M, {x.shape[1]}, 1, 1), "
                         f"got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (w.shape[0],):
        raise ValueError(f"bias must have shape ({w.shape[0]},), got {tuple(bias.shape)}")
    channels_last = x.permute(0, 2, 3, 1)                      # (N, H, W, C): one row per pixel
    return torch.nn.functional.linear(channels_last, w, bias).permute(0, 3, 1, 2)


def input_positions_used(module: nn.Module, input_shape: tuple[int, int, int, int],
                         seed: int = 0) -> torch.Tensor:
    """Which input pixels can change ``module``'s output: a bool (H, W) mask.

    Back-propagates a random output gradient through one forward pass on a random input; a pixel
    whose input gradient is exactly zero in every channel is never read (random values make an
    accidental cancellation practically impossible). Works for any layer, e.g. to see that a 1x1
    convolution with stride 2 reads only every second row and column.
    """
    if not isinstance(module, nn.Module):
        raise ValueError(f"module must be an nn.Module, got {type(module).__name__}")
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise ValueError(f"input_shape must be (N, C, H, W), got {input_shape!r}") from None
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError("input_shape must be four positive sizes (N, C, H, W), got "
                         f"{input_shape!r}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).requires_grad_(True)
    out = module(x)
    (grad,) = torch.autograd.grad(out, x, torch.randn(out.shape, generator=g))
    return grad.abs().sum(dim=(0, 1)) > 0
