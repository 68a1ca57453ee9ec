"""Atrous spatial pyramid pooling (chapter 6): the five parallel branches of DeepLab v3's ASPP, the
shapes they produce (measured on ``course_lib.atrous.ASPP``), and for each atrous branch where
the nine taps of the centre pixel fall, drawn to scale on the feature map."""
from __future__ import annotations

import copy

import torch
from matplotlib.patches import Circle, Rectangle
from torch import nn

from course_lib import atrous
from course_lib.viz._draw import FONT, INPUT, KERNEL, MID, OUTPUT, SMALL, arrow, block, canvas


def _branch_label(branch: nn.Module) -> tuple[str, int | None]:
    """("3x3 conv, rate 12", 12) for an atrous branch, ("1x1 conv", None), or image pooling."""
    if isinstance(branch, atrous.ImagePooling):
        return "image pooling:\navg pool, 1x1 conv, upsample", None
    conv = next(m for m in branch.modules() if isinstance(m, nn.Conv2d))
    k, rate = conv.kernel_size[0], conv.dilation[0]
    if k == 1:
        return "1x1 conv", None
    separable = " separable" if conv.groups > 1 else ""
    return f"{k}x{k}{separable} conv, rate {rate}", rate


def aspp_layout(aspp: atrous.ASPP, size: int) -> dict:
    """Branch labels, rates and output shapes of ``aspp`` on a (1, C, size, size) map, measured
    on the ``meta`` device."""
    # A shapes-only copy: the caller's module keeps its device, weights and mode. Evaluation
    # mode, since image pooling's BatchNorm cannot train on one image.
    shadow = copy.deepcopy(aspp).to("meta").eval()
    x = torch.zeros(1, aspp.in_channels, size, size, device="meta")
    outs = shadow.branch_outputs(x)
    final = shadow(x)
    labels = [_branch_label(b) for b in aspp.branches]
    return {"input": tuple(x.shape), "branches": [(text, rate, tuple(o.shape))
                                                   for (text, rate), o in zip(labels, outs)],
            "concat": (1, sum(o.shape[1] for o in outs), size, size), "output": tuple(final.shape)}


def _taps(ax, x: float, y: float, side: float, size: int, rate: int, reach: int) -> None:
    """The size x size map (grey) inside its zero padding, as seen by a 3x3 kernel at ``rate``
    centred on the middle pixel: taps on the map filled, taps in the padding hollow."""
    scale = side / (size + 2 * reach)
    ax.add_patch(Rectangle((x, y), side, side, facecolor="white", edgecolor="#999999",
                           linewidth=0.6, linestyle="--"))
    ax.add_patch(Rectangle((x + reach * scale, y + reach * scale), size * scale, size * scale,
                           facecolor=INPUT, edgecolor="#333333", linewidth=0.8))
    centre = size // 2
    for du in (-rate, 0, rate):
        for dv in (-rate, 0, rate):
            r, c = centre + du, centre + dv
            on_map = 0 <= r < size and 0 <= c < size
            ax.add_patch(Circle((x + (reach + c + 0.5) * scale, y + side - (reach + r + 0.5) * scale),
                                radius=0.035, linewidth=1,
                                facecolor="#d62728" if on_map else "white", edgecolor="#d62728"))


def draw_aspp(aspp: atrous.ASPP | None = None, size: int = 33, ax=None):
    """ASPP as a block diagram: input map -> five parallel branches -> concatenation -> 1x1
    projection. Beside each atrous branch, the map and its zero padding to scale with the nine taps
    of the centre output pixel (hollow: the tap reads padding)."""
    if aspp is None:
        with torch.device("meta"):
            aspp = atrous.ASPP(2048, 256, output_stride=16)
    layout = aspp_layout(aspp, size)
    branches = layout["branches"]
    n = len(branches)
    pitch, box_h, inset = 1.45, 0.8, 1.3
    top = (n - 1) * pitch
    ax = canvas(9.0, 9.0 * (top + 3.2) / 16.0, (-0.2, 15.8), (-1.3, top + 1.9), ax)
    middle = top / 2 + box_h / 2

    block(ax, 0, middle - 0.9, 2.0, 1.8, f"input\n{layout['input'][1]} ch.\n"
          f"{size} x {size}", INPUT, fontsize=FONT)
    ax.text(1.0, middle - 1.0, str(layout["input"]), ha="center", va="top", fontsize=SMALL)
    reach = max([rate for _, rate, _ in branches if rate] + [0])
    for i, (text, rate, shape) in enumerate(branches):
        y = top - i * pitch
        block(ax, 2.9, y, 4.2, box_h, text, MID if rate is None else KERNEL)
        arrow(ax, (2.0, middle), (2.85, y + box_h / 2))
        if rate:
            _taps(ax, 7.3, y + box_h / 2 - inset / 2, inset, size, rate, reach)
        ax.text(8.8, y + box_h / 2, str(shape), va="center", fontsize=SMALL)
        arrow(ax, (11.0, y + box_h / 2), (11.6, middle))
    block(ax, 11.65, middle - 0.9, 1.6, 1.8, f"concat\n{layout['concat'][1]} ch.", MID,
          fontsize=FONT)
    arrow(ax, (13.25, middle), (13.6, middle))
    block(ax, 13.65, middle - 0.9, 2.0, 1.8, f"1x1 conv\n→ {layout['output'][1]} ch.\n"
          f"{size} x {size}", OUTPUT, fontsize=FONT)
    ax.text(7.95, top - (n - 1) * pitch - 0.35, f"taps of the centre pixel on the\n{size} x {size} map (dashed: padding)",
            ha="center", va="top", fontsize=SMALL)
    return ax
