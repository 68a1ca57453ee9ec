"""Backward passes of the depthwise and pointwise convolutions, written out (no autograd), and
the finite-difference gradient check that verifies them.

For ``y = conv(x, w)`` and an upstream gradient ``g = dL/dy``:

* the weight gradient correlates the input with ``g``: every weight is used at every output
  position, so its gradient sums the input values it met there times ``g`` (over the batch too);
* the input gradient sends ``g`` back through the same taps: each output position adds
  ``w * g`` to the input pixels it read. As a convolution, that is ``g`` spread out with the
  stride (s - 1 zeros between its values), padded, and convolved with the *flipped* kernel,
  then cropped by the padding.

The vectorised versions here do both with ``unfold`` / ``fold`` (im2col and its adjoint), so
stride, padding and a stride that does not divide the input evenly need no special cases.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from course_lib import _validate as v


def _depthwise_shapes(x: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor,
                      stride: int, padding: int) -> tuple[int, int]:
    v.tensor_of_rank(x, 4, "x", "N, C, H, W")
    v.tensor_of_rank(weight, 4, "weight", "C, 1, K_h, K_w")
    v.tensor_of_rank(grad_out, 4, "grad_out", "N, C, H_out, W_out")
    v.positive_int(stride, "stride")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be an int >= 0, got {padding!r}")
    n, c, h, w = x.shape
    if tuple(weight.shape[:2]) != (c, 1):
        raise ValueError(f"a depthwise weight for {c} channels (depth multiplier 1) has shape "
                         f"({c}, 1, K_h, K_w), got {tuple(weight.shape)}")
    k_h, k_w = weight.shape[2:]
    out_h = (h + 2 * padding - k_h) // stride + 1
    out_w = (w + 2 * padding - k_w) // stride + 1
    if tuple(grad_out.shape) != (n, c, out_h, out_w):
        raise ValueError(f"grad_out must have the output's shape {(n, c, out_h, out_w)} "
                         f"(stride {stride}, padding {padding}), got {tuple(grad_out.shape)}")
    return out_h, out_w


def depthwise_conv2d_backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                              stride: int = 1, padding: int = 0
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_x, grad_weight)`` of ``F.conv2d(x, weight, stride=stride, padding=padding,
    groups=C)`` with weight (C, 1, K_h, K_w) (depth multiplier 1), given ``grad_out`` = dL/dy."""
    _depthwise_shapes(x, weight, grad_out, stride, padding)
    n, c, h, w = x.shape
    k_h, k_w = weight.shape[2:]
    # cols[n, c, t, l]: the input value tap t (of K_h * K_w) read at output position l.
    cols = F.unfold(x, (k_h, k_w), padding=padding, stride=stride).view(n, c, k_h * k_w, -1)
    g = grad_out.reshape(n, c, 1, -1)
    grad_weight = (cols * g).sum(dim=(0, 3)).view(c, 1, k_h, k_w)
    # Each output position sends w * g back to the taps it read; fold adds the overlaps up and
    # drops what landed in the padding.
    grad_cols = weight.view(1, c, k_h * k_w, 1) * g
    grad_x = F.fold(grad_cols.view(n, c * k_h * k_w, -1), (h, w), (k_h, k_w), padding=padding,
                    stride=stride)
    return grad_x, grad_weight


def pointwise_conv2d_backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_x, grad_weight)`` of the 1x1 convolution ``F.conv2d(x, weight)``, weight (M, C, 1, 1):
    per pixel y = W x, so dL/dx = W^T g and dL/dW = sum over pixels and batch of g x^T."""
    v.tensor_of_rank(x, 4, "x", "N, C, H, W")
    v.tensor_of_rank(weight, 4, "weight", "M, C, 1, 1")
    v.tensor_of_rank(grad_out, 4, "grad_out", "N, M, H, W")
    m, c = weight.shape[:2]
    if tuple(weight.shape[2:]) != (1, 1) or x.shape[1] != c:
        raise ValueError(f"a pointwise weight for {x.shape[1]} input channels has shape "
                         f"(M, {x.shape[1]}, 1, 1), got {tuple(weight.shape)}")
    if tuple(grad_out.shape) != (x.shape[0], m, *x.shape[2:]):
        raise ValueError(f"grad_out must have the output's shape {(x.shape[0], m, *x.shape[2:])}, "
                         f"got {tuple(grad_out.shape)}")
    w2 = weight[:, :, 0, 0]
    grad_x = torch.einsum("mc,nmhw->nchw", w2, grad_out)
    grad_weight = torch.einsum("nmhw,nchw->mc", grad_out, x)[:, :, None, None]
    return grad_x, grad_weight


def numerical_gradient(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                       h: float = 1e-6) -> torch.Tensor:
    """Central differences of a scalar function: ``(f(x + h e_i) - f(x - h e_i)) / (2 h)`` for
    every element i of x (error O(h^2), against O(h) for a one-sided difference). Use float64:
    in float32 the rounding error of f, divided by 2h, swamps the result. ``x`` is not changed."""
    if isinstance(h, bool) or not isinstance(h, (int, float)) or not h > 0:
        raise ValueError(f"h must be a positive number, got {h!r}")
    point = x.detach().clone()  # perturbed in place; the caller's x is never touched
    grad = torch.zeros_like(point)
    flat, grad_flat = point.view(-1), grad.view(-1)
    with torch.no_grad():
        for i in range(flat.numel()):
            saved = flat[i].item()
            flat[i] = saved + h
            plus = float(f(point))
            flat[i] = saved - h
            minus = float(f(point))
            flat[i] = saved
            grad_flat[i] = (plus - minus) / (2 * h)
    return grad


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max(|a| + |b|), the usual gradient-check measure (0 when both are zero):
    around 1e-7 or less in float64 for a correct gradient, 1e-2 or more for a wrong one."""
    scale = (a.abs() + b.abs()).max().item()
    return 0.0 if scale == 0 else (a - b).abs().max().item() / scale
