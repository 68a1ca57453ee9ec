"""Plots of data and the first diagrams (matplotlib only).

* :func:`show_image` / :func:`show_feature_maps` - tensors as pictures.
* :func:`draw_conv_volumes` - the classic diagram: input volume, one kernel, output volume.
* :func:`draw_sliding_window` - a small grid with the receptive field of one output pixel.
* :func:`plot_accuracy_curves` - accuracy per epoch of several networks, one line per seed.
"""
from __future__ import annotations

import math
from typing import Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.patches import Polygon, Rectangle
from matplotlib.ticker import MaxNLocator


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
            fontsize=9.5)
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
    ax.legend(handles, labels, loc="center right", fontsize=9.5)
    return ax


def plot_accuracy_curves(curves: dict[str, Sequence[Sequence[float]]], ax=None,
                         ylabel: str = "test accuracy"):
    """Accuracy after each epoch for several networks: ``curves`` maps a network's name to one
    list of accuracies (in [0, 1]) per seed. One colour per network, one line per seed; the
    legend, outside the plot area, names each network once."""
    if not curves or not all(runs and all(len(r) for r in runs) for runs in curves.values()):
        raise ValueError("curves must map each network's name to a non-empty list of per-seed "
                         "accuracy lists")
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 3.6))
    styles = ["-", "--", ":", "-."]
    for i, (name, runs) in enumerate(curves.items()):
        colour = f"C{i}"
        for j, run in enumerate(runs):
            ax.plot(range(1, len(run) + 1), [100 * a for a in run], color=colour,
                    linestyle=styles[j % len(styles)], label=name if j == 0 else None)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"{ylabel} (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    return ax


