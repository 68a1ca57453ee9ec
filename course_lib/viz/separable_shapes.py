"""Depthwise, then pointwise (chapter 4): the tensors a depthwise-separable layer passes through
and the weights between them, with the shapes measured on the module itself."""
from __future__ import annotations

import torch

from course_lib.separable import DepthwiseSeparableConv2d
from course_lib.viz._draw import FONT, OUTPUT, SMALL, arrow, canvas, cells, channel_colour, slices


def separable_shapes(in_channels: int, out_channels: int, kernel_size: int = 3, size: int = 32,
                     stride: int = 1) -> dict[str, tuple[int, ...]]:
    """Shapes of the input, the depthwise output, the output and both weights of
    ``DepthwiseSeparableConv2d(C, M, K, stride)`` on a (1, C, size, size) input, measured on the
    ``meta`` device (shapes without arithmetic)."""
    with torch.device("meta"):
        layer = DepthwiseSeparableConv2d(in_channels, out_channels, kernel_size, stride=stride,
                                         norm=False, activation=None)
        x = torch.zeros(1, in_channels, size, size)
        mid = layer.depthwise(x)
        out = layer.pointwise(mid)
    return {"input": tuple(x.shape), "depthwise weight": tuple(layer.depthwise.weight.shape),
            "depthwise output": tuple(mid.shape),
            "pointwise weight": tuple(layer.pointwise.weight.shape), "output": tuple(out.shape)}


def draw_separable_shapes(in_channels: int = 3, out_channels: int = 16, kernel_size: int = 3,
                          size: int = 32, stride: int = 1, ax=None):
    """Input (C slices, one colour each) -> C depthwise K x K filters, one per channel -> C maps
    of the output size -> M pointwise filters of C x 1 x 1 -> M output maps. Heights and widths
    are to scale with the spatial sizes; every label is a shape from :func:`separable_shapes`."""
    if in_channels > 8:
        raise ValueError(f"draw at most 8 input channels (one colour each), got {in_channels}")
    if out_channels > 64:
        raise ValueError(f"draw at most 64 output channels, got {out_channels}")
    shapes = separable_shapes(in_channels, out_channels, kernel_size, size, stride)
    out_size = shapes["output"][-1]
    unit = 2.6 / size  # drawing units per pixel: the input is 2.6 units high
    colours = [channel_colour(c) for c in range(in_channels)]
    step_c, step_m = 0.18, min(0.18, 2.0 / out_channels)
    k_cell = min(0.22, 3.0 / (in_channels * (kernel_size + 1)))
    # Left to right: input, depthwise filters, depthwise output, pointwise filter, output.
    x_dw = 2.6 + (in_channels - 1) * step_c + 1.1
    x_mid = x_dw + kernel_size * k_cell + 1.1
    x_pw = x_mid + out_size * unit + (in_channels - 1) * step_c + 1.1
    x_out = x_pw + 0.32 + 1.1
    right = x_out + out_size * unit + (out_channels - 1) * step_m + 0.3
    top = max(2.6 + (in_channels - 1) * step_c, 3.0)
    ylim = (-1.5, top + 1.9)
    ax = canvas(9.0, 9.0 * (ylim[1] - ylim[0]) / (right + 0.3), (-0.3, right), ylim, ax)
    middle = 1.3  # arrows run at this height

    def below(x: float, text: str) -> None:
        ax.text(x, -0.2, text, ha="center", va="top", fontsize=FONT)

    def above(x: float, text: str) -> None:
        ax.text(x, top + 0.25, text, ha="center", va="bottom", fontsize=SMALL)

    in_right, _ = slices(ax, 0, 0, size * unit, colours, step=step_c,
                         grid=size if size <= 16 else 0)
    below(1.3, f"input\n{shapes['input']}")

    # Depthwise: one K x K filter per channel, in that channel's colour.
    pitch = (kernel_size + 1) * k_cell
    first = middle + (in_channels * pitch - k_cell) / 2
    for c in range(in_channels):
        cells(ax, x_dw, first - c * pitch, kernel_size, kernel_size, k_cell,
              colours=[[colours[c]] * kernel_size for _ in range(kernel_size)])
    above(x_dw + kernel_size * k_cell / 2,
          f"depthwise {kernel_size}x{kernel_size}: {in_channels} filters\n"
          f"weight {shapes['depthwise weight']}")
    arrow(ax, (in_right + 0.15, middle), (x_dw - 0.15, middle))

    mid_right, _ = slices(ax, x_mid, 0, out_size * unit, colours, step=step_c)
    below(x_mid + out_size * unit / 2, f"depthwise output\n{shapes['depthwise output']}")
    arrow(ax, (x_dw + kernel_size * k_cell + 0.15, middle), (x_mid - 0.15, middle))

    # Pointwise: M filters, each a 1 x 1 column through all C channels.
    pw_cell = min(0.32, 2.6 / in_channels)
    cells(ax, x_pw, middle + in_channels * pw_cell / 2, in_channels, 1, pw_cell,
          colours=[[c] for c in colours])
    above(x_pw + pw_cell / 2,
          f"pointwise 1x1: {out_channels} filters\n"
          f"weight {shapes['pointwise weight']}")
    arrow(ax, (mid_right + 0.15, middle), (x_pw - 0.15, middle))

    slices(ax, x_out, 0, out_size * unit, [OUTPUT] * out_channels, step=step_m)
    below(x_out + out_size * unit / 2 + 0.3, f"output\n{shapes['output']}")
    arrow(ax, (x_pw + pw_cell + 0.15, middle), (x_out - 0.15, middle))
    return ax
