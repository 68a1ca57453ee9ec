"""Redraw the book's logo and favicon (book/_static/logo.png, favicon.png) with course_lib.viz.

Run from the repository root after changing ``course_lib.viz.draw_logo``, then commit the PNGs:

    python3 -m course_lib.logo

tests/test_publishing.py checks that the committed files equal a fresh drawing."""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # run as a command, not in a chapter: no display needed

import matplotlib.pyplot as plt  # noqa: E402

from course_lib.viz import draw_logo  # noqa: E402

# The repository root (course_lib is installed editable from it).
STATIC = Path(__file__).resolve().parents[1] / "book" / "_static"
# name -> size in pixels: the logo shown above the navigation, and the browser tab's icon.
IMAGES = {"logo.png": 256, "favicon.png": 32}


def main(out_dir: Path = STATIC) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, size in IMAGES.items():
        fig = draw_logo(out_dir / name, size_px=size)
        plt.close(fig)
        written.append(out_dir / name)
    return written


if __name__ == "__main__":
    for p in main(Path(sys.argv[1]) if len(sys.argv) > 1 else STATIC):
        print(p)
