"""Sphinx extension: the book's own stylesheet (book/_static/site/code.css), served from the
built book: code cells fit the text column (smaller type, long lines wrap, never cut off)."""
from __future__ import annotations

from pathlib import Path

from sphinx.application import Sphinx

STATIC = Path(__file__).resolve().parent.parent / "_static" / "site"


def _add_static_path(app: Sphinx, config) -> None:
    if str(STATIC) not in config.html_static_path:
        config.html_static_path.append(str(STATIC))


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", _add_static_path)
    app.add_css_file("code.css")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
