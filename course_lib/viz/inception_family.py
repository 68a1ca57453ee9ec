"""From Inception to Xception (chapter 5): a simplified Inception module, the same module as one
1x1 conv and a grouped conv, and the extreme version with one channel per group (pointwise, then
depthwise). Channel segments are drawn to scale, and every label is read off the modules of
``course_lib.xception``."""
from __future__ import annotations

import torch
from matplotlib.patches import Rectangle

from course_lib import xception
from course_lib.viz._draw import FONT, INPUT, KERNEL, SMALL, arrow, block, canvas, channel_colour

PANEL_W, GAP = 4.0, 1.0  # drawing units; each channel bar is PANEL_W wide


def inception_family_shapes(in_channels: int, towers: int, segment: int) -> dict[str, dict]:
    """Weight shapes and groups of the three forms, built on the ``meta`` device."""
    with torch.device("meta"):
        inception = xception.SimplifiedInception(in_channels, towers, segment)
        grouped = xception.GroupedInception(in_channels, towers, segment)
        extreme = xception.GroupedInception(in_channels, towers * segment, 1)
    tower = inception.towers[0]
    return {
        "inception": {"towers": len(inception.towers), "1x1": tuple(tower[0].weight.shape),
                      "3x3": tuple(tower[2].weight.shape), "out": inception.out_channels},
        "grouped": {"1x1": tuple(grouped.pointwise.weight.shape),
                    "3x3": tuple(grouped.spatial.weight.shape), "groups": grouped.spatial.groups,
                    "out": grouped.out_channels},
        "extreme": {"1x1": tuple(extreme.pointwise.weight.shape),
                    "3x3": tuple(extreme.spatial.weight.shape), "groups": extreme.spatial.groups,
                    "out": extreme.out_channels},
    }


def _rect(x, y, w, h, colour):
    return Rectangle((x, y), w, h, facecolor=colour, edgecolor="#333333", linewidth=0.8)


def _bar(ax, x: float, y: float, segments: int, per_segment: int, colour_of, height: float = 0.35):
    """A channel bar: ``segments`` runs of ``per_segment`` channels, PANEL_W wide in all."""
    total = segments * per_segment
    for s in range(segments):
        ax.add_patch(_rect(x + s * PANEL_W / segments, y, PANEL_W / segments, height, colour_of(s)))
    for ch in range(1, total):  # thin ticks between channels, to count them
        ax.plot([x + ch * PANEL_W / total] * 2, [y, y + height], color="#555555", linewidth=0.4)


def draw_inception_family(in_channels: int = 32, towers: int = 3, segment: int = 4, ax=None):
    """Three panels, left to right: (a) ``towers`` towers of 1x1 conv C -> S then 3x3 conv S -> S,
    concatenated; (b) one 1x1 conv C -> T S, then a 3x3 conv with ``groups = T`` (one group per
    tower: the same module); (c) the extreme version, S = 1: 1x1 conv C -> T S, then a 3x3 conv with
    one group per channel, a depthwise conv. Colours mark which channels a 3x3 filter mixes."""
    if towers * segment > 24:
        raise ValueError(f"towers * segment = {towers * segment} channels: draw at most 24")
    shapes = inception_family_shapes(in_channels, towers, segment)
    width = towers * segment
    ax = canvas(9.0, 9.0 * 8.6 / (3 * PANEL_W + 2 * GAP + 0.4),
                (-0.2, 3 * PANEL_W + 2 * GAP + 0.2), (-1.4, 7.2), ax)
    y_in, y_pw, y_bar, y_sp, y_out = 5.0, 3.9, 3.1, 1.6, 0.4
    titles = ["(a) simplified Inception:\nT towers", "(b) the same: one 1x1 conv,\nthen a grouped conv",
              "(c) extreme Inception:\none channel per group"]
    for p, title in enumerate(titles):
        x0 = p * (PANEL_W + GAP)
        ax.text(x0 + PANEL_W / 2, 7.1, title, ha="center", va="top", fontsize=FONT)
        _bar(ax, x0, y_in, 1, in_channels if in_channels <= 64 else 1, lambda s: INPUT)
        ax.text(x0 + PANEL_W / 2, y_in + 0.45, f"input: C = {in_channels} channels",
                ha="center", va="bottom", fontsize=SMALL)

    # (a) one 1x1 -> 3x3 tower per segment, each in its own colour.
    inc = shapes["inception"]
    tw = PANEL_W / towers
    for t in range(towers):
        x = t * tw
        block(ax, x + 0.05, y_pw - 0.15, tw - 0.1, 0.6, f"1x1\n{in_channels}→{segment}", KERNEL)
        arrow(ax, (x + tw / 2, y_in), (x + tw / 2, y_pw + 0.45))
        block(ax, x + 0.05, y_sp, tw - 0.1, 0.6, f"3x3\n{segment}→{segment}", channel_colour(t))
        arrow(ax, (x + tw / 2, y_pw - 0.15), (x + tw / 2, y_sp + 0.6))
        arrow(ax, (x + tw / 2, y_sp), (x + tw / 2, y_out + 0.35))
    _bar(ax, 0, y_out, towers, segment, channel_colour)
    ax.text(PANEL_W / 2, y_out - 0.15,
            f"concat: {inc['out']} channels\nT = {towers} x 1x1 weight {inc['1x1']}\n"
            f"T = {towers} x 3x3 weight {inc['3x3']}",
            ha="center", va="top", fontsize=SMALL)

    # (b) and (c): one big 1x1 conv, then the channels cut into groups for the 3x3 conv.
    for p, (key, groups) in enumerate((("grouped", towers), ("extreme", width)), start=1):
        x0 = p * (PANEL_W + GAP)
        info = shapes[key]
        per_group = width // groups
        colour_of = (lambda s: channel_colour(s)) if key == "grouped" else (
            lambda s: channel_colour(s // segment))
        block(ax, x0 + 0.05, y_pw - 0.15 + 0.05, PANEL_W - 0.1, 0.5,
              f"1x1 conv {in_channels}→{width}", KERNEL)
        arrow(ax, (x0 + PANEL_W / 2, y_in), (x0 + PANEL_W / 2, y_pw + 0.4))
        _bar(ax, x0, y_bar, groups, per_group, colour_of)
        arrow(ax, (x0 + PANEL_W / 2, y_pw - 0.1), (x0 + PANEL_W / 2, y_bar + 0.35))
        gw = PANEL_W / groups
        for g in range(groups):
            label = f"3x3\n{per_group}→{per_group}" if gw > 0.9 else ""
            block(ax, x0 + g * gw + 0.03, y_sp, gw - 0.06, 0.6, label, colour_of(g))
            arrow(ax, (x0 + (g + 0.5) * gw, y_bar), (x0 + (g + 0.5) * gw, y_sp + 0.6))
            arrow(ax, (x0 + (g + 0.5) * gw, y_sp), (x0 + (g + 0.5) * gw, y_out + 0.35))
        _bar(ax, x0, y_out, groups, per_group, colour_of)
        kind = "grouped" if groups < width else "depthwise"
        ax.text(x0 + PANEL_W / 2, y_out - 0.15,
                f"3x3 {kind}, groups = {info['groups']}\n1x1 weight {info['1x1']}\n"
                f"3x3 weight {info['3x3']}",
                ha="center", va="top", fontsize=SMALL)
    return ax
