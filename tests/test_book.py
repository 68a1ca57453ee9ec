"""The book builds with warnings as errors, every chapter is executed and rendered, and figures
exist on disk."""
from __future__ import annotations

import re

import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.slow


def toc_files() -> list[str]:
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [ch["file"] for ch in part.get("chapters", [])]
    return files


def chapters() -> list[str]:
    return [f for f in toc_files() if re.match(r"book/ch\d\d_", f)]


def test_every_book_page_is_in_the_toc():
    on_disk = {f"book/{p.stem}" for p in (REPO / "book").glob("*.md")}
    assert on_disk == set(toc_files()), "book/*.md and _toc.yml disagree"


@pytest.mark.parametrize("page", toc_files())
def test_page_rendered(built_book, page):
    html = (built_book / f"{page}.html").read_text()
    assert "<h1>" in html
    # An executed cell that raised would show a traceback in the page.
    assert "Traceback (most recent call last)" not in html


@pytest.mark.parametrize("chapter", chapters())
def test_chapter_was_executed_and_figures_exist(built_book, chapter):
    html = (built_book / f"{chapter}.html").read_text()
    assert 'class="cell_output' in html, f"{chapter} has no executed outputs"
    for src in re.findall(r'<img[^>]+src="([^"]+)"', html):
        if not src.startswith(("http", "data:")):
            assert (built_book / chapter).parent.joinpath(src).resolve().is_file(), src


def test_chapter1_shows_its_figures_and_computed_numbers(built_book):
    html = (built_book / "book/ch01_standard.html").read_text()
    assert len(re.findall(r'<img[^>]+src="[^"]+\.png"', html)) >= 4
    assert "Common mistakes" in html
    # The glued numbers are the computed ones (independent arithmetic here).
    assert f"{3 * 3 * 128 * 256 + 256:,}" in html
    assert f"{3 * 3 * 128 * 256 * 56 * 56 / 1e6:,.1f}" in html
