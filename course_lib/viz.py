"""Figures drawn by code for the book and the exercises (matplotlib only).

* :func:`show_image` / :func:`show_feature_maps` - tensors as pictures.
* :func:`draw_conv_volumes` - the classic diagram: input volume, one kernel, output volume.
* :func:`draw_sliding_window` - a small grid with the receptive field of one output pixel.
"""
from __future__ import annotations

import math
from typing import Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.patches import Polygon, Rectangle


def _to_numpy_image(t: torch.Tensor):
    t = t.detach().float().cpu()
    if t.dim() == 3 and t.shape[0] in (1, 3):
        t = t.permute(1, 2, 0)
        if t.shape[2] == 1:
            t = t[..., 0]
    elif t.dim() != 2:
        raise ValueError(f"an image must be (H, W), (1, H, W) or (3, H, W), got {tuple(t.shape)}")
    return t.numpy()


def show_image(image: torch.Tensor, ax=None, title: str | None = None, cmap: str = "gray"):
    """Draw an image tensor; colour images are clipped to [0, 1]."""
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    array = _to_numpy_image(image)
    if array.ndim == 3:
        ax.imshow(array.clip(0, 1))
    else:
        ax.imshow(array, cmap=cmap)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def show_feature_maps(maps: torch.Tensor, ncols: int = 4, titles: Sequence[str] | None = None,
                      cmap: str = "viridis", size: float = 2.2, suptitle: str | None = None):
    """Draw each channel of a (C, H, W) tensor (or (1, C, H, W)) as its own panel."""
    if not isinstance(maps, torch.Tensor):
        raise ValueError(f"maps must be a torch.Tensor, got {type(maps).__name__}")
    if maps.dim() == 4 and maps.shape[0] == 1:
        maps = maps[0]
    if maps.dim() != 3:
        raise ValueError(f"maps must be (C, H, W) or (1, C, H, W), got {tuple(maps.shape)}")
    channels = maps.shape[0]
    if titles is not None and len(titles) != channels:
        raise ValueError(f"got {len(titles)} titles for {channels} channels")
    ncols = max(1, min(ncols, channels))
    nrows = math.ceil(channels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < channels:
            ax.imshow(maps[i].detach().float().cpu().numpy(), cmap=cmap)
            ax.set_title(titles[i] if titles else f"channel {i}", fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def _box(ax, x: float, y: float, width: float, height: float, depth: float, color: str,
         label: str | None = None) -> None:
    """A pseudo-3-D box: front face width x height, receding depth drawn at 45 degrees."""
    dx, dy = depth * 0.5, depth * 0.5
    front = Rectangle((x, y), width, height, facecolor=color, edgecolor="black", alpha=0.85)
    top = Polygon([(x, y + height), (x + dx, y + height + dy), (x + width + dx, y + height + dy),
                   (x + width, y + height)], facecolor=color, edgecolor="black", alpha=0.6)
    side = Polygon([(x + width, y), (x + width + dx, y + dy), (x + width + dx, y + height + dy),
                    (x + width, y + height)], facecolor=color, edgecolor="black", alpha=0.45)
    for patch in (side, top, front):
        ax.add_patch(patch)
    if label:
        ax.text(x + width / 2, y - 0.6, label, ha="center", va="top", fontsize=9)


def draw_conv_volumes(in_channels: int, in_size: int, out_channels: int, kernel_size: int,
                      stride: int = 1, padding: int = 0, ax=None):
    """Input volume (C x H x W), one of the M kernels (C x K x K) and the output volume
    (M x H_out x W_out), drawn to scale in H and W and labelled with the sizes."""
    from course_lib.conv import conv_output_size

    out_size = conv_output_size(in_size, kernel_size, stride, padding)
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 3.6))
    unit = 4.0 / max(in_size, out_size)
    depth_unit = 2.0 / max(in_channels, out_channels)
    h_in, h_k, h_out = in_size * unit, kernel_size * unit, out_size * unit
    _box(ax, 0, 0, h_in, h_in, in_channels * depth_unit, "#9ecae1",
         f"input  {in_channels}x{in_size}x{in_size}")
    _box(ax, h_in + 2.5, (h_in - h_k) / 2, h_k, h_k, in_channels * depth_unit, "#fdae6b",
         f"one kernel  {in_channels}x{kernel_size}x{kernel_size}\n(M = {out_channels} of them)")
    x_out = h_in + 2.5 + h_k + 3.0
    _box(ax, x_out, (h_in - h_out) / 2, h_out, h_out, out_channels * depth_unit, "#a1d99b",
         f"output  {out_channels}x{out_size}x{out_size}")
    ax.annotate("", xy=(h_in + 2.3, h_in / 2), xytext=(h_in + 1.2, h_in / 2),
                arrowprops=dict(arrowstyle="->"))
    ax.annotate("", xy=(x_out - 0.2, h_in / 2), xytext=(x_out - 1.6, h_in / 2),
                arrowprops=dict(arrowstyle="->"))
    ax.text(x_out - 0.9, h_in / 2 + 0.3, f"stride {stride}\npad {padding}", ha="center",
            fontsize=8)
    ax.set_xlim(-0.5, x_out + h_out + 2.5)
    ax.set_ylim(-1.8, h_in + 2.0)
    ax.set_aspect("equal")
    ax.set_axis_off()
    return ax


def draw_sliding_window(size: int, kernel_size: int, position: tuple[int, int] = (0, 0),
                        stride: int = 1, padding: int = 0, dilation: int = 1, ax=None,
                        title: str | None = None):
    """A size x size input grid (plus padding, hatched) with the pixels read by the output pixel at
    ``position`` highlighted; dilation shows the holes between sampled pixels."""
    if ax is None:
        _, ax = plt.subplots(figsize=(3.2, 3.2))
    total = size + 2 * padding
    for r in range(total):
        for c in range(total):
            is_pad = not (padding <= r < padding + size and padding <= c < padding + size)
            ax.add_patch(Rectangle((c, total - 1 - r), 1, 1, facecolor="white",
                                   edgecolor="#bbbbbb", hatch="//" if is_pad else None))
    i, j = position
    for u in range(kernel_size):
        for w in range(kernel_size):
            r, c = i * stride + u * dilation, j * stride + w * dilation
            if r >= total or c >= total:
                raise ValueError(f"position {position} puts the kernel outside the padded input")
            ax.add_patch(Rectangle((c, total - 1 - r), 1, 1, facecolor="#fd8d3c",
                                   edgecolor="black", alpha=0.8))
    ax.set_xlim(0, total)
    ax.set_ylim(0, total)
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title(title or f"output pixel {position}", fontsize=9)
    return ax


def plot_history(history, metric_name: str = "accuracy", ax=None):
    """Loss curves (train, and validation when recorded) and the validation metric on a twin
    axis, from a :class:`course_lib.training.History`."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    epochs = range(1, len(history.train_loss) + 1)
    ax.plot(epochs, history.train_loss, label="train loss")
    if history.val_loss:
        ax.plot(epochs, history.val_loss, label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    handles, labels = ax.get_legend_handles_labels()
    if history.val_metric:
        twin = ax.twinx()
        twin.plot(epochs, history.val_metric, color="tab:green", label=f"validation {metric_name}")
        twin.set_ylabel(metric_name)
        h2, l2 = twin.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="center right", fontsize=8)
    return ax