def draw_sampled_pixels(counts: torch.Tensor, ax=None, title: str | None = None,
                        annotate: bool = False):
    """Input pixels read by one output pixel (e.g. from ``course_lib.atrous.sampled_pixels``):
    a (H, W) map of path counts, drawn on a grid; pixels never read (count 0) stay white."""
    if not isinstance(counts, torch.Tensor) or counts.dim() != 2:
        raise ValueError("counts must be a 2-D tensor (H, W), got "
                         f"{tuple(counts.shape) if isinstance(counts, torch.Tensor) else type(counts).__name__}")
    if ax is None:
        _, ax = plt.subplots(figsize=(3.2, 3.2))
    values = counts.detach().double().cpu()
    masked = torch.where(values > 0, values, torch.tensor(float("nan"), dtype=values.dtype))
    cmap = plt.get_cmap("Oranges").with_extremes(bad="white")
    h, w = values.shape
    ax.imshow(masked.numpy(), cmap=cmap, vmin=0, extent=(0, w, h, 0))
    for r in range(h + 1):
        ax.axhline(r, color="#cccccc", linewidth=0.5)
    for c in range(w + 1):
        ax.axvline(c, color="#cccccc", linewidth=0.5)
    ax.add_patch(Rectangle((w // 2, h // 2), 1, 1, fill=False, edgecolor="black", linewidth=1.5))
    if annotate:
        for r in range(h):
            for c in range(w):
                if values[r, c] > 0:
                    ax.text(c + 0.5, r + 0.5, f"{int(values[r, c])}", ha="center", va="center",
                            fontsize=9.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal")
    read = int((values > 0).sum())
    ax.set_title(title or f"{read} of {h * w} pixels read", fontsize=10)
    return ax


def show_sampled_pixels_to_scale(maps: dict[str, torch.Tensor], width_in: float = 9.0):
    """Several sampled-pixel maps (:func:`draw_sampled_pixels`) side by side with one pixel the
    same size in every panel, so fields of different sizes compare at a glance (each panel is as
    wide as its field). Titles: the map's name and how many of its pixels are read."""
    if not maps or not all(isinstance(m, torch.Tensor) and m.dim() == 2 for m in maps.values()):
        raise ValueError("maps must be a non-empty dict of name -> (H, W) tensor")
    widths = [m.shape[1] for m in maps.values()]
    cell = width_in / (sum(widths) + 2 * len(widths))  # inches per pixel, with room between panels
    height = cell * max(m.shape[0] for m in maps.values()) + 0.9
    fig, axes = plt.subplots(1, len(maps), figsize=(width_in, height), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for ax, (name, counts) in zip(axes.flat, maps.items()):
        read = int((counts > 0).sum())
        draw_sampled_pixels(counts, ax=ax, title=f"{name}\n{read} of {counts.numel()} pixels read")
    fig.tight_layout()
    return fig


def show_masks(masks: Sequence[torch.Tensor], titles: Sequence[str] | None = None,
               size: float = 2.4, suptitle: str | None = None):
    """Draw boolean (H, W) masks side by side on a fixed scale (black = True, white = False) with a
    grid between pixels, e.g. the input pixels a layer reads (an all-True mask stays black, which
    ``show_feature_maps``' per-panel colour scaling would not guarantee)."""
    masks = list(masks)
    if not masks or not all(isinstance(m, torch.Tensor) and m.dim() == 2 for m in masks):
        raise ValueError("masks must be a non-empty sequence of (H, W) tensors")
    if titles is not None and len(titles) != len(masks):
        raise ValueError(f"got {len(titles)} titles for {len(masks)} masks")
    fig, axes = plt.subplots(1, len(masks), figsize=(size * len(masks), size), squeeze=False)
    for i, (ax, mask) in enumerate(zip(axes.flat, masks)):
        h, w = mask.shape
        ax.imshow(mask.detach().float().cpu().numpy(), cmap="Greys", vmin=0, vmax=1)
        ax.set_xticks([c - 0.5 for c in range(1, w)], minor=True)
        ax.set_yticks([r - 0.5 for r in range(1, h)], minor=True)
        ax.grid(which="minor", color="#999999", linewidth=0.5)
        ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
        if titles:
            ax.set_title(titles[i], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def draw_logo(path=None, size_px: int = 256):
    """Draw the course's logo: three channel slices of a feature map, each with its own 3x3 kernel
    (a depthwise convolution), joined by one 1x1 column through all of them (the pointwise step).

    Drawn by code so the book carries no hand-made image; ``python -m course_lib.logo`` writes the
    committed ``book/_static/logo.png`` and ``favicon.png`` with it. Returns the figure; when
    ``path`` is given, saves a square PNG of ``size_px`` pixels with no timestamps in its metadata
    (so redrawing it gives the same pixels)."""
    if not isinstance(size_px, int) or size_px < 16:
        raise ValueError(f"size_px must be an int >= 16, got {size_px!r}")
    fig = plt.figure(figsize=(1, 1), dpi=size_px)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 10)
    ax.set_axis_off()
    colours = ["#d1495b", "#66a182", "#2e86ab"]  # one per channel
    cells, cell = 4, 1.35  # a 4x4 slice drawn with square cells
    for k, colour in enumerate(colours):
        # Slices are stacked back to front, each shifted up-right, like a 3-D volume.
        x0, y0 = 0.6 + 1.45 * k, 3.4 - 1.45 * k
        ax.add_patch(Rectangle((x0, y0), cells * cell, cells * cell, facecolor="white",
                               edgecolor="#333333", linewidth=size_px / 128))
        for i in range(1, cells):
            ax.plot([x0 + i * cell] * 2, [y0, y0 + cells * cell], color="#bbbbbb",
                    linewidth=size_px / 256)
            ax.plot([x0, x0 + cells * cell], [y0 + i * cell] * 2, color="#bbbbbb",
                    linewidth=size_px / 256)
        # This channel's own 3x3 kernel (depthwise): the top-left 3x3 window.
        ax.add_patch(Rectangle((x0, y0 + cell), 3 * cell, 3 * cell, facecolor=colour, alpha=0.85,
                               edgecolor="#222222", linewidth=size_px / 128))
    # The 1x1 pointwise column: one pixel position through every slice.
    ax.plot([0.6 + 3.5 * cell, 0.6 + 2 * 1.45 + 3.5 * cell],
            [3.4 + 0.5 * cell, 3.4 - 2 * 1.45 + 0.5 * cell],
            color="#f4a259", linewidth=size_px / 32, solid_capstyle="round")
    if path is not None:
        fig.savefig(path, dpi=size_px, transparent=True, metadata={"Software": None})
    return fig


def plot_roofline(peak_flops: dict[str, float], memory_bytes_per_s: float,
                  points: Sequence[tuple[str, float, float | None]] = (), ax=None,
                  title: str | None = None):
    """Roofline chart (log-log): attainable FLOP/s = min(peak, intensity x bandwidth).

    ``peak_flops`` maps a label (e.g. "FP32") to a compute ceiling in FLOP/s; ``points`` are
    (label, arithmetic intensity in FLOP/byte, achieved FLOP/s or None). A point with None is
    drawn on the roof (the best the model allows); a measured one at its height.
    """
    if memory_bytes_per_s <= 0 or not peak_flops or min(peak_flops.values()) <= 0:
        raise ValueError("memory_bytes_per_s and every peak in peak_flops must be > 0")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.2))
    intensities = [p[1] for p in points if p[1] > 0]
    lo = min([0.1, *intensities]) / 2
    hi = max([10 * max(peak_flops.values()) / memory_bytes_per_s, *intensities]) * 2
    xs = torch.logspace(math.log10(lo), math.log10(hi), 200)
    for i, (label, peak) in enumerate(sorted(peak_flops.items(), key=lambda kv: kv[1])):
        roof = torch.clamp(xs * memory_bytes_per_s, max=peak)
        ax.loglog(xs, roof, color=f"C{i}", linewidth=2,
                  label=f"{label} roof ({peak / 1e12:g} TFLOP/s)")
        ax.axvline(peak / memory_bytes_per_s, color=f"C{i}", linestyle=":", linewidth=1)
    top = max(peak_flops.values())
    markers = "osD^v<>"
    for j, (label, intensity, achieved) in enumerate(points):
        y = achieved if achieved is not None else min(top, intensity * memory_bytes_per_s)
        ax.scatter([intensity], [y], marker=markers[j % len(markers)], s=60, color="black",
                   zorder=5, facecolors="none" if achieved is None else "black")
        # Each label is centred under its point (the roof is above), every other one a line
        # lower: neighbouring points sit about a decade apart, closer than a label is long.
        ax.annotate(label, (intensity, y), textcoords="offset points", xytext=(0, -17 - 13 * (j % 2)),
                    ha="center", fontsize=9.5)
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("FLOP/s")
    ax.set_title(title or f"roofline: {memory_bytes_per_s / 1e12:g} TB/s memory")
    ax.legend(fontsize=9.5, loc="lower right")
    ax.grid(True, which="both", alpha=0.3)
    return ax


def draw_roofline_panels(panels: Sequence[tuple[str, dict[str, float], Sequence[tuple]]],
                         memory_bytes_per_s: float, title: str, width_in: float = 9.0):
    """Rooflines side by side, one panel per precision: ``panels`` holds (panel title, its peaks
    as for :func:`plot_roofline`, its points). The shared ``title`` goes above both panels, so
    the panel titles stay short and never run into each other."""
    if not panels:
        raise ValueError("draw_roofline_panels needs at least one (title, peaks, points) panel")
    fig, axes = plt.subplots(1, len(panels), figsize=(width_in, 4.4), squeeze=False)
    for ax, (panel_title, peaks, points) in zip(axes[0], panels):
        plot_roofline(peaks, memory_bytes_per_s, points, ax=ax, title=panel_title)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig
