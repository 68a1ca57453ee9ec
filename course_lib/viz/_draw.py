"""Drawing primitives shared by the diagrams: font sizes, labelled boxes, arrows, grids of cells.

Sizes are chosen for the book's page: a diagram is at most :data:`MAX_WIDTH_IN` inches wide and
is shown scaled to the text column, so its smallest text (:data:`SMALL` points) stays readable
there (tests/test_viz.py checks every diagram against :func:`smallest_font_px`)."""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch, Rectangle

FONT = 11  # labels and titles, in points
SMALL = 9.5  # the smallest text a diagram uses
MAX_WIDTH_IN = 9.0  # a wider figure is shrunk more on the page, and its text with it
PAGE_COLUMN_PX = 720  # the book's text column at a 1280-px window (sphinx-book-theme)

# One colour per role, the same in every diagram.
INPUT, KERNEL, OUTPUT, MID = "#9ecae1", "#fdae6b", "#a1d99b", "#dadaeb"
CHANNEL_COLOURS = ["#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a65628",
                   "#f781bf", "#999999"]


def channel_colour(index: int) -> str:
    return CHANNEL_COLOURS[index % len(CHANNEL_COLOURS)]


def canvas(width_in: float, height_in: float, xlim: tuple[float, float],
           ylim: tuple[float, float], ax=None):
    """A figure (or the given axes) with equal-aspect data coordinates and no axis lines."""
    if ax is None:
        if width_in > MAX_WIDTH_IN:
            raise ValueError(f"a diagram wider than {MAX_WIDTH_IN} in is unreadable on the page")
        _, ax = plt.subplots(figsize=(width_in, height_in))
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.set_axis_off()
    return ax


def block(ax, x: float, y: float, width: float, height: float, text: str, colour: str,
          fontsize: float = SMALL, **text_kw) -> tuple[float, float, float, float]:
    """A rounded box with centred text; returns its (x, y, width, height)."""
    ax.add_patch(FancyBboxPatch((x, y), width, height, boxstyle="round,pad=0,rounding_size=0.08",
                                facecolor=colour, edgecolor="#333333", linewidth=1))
    ax.text(x + width / 2, y + height / 2, text, ha="center", va="center", fontsize=fontsize,
            **text_kw)
    return x, y, width, height


def arrow(ax, start: tuple[float, float], end: tuple[float, float], text: str | None = None,
          fontsize: float = SMALL, colour: str = "#333333", text_offset=(0.0, 0.15)) -> None:
    ax.annotate("", xy=end, xytext=start,
                arrowprops=dict(arrowstyle="-|>", color=colour, linewidth=1.2,
                                shrinkA=0, shrinkB=0))
    if text:
        ax.text((start[0] + end[0]) / 2 + text_offset[0], (start[1] + end[1]) / 2 + text_offset[1],
                text, ha="center", va="bottom", fontsize=fontsize)


def cells(ax, x: float, y: float, rows: int, cols: int, size: float, colours=None,
          texts=None, fontsize: float = SMALL, edge: str = "#888888") -> None:
    """A rows x cols grid of square cells with its top-left corner at (x, y) (row 0 on top);
    ``colours[r][c]`` / ``texts[r][c]`` fill and label single cells (None leaves them plain)."""
    for r in range(rows):
        for c in range(cols):
            fill = colours[r][c] if colours is not None and colours[r][c] else "white"
            ax.add_patch(Rectangle((x + c * size, y - (r + 1) * size), size, size,
                                   facecolor=fill, edgecolor=edge, linewidth=0.6))
            if texts is not None and texts[r][c] is not None:
                ax.text(x + (c + 0.5) * size, y - (r + 0.5) * size, texts[r][c], ha="center",
                        va="center", fontsize=fontsize)


def smallest_font_px(fig, column_px: int = PAGE_COLUMN_PX) -> float:
    """Height in screen pixels of the figure's smallest visible text once the figure is shown at
    ``column_px`` wide (or at its natural width at 100 dpi, if that is narrower)."""
    fig.canvas.draw()
    width_in = fig.get_size_inches()[0]
    shown_px = min(column_px, width_in * 100)
    sizes = [t.get_fontsize() for t in fig.findobj(plt.Text) if t.get_visible() and t.get_text()]
    return min(sizes) / 72 * shown_px / width_in if sizes else float("inf")


def overlapping_texts(fig) -> list[tuple[str, str]]:
    """Pairs of visible texts (titles, labels, annotations, legends) whose drawn boxes overlap:
    what a reader sees as a collision. Tick labels are left out (matplotlib spaces them)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ticks = {id(t) for ax in fig.axes for t in (*ax.get_xticklabels(which="both"),
                                                 *ax.get_yticklabels(which="both"))}
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in fig.findobj(plt.Text)
             if t.get_visible() and t.get_text().strip() and id(t) not in ticks]
    boxes += [(f"legend of {ax.get_title()!r}", ax.get_legend().get_window_extent(renderer))
              for ax in fig.axes if ax.get_legend() is not None]
    legend_texts = {t.get_text() for ax in fig.axes if ax.get_legend() is not None
                    for t in ax.get_legend().get_texts()}
    found = []
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1:]:
            inside_legend = {a, b} & legend_texts and (a.startswith("legend of ")
                                                      or b.startswith("legend of "))
            if box_a.overlaps(box_b) and not inside_legend and a != b:
                found.append((a, b))
    return found


def slices(ax, x: float, y: float, side: float, colours: list[str], step: float = 0.18,
           grid: int = 0) -> tuple[float, float]:
    """A C x H x W tensor as ``len(colours)`` square channel slices of ``side`` (to scale with H),
    drawn back to front, each shifted by ``step`` up and right; ``grid`` > 0 rules the front slice
    into grid x grid pixels. Returns the top-right corner of the whole stack."""
    n = len(colours)
    for i in reversed(range(n)):
        ax.add_patch(Rectangle((x + i * step, y + i * step), side, side, facecolor=colours[i],
                               edgecolor="#333333", linewidth=0.8, alpha=0.95))
    if grid > 1:
        for k in range(1, grid):
            ax.plot([x + k * side / grid] * 2, [y, y + side], color="#333333", linewidth=0.3)
            ax.plot([x, x + side], [y + k * side / grid] * 2, color="#333333", linewidth=0.3)
    return x + (n - 1) * step + side, y + (n - 1) * step + side
