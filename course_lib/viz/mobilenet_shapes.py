"""MobileNetV1 (chapter 7): its block next to the standard conv block it replaces, and the shape of
the feature map through the network's stages, measured on ``course_lib.mobilenet.MobileNetV1``."""
from __future__ import annotations

import torch
from torch import nn

from course_lib import mobilenet
from course_lib.viz._draw import FONT, INPUT, KERNEL, MID, OUTPUT, SMALL, arrow, block, canvas

_FILL = {"conv": KERNEL, "BatchNorm": MID, "ReLU": OUTPUT}


def layer_names(module: nn.Module) -> list[str]:
    """The layers a block applies, in order, named from the modules themselves (identity layers
    are skipped): e.g. ["3x3 depthwise conv, 64 ch.", "BatchNorm", "ReLU", ...]."""
    names = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0]
            if m.groups == m.in_channels > 1:
                names.append(f"{k}x{k} depthwise conv, {m.in_channels} ch.")
            else:
                names.append(f"{k}x{k} conv, {m.in_channels} → {m.out_channels} ch.")
        elif isinstance(m, nn.BatchNorm2d):
            names.append("BatchNorm")
        elif isinstance(m, nn.ReLU):
            names.append("ReLU")
    return names


def _column(ax, x: float, names: list[str], title: str, rows: int, width: float = 3.6) -> None:
    """The layers top to bottom, the first one in row 0 of ``rows``."""
    ax.text(x + width / 2, 0.15 + 0.75 * rows, title, ha="center", va="bottom", fontsize=FONT)
    for i, name in enumerate(names):
        y = 0.75 * (rows - 1 - i)
        kind = "conv" if "conv" in name else name
        block(ax, x, y, width, 0.5, name, _FILL[kind])
        if i:
            arrow(ax, (x + width / 2, y + 0.75), (x + width / 2, y + 0.5))


def draw_mobilenet_block(in_channels: int = 64, out_channels: int = 128, ax=None):
    """The paper's Figure 3 from the modules: left, a standard 3x3 conv block of
    ``mobilenet.ConvMobileNet``; right, the depthwise-separable block of ``MobileNetV1``."""
    with torch.device("meta"):
        standard = mobilenet.ConvMobileNet()._block(in_channels, out_channels, 1)
        separable = mobilenet.MobileNetV1()._block(in_channels, out_channels, 1)
    left, right = layer_names(standard), layer_names(separable)
    ax = canvas(7.0, 7.0 * (0.75 * len(right) + 0.9) / 9.0, (-0.2, 8.8),
                (-0.3, 0.75 * len(right) + 0.6), ax)
    rows = max(len(left), len(right))
    _column(ax, 0, left, "standard conv block", rows)
    _column(ax, 4.8, right, "MobileNet block (depthwise separable)", rows)
    return ax


def stage_shapes(alpha: float = 1.0, resolution: int = 224) -> list[tuple[str, tuple[int, ...]]]:
    """(layer, output shape (C, H, W)) for the input, the stem, each of the 13 blocks and the
    pooled features, from a forward pass of ``MobileNetV1(alpha)`` on the ``meta`` device."""
    with torch.device("meta"):
        model = mobilenet.MobileNetV1(alpha).eval()
        x = torch.zeros(1, 3, resolution, resolution)
        shapes = [("input", tuple(x.shape[1:]))]
        x = model.stem(x)
        shapes.append(("stem conv", tuple(x.shape[1:])))
        for i, blk in enumerate(model.blocks, start=1):
            x = blk(x)
            shapes.append((f"block {i}", tuple(x.shape[1:])))
        x = model.pool(x)
        shapes.append(("avg pool", tuple(x.shape[1:])))
        logits = model.classifier(torch.flatten(x, 1))
        shapes.append(("FC", (logits.shape[1], 1, 1)))
    return shapes


def stages(alpha: float = 1.0, resolution: int = 224) -> list[tuple[str, tuple[int, ...], int]]:
    """Consecutive layers with the same output shape grouped: (first..last, shape, count)."""
    groups: list[list] = []
    for name, shape in stage_shapes(alpha, resolution):
        if groups and groups[-1][1] == shape and name.startswith("block"):
            groups[-1][0].append(name)
        else:
            groups.append([[name], shape])
    return [(names[0] if len(names) == 1 else f"blocks\n{names[0].split()[-1]}-{names[-1].split()[-1]}",
             shape, len(names)) for names, shape in groups]


def draw_network_shapes(alpha: float = 1.0, resolution: int = 224, ax=None):
    """The feature map through MobileNetV1: one square per stage, its side to scale with the
    map's height and width, labelled with C x H x W (layers of equal shape grouped)."""
    groups = stages(alpha, resolution)
    unit = 2.2 / resolution  # drawing units per pixel
    x, xs = 0.0, []
    for _, (c, h, w), _ in groups:
        xs.append(x)
        x += max(h * unit + 0.5, 1.9)
    right = x
    ax = canvas(9.0, 9.0 * 5.0 / (right + 0.2), (-0.1, right + 0.1), (-2.1, 2.9), ax)
    for i, ((name, (c, h, w), count), x) in enumerate(zip(groups, xs)):
        side = max(h * unit, 0.05)
        colour = INPUT if i == 0 else (OUTPUT if name in ("avg pool", "FC") else KERNEL)
        block(ax, x, 1.1 - side / 2, side, side, "", colour)
        ax.text(x + side / 2, -0.15, f"{name}\nC = {c}\n{h} x {w}", ha="center", va="top",
                fontsize=SMALL)
        if i:
            arrow(ax, (xs[i - 1] + max(groups[i - 1][1][1] * unit, 0.05) + 0.06, 1.1),
                  (x - 0.06, 1.1))
    ax.text(0, 2.4, "output of each stage: squares to scale with height x width",
            fontsize=FONT, va="bottom")
    return ax
