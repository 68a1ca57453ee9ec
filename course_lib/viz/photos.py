"""Filters on real photographs (``course_lib.data.photo``): what a layer does to an image.

* :func:`show_filter_responses` - a standard convolution with one kernel per output channel on a
  grey photo: the photo, then one response map per kernel (chapter 1).
* :func:`channel_edges` / :func:`show_channel_edges` - a depthwise edge filter on a colour photo:
  each colour channel's edges alone, and the three recombined as a colour image, where an edge
  only one channel sees shows in that channel's colour (chapter 3).
* :func:`show_reads_on_photo` - the input pixels one output of a stack of dilated convolutions
  reads (``course_lib.atrous.sampled_pixels``), laid over a crop of a photo: the gridding holes on
  a real image (chapter 6).
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from course_lib import atrous
from course_lib.viz.plots import show_image

SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def _image(image: torch.Tensor, channels: tuple[int, ...], name: str) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] not in channels:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{name} must be a ({' or '.join(map(str, channels))}, H, W) image "
                         f"tensor, got {shape}")
    return image.detach().float().cpu()


def show_filter_responses(image: torch.Tensor, kernels: Sequence[torch.Tensor],
                          titles: Sequence[str], size: float = 2.3):
    """The grey ``image`` (1, H, W) and, per kernel (K, K), the absolute response of a
    convolution with that kernel (padding K // 2): a layer with C = 1 and M = len(kernels)."""
    image = _image(image, (1,), "image")
    if len(kernels) != len(titles) or not kernels:
        raise ValueError(f"give one title per kernel, got {len(kernels)} kernels and "
                         f"{len(titles)} titles")
    weight = torch.stack([torch.as_tensor(k, dtype=torch.float32) for k in kernels])[:, None]
    pad = weight.shape[-1] // 2  # replicated border: zero padding would draw a frame of edges
    maps = F.conv2d(F.pad(image[None], (pad,) * 4, mode="replicate"), weight)[0].abs()
    fig, axes = plt.subplots(1, len(kernels) + 1, figsize=(size * (len(kernels) + 1), size + 0.3))
    show_image(image, ax=axes[0], title=f"input (1 x {image.shape[1]} x {image.shape[2]})")
    for ax, response, title in zip(axes[1:], maps, titles):
        show_image(response, ax=ax, title=title, cmap="gray_r")
    fig.tight_layout()
    return fig


def channel_edges(photo: torch.Tensor) -> torch.Tensor:
    """Edge strength of each colour channel on its own: a depthwise convolution (groups = 3)
    with Sobel x and Sobel y per channel, |gx| + |gy|, scaled to [0, 1]. Returns (3, H, W)."""
    photo = _image(photo, (3,), "photo")
    weight = torch.stack([SOBEL_X, SOBEL_X.T]).repeat(3, 1, 1)[:, None]  # (6, 1, 3, 3)
    grads = F.conv2d(F.pad(photo[None], (1, 1, 1, 1), mode="replicate"), weight, groups=3)[0]
    edges = grads.abs().reshape(3, 2, *photo.shape[1:]).sum(1)
    return (edges / edges.amax().clamp_min(1e-12)).clamp(0, 1)


def show_channel_edges(photo: torch.Tensor, gain: float = 2.0, size: float = 2.2):
    """The photo, the edges of its red, green and blue channels (each filtered alone: a depthwise
    layer), and the three edge maps recombined in colour. ``gain`` brightens faint edges."""
    photo = _image(photo, (3,), "photo")
    edges = (channel_edges(photo) * gain).clamp(0, 1)
    fig, axes = plt.subplots(1, 5, figsize=(size * 5, size + 0.3))
    show_image(photo, ax=axes[0], title="input photo")
    for ax, channel, name in zip(axes[1:4], edges, ("red", "green", "blue")):
        show_image(channel, ax=ax, title=f"edges of {name} alone", cmap="gray")
    show_image(edges, ax=axes[4], title="the three as colours")
    fig.tight_layout()
    return fig


def show_reads_on_photo(photo: torch.Tensor, stacks: dict[str, Sequence[int]],
                        centre: tuple[int, int], kernel_size: int = 3, size: float = 2.8):
    """For each stack of dilated K x K convolutions (name -> rates), the grey ``photo`` (1, H, W)
    with the receptive field of the output at ``centre`` marked: the pixels that output reads
    shown as they are, the pixels inside its field that it never reads in red, and every pixel
    outside the field dimmed. Use a small photo (about 40 x 40) so that pixels are visible."""
    photo = _image(photo, (1,), "photo")
    if not stacks:
        raise ValueError("stacks must name at least one stack of rates, e.g. "
                         "{'rates (2, 2, 2)': (2, 2, 2)}")
    height, width = photo.shape[1:]
    fig, axes = plt.subplots(1, len(stacks), figsize=(size * len(stacks), size + 0.4),
                             squeeze=False)
    for ax, (name, rates) in zip(axes.flat, stacks.items()):
        counts = atrous.sampled_pixels([(kernel_size, 1, r) for r in rates])
        h, w = counts.shape
        top, left = centre[0] - h // 2, centre[1] - w // 2
        if top < 0 or left < 0 or top + h > height or left + w > width:
            raise ValueError(f"the {h} x {w} field of {name} around {centre} does not fit "
                             f"in the {height} x {width} photo: move the centre inwards")
        inside = torch.zeros(height, width, dtype=torch.bool)
        read = torch.zeros(height, width, dtype=torch.bool)
        inside[top:top + h, left:left + w] = True
        read[top:top + h, left:left + w] = counts > 0
        shown = photo.repeat(3, 1, 1)
        shown[:, ~inside] *= 0.35
        hole = inside & ~read
        shown[0][hole], shown[1][hole], shown[2][hole] = 0.9, 0.1, 0.1
        ax.imshow(shown.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(f"{name}: {int(read.sum())} of {h * w} read", fontsize=9)
    fig.tight_layout()
    return fig
