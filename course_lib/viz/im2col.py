"""Convolution as one matrix multiply (chapter 1): the input unfolded into columns (im2col), and
the product weights x columns = output, every matrix drawn to scale (one square per number)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from course_lib.conv import conv_output_size
from course_lib.viz._draw import FONT, INPUT, MID, OUTPUT, SMALL, arrow, canvas, cells

HIGHLIGHT = "#fd8d3c"


def unfolded_indices(in_channels: int, size: int, kernel_size: int, stride: int = 1,
                     padding: int = 0) -> torch.Tensor:
    """The im2col matrix of an input whose pixels are numbered 1, 2, ... (channel by channel, row
    by row): entry (r, j) is the number of the input pixel that row r of column j reads, 0 where
    it reads padding. Computed by ``F.unfold`` itself, so the figure shows what PyTorch does."""
    numbers = torch.arange(1, in_channels * size * size + 1, dtype=torch.float64)
    cols = F.unfold(numbers.reshape(1, in_channels, size, size), kernel_size, padding=padding,
                    stride=stride)
    return cols[0].round().long()


def draw_im2col(in_channels: int = 2, size: int = 4, kernel_size: int = 3, out_channels: int = 2,
                stride: int = 1, padding: int = 0, highlight: int = 0, ax=None):
    """Input (C x H x W, pixels numbered) -> unfolded X (C K^2 x H_out W_out) and the product
    W (M x C K^2) . X = Y (M x H_out W_out), laid out so each product entry sits in the row of W
    and the column of X it combines. Output position ``highlight`` and everything it reads are
    coloured. Shapes come from ``F.unfold`` and ``course_lib.conv.conv_output_size``."""
    out_size = conv_output_size(size, kernel_size, stride, padding)
    cols = unfolded_indices(in_channels, size, kernel_size, stride, padding)
    rows, positions = cols.shape
    if not 0 <= highlight < positions:
        raise ValueError(f"highlight must be an output position in [0, {positions}), "
                         f"got {highlight}")
    if rows > 40 or positions > 16 or in_channels * size > 24:
        raise ValueError("too large to draw one square per number: use at most ~40 unfolded rows, "
                         "16 output positions and C * H <= 24")
    read = set(cols[:, highlight].tolist()) - {0}
    gap = 2.0
    x_cols, top = rows + gap, 0.0  # X's left edge; its top row at y = 0
    bottom_w = -rows - gap  # top edge of W and Y
    ax = canvas(9.0, 9.0 * (rows + gap + out_channels + 4.5) / (rows + gap + positions + 9),
                (-0.5, x_cols + positions + 8.5), (bottom_w - out_channels - 2.5, 3.0), ax)

    # The input: channel grids side by side, numbered as F.unfold will see them.
    for c in range(in_channels):
        x0 = c * (size + 1.5)
        numbers = [[c * size * size + r * size + q + 1 for q in range(size)] for r in range(size)]
        cells(ax, x0, -2.0, size, size, 1.0,
              colours=[[HIGHLIGHT if n in read else INPUT for n in row] for row in numbers],
              texts=[[str(n) for n in row] for row in numbers])
        ax.text(x0 + size / 2, -1.6, f"channel {c}", ha="center", va="bottom", fontsize=SMALL)
    ax.text(0, 0.9, f"input  C x H x W = {in_channels} x {size} x {size}", fontsize=FONT,
            va="bottom")
    arrow(ax, (in_channels * (size + 1.5) - 0.5, -2.0 - size / 2), (x_cols - 0.3, -2.0 - size / 2),
          "im2col")

    # X: one column per output position, one row per (channel, kernel tap).
    cells(ax, x_cols, top, rows, positions, 1.0,
          colours=[[HIGHLIGHT if j == highlight else "white" for j in range(positions)]
                   for _ in range(rows)],
          texts=[[str(int(v)) if v else "0" for v in row] for row in cols.tolist()])
    for c in range(1, in_channels):  # channel boundaries inside X
        y = top - c * kernel_size ** 2
        ax.plot([x_cols - 0.4, x_cols + positions + 0.4], [y, y], color="black", linewidth=1.5)
    for c in range(in_channels):
        ax.text(x_cols + positions + 0.4, top - (c + 0.5) * kernel_size ** 2,
                f"channel {c}:\n{kernel_size}x{kernel_size} = {kernel_size ** 2} rows",
                va="center", fontsize=SMALL)
    ax.text(x_cols + positions / 2, 0.9,
            f"X: C·K² x H_out·W_out\n= {rows} x {positions}", ha="center", va="bottom",
            fontsize=FONT)

    # W . X = Y in the Falk layout: Y's entry (m, j) sits left of nothing but under X's column j
    # and right of W's row m.
    cells(ax, 0, bottom_w, out_channels, rows, 1.0,
          colours=[[MID] * rows for _ in range(out_channels)])
    ax.text(rows / 2, bottom_w - out_channels - 0.4,
            f"weights W: M x C·K² = {out_channels} x {rows}", ha="center", va="top",
            fontsize=FONT)
    cells(ax, x_cols, bottom_w, out_channels, positions, 1.0,
          colours=[[HIGHLIGHT if j == highlight else OUTPUT for j in range(positions)]
                   for _ in range(out_channels)])
    ax.text(x_cols + positions + 0.4, bottom_w - out_channels / 2,
            f"Y = W X: {out_channels} x {positions}\n"
            f"= M x H_out x W_out\n= {out_channels} x {out_size} x {out_size}",
            va="center", fontsize=SMALL)
    return ax
