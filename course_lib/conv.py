"""Standard 2-D convolution, the teaching versions.

Two implementations of what ``torch.nn.functional.conv2d`` computes (cross-correlation, NCHW):

* :func:`conv2d_loops` - explicit loops over output pixels, the definition written out. Slow; for
  tiny inputs in the book.
* :func:`conv2d_unfold` - im2col: ``F.unfold`` gathers every receptive field into a column, then one
  matrix multiply per group does all the multiply-adds. This is how many libraries lower a conv.

Both support stride, padding, dilation and groups, and are tested equal to PyTorch's op.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from course_lib import _validate as v

IntPair = int | Sequence[int]


def conv_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0,
                     dilation: int = 1) -> int:
    """Output length along one spatial axis.

    ``floor((size + 2*padding - dilation*(kernel_size - 1) - 1) / stride) + 1``: the dilated kernel
    spans ``dilation*(kernel_size-1) + 1`` pixels, and it fits ``floor(...)+1`` times with the stride.
    """
    for name, value in (("size", size), ("kernel_size", kernel_size), ("stride", stride),
                        ("dilation", dilation)):
        v.positive_int(value, name)
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be an int >= 0, got {padding!r}")
    effective_kernel = dilation * (kernel_size - 1) + 1
    padded = size + 2 * padding
    if effective_kernel > padded:
        raise ValueError(
            f"the (dilated) kernel spans {effective_kernel} pixels but the padded input is only "
            f"{padded} wide (size={size}, padding={padding})")
    return (padded - effective_kernel) // stride + 1


def conv2d_output_shape(input_shape: Sequence[int], out_channels: int, kernel_size: IntPair,
                        stride: IntPair = 1, padding: IntPair = 0,
                        dilation: IntPair = 1) -> tuple[int, int, int, int]:
    """(N, M, H_out, W_out) for an (N, C, H, W) input."""
    if len(input_shape) != 4:
        raise ValueError(f"input_shape must be (N, C, H, W), got {tuple(input_shape)}")
    n, _, h, w = input_shape
    kh, kw = v.positive_pair(kernel_size, "kernel_size")
    sh, sw = v.positive_pair(stride, "stride")
    ph, pw = v.non_negative_pair(padding, "padding")
    dh, dw = v.positive_pair(dilation, "dilation")
    return (n, out_channels, conv_output_size(h, kh, sh, ph, dh), conv_output_size(w, kw, sw, pw, dw))


def _check_conv_args(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     groups: int) -> None:
    v.tensor_of_rank(x, 4, "input", "N, C, H, W")
    v.tensor_of_rank(weight, 4, "weight", "out_channels, in_channels/groups, kH, kW")
    v.positive_int(groups, "groups")
    out_channels, in_per_group = weight.shape[:2]
    if x.shape[1] % groups:
        raise ValueError(f"groups={groups} must divide the input's {x.shape[1]} channels")
    if out_channels % groups:
        raise ValueError(f"groups={groups} must divide weight's {out_channels} output channels")
    if x.shape[1] // groups != in_per_group:
        raise ValueError(
            f"channel mismatch: input has {x.shape[1]} channels, so with groups={groups} each filter "
            f"must see {x.shape[1] // groups}, but weight has shape {tuple(weight.shape)} "
            f"(dim 1 = {in_per_group})")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (out_channels,):
            shape = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
            raise ValueError(
                f"bias must have shape ({out_channels},): one scalar per output channel, got {shape}")


def conv2d_loops(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                 groups: int = 1) -> torch.Tensor:
    """The definition, as loops: out[n, m, i, j] = bias[m] + sum over (c, u, v) of
    weight[m, c, u, v] * x_padded[n, g*C_g + c, i*s + u*d, j*s + v*d]. Use on tiny inputs only."""
    _check_conv_args(x, weight, bias, groups)
    sh, sw = v.positive_pair(stride, "stride")
    ph, pw = v.non_negative_pair(padding, "padding")
    dh, dw = v.positive_pair(dilation, "dilation")
    m_total, c_per_group, kh, kw = weight.shape
    n, _, h, w = x.shape
    out_h = conv_output_size(h, kh, sh, ph, dh)
    out_w = conv_output_size(w, kw, sw, pw, dw)
    m_per_group = m_total // groups
    xp = F.pad(x, (pw, pw, ph, ph))
    out = torch.zeros(n, m_total, out_h, out_w, dtype=x.dtype, device=x.device)
    for m in range(m_total):
        g = m // m_per_group
        channels = slice(g * c_per_group, (g + 1) * c_per_group)
        for i in range(out_h):
            for j in range(out_w):
                # The receptive field: every d-th pixel starting at (i*s, j*s).
                patch = xp[:, channels, i * sh: i * sh + dh * (kh - 1) + 1: dh,
                           j * sw: j * sw + dw * (kw - 1) + 1: dw]
                out[:, m, i, j] = (patch * weight[m]).sum(dim=(1, 2, 3))
        if bias is not None:
            out[:, m] += bias[m]
    return out


def conv2d_unfold(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                  groups: int = 1) -> torch.Tensor:
    """im2col convolution: unfold patches into columns, then one matmul per group."""
    _check_conv_args(x, weight, bias, groups)
    stride_, padding_ = v.positive_pair(stride, "stride"), v.non_negative_pair(padding, "padding")
    dilation_ = v.positive_pair(dilation, "dilation")
    m_total, c_per_group, kh, kw = weight.shape
    n, c, h, w = x.shape
    out_h = conv_output_size(h, kh, stride_[0], padding_[0], dilation_[0])
    out_w = conv_output_size(w, kw, stride_[1], padding_[1], dilation_[1])
    # cols: (N, C*kh*kw, L) with channel-major rows, so each group's rows are contiguous.
    cols = F.unfold(x, (kh, kw), dilation=dilation_, padding=padding_, stride=stride_)
    cols = cols.view(n, groups, c_per_group * kh * kw, out_h * out_w)
    w_mat = weight.reshape(groups, m_total // groups, c_per_group * kh * kw)
    # (G, M_g, K) @ (N, G, K, L) -> (N, G, M_g, L)
    out = torch.matmul(w_mat, cols).reshape(n, m_total, out_h, out_w)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out
