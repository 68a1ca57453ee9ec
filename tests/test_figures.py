"""Every figure in the chapters is numbered, captioned and has alt text, and each chapter has the
figures it should. The source check (fast) reads the chapters' cell metadata; the built-book check
(slow) reads the HTML the reader gets: a numbered <figure> with a caption and a described image for
each, no stray image outside one, and no raw repr or progress bar among the outputs."""
from __future__ import annotations

import ast
import re
from html import unescape
from html.parser import HTMLParser

import jupytext
import pytest

from conftest import REPO

# Figures per chapter. A new figure means a new entry here (and a caption and alt text).
FIGURES = {
    "ch01_standard": ["fig-ch01-sliding-window", "fig-ch01-conv-volumes", "fig-ch01-photo-maps",
                      "fig-ch01-edges-camera", "fig-ch01-im2col"],
    "ch02_pointwise": ["fig-ch02-colour-transform", "fig-ch02-pixels-read"],
    "ch03_depthwise": ["fig-ch03-filters", "fig-ch03-per-channel-maps", "fig-ch03-channel-edges"],
    "ch04_separable": ["fig-ch04-separable-shapes", "fig-ch04-saving-factor",
                       "fig-ch04-separable-fit"],
    "ch05_xception": ["fig-ch05-groups-spectrum", "fig-ch05-inception-family",
                      "fig-ch05-mid-activation"],
    "ch06_atrous": ["fig-ch06-zero-inserted", "fig-ch06-field-growth", "fig-ch06-gridding",
                    "fig-ch06-gridding-photo", "fig-ch06-taps-on-map", "fig-ch06-aspp"],
    "ch07_mobilenet": ["fig-ch07-block", "fig-ch07-stages", "fig-ch07-digits-training",
                       "fig-ch07-roofline", "fig-ch07-mnist-scale"],
    "ch07_where_time_goes": [],
    "ch08_autoencoder": ["fig-ch08-checkerboard", "fig-ch08-training", "fig-ch08-reconstructions",
                         "fig-ch08-latent-2d", "fig-ch08-interpolation", "fig-ch08-denoising"],
}
# A code cell that calls one of these draws a figure.
DRAWS = re.compile(r"plt\.(subplots|figure|plot|imshow)\b|viz\.(draw|show|plot)_")
# Calls that end a cell without a value to show.
RETURN_NONE = {"show", "tight_layout", "glue", "print"}


def shows_a_repr(source: str) -> bool:
    """True if the cell's last statement is an expression IPython would display (an Axes, a
    Figure, a Text...), i.e. one not silenced by a trailing ';'."""
    if source.rstrip().endswith(";"):
        return False
    last = ast.parse(source).body[-1]
    if not isinstance(last, ast.Expr):
        return False
    call = last.value
    name = getattr(getattr(call, "func", None), "attr", None) or getattr(
        getattr(call, "func", None), "id", None)
    return not (isinstance(call, ast.Call) and name in RETURN_NONE)


# What must never reach a rendered page: matplotlib reprs, tqdm progress bars (in the text the reader
# sees).
RAW_OUTPUT_TEXT = re.compile(r"<(Axes|Figure|matplotlib)\b[^>]*>|\bText\(\d|\d+(it|epoch)/s\]|"
                             r"\d+/\d+ \[\d\d:\d\d|\d+%\|[█▏▎▍▌▋▊▉ ]*\||[█▏▎▍▌▋▊▉]{2,}")


def chapter_figures(chapter: str) -> list[dict]:
    """(name, caption, alt, tags, source) of each figure cell, in page order."""
    notebook = jupytext.read(REPO / "book" / f"{chapter}.md")
    figures = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        options = cell.metadata.get("mystnb", {})
        if "figure" in options or DRAWS.search(cell.source):
            figures.append({"name": options.get("figure", {}).get("name"),
                            "caption": options.get("figure", {}).get("caption", ""),
                            "alt": options.get("image", {}).get("alt", ""),
                            "tags": cell.metadata.get("tags", []), "source": cell.source})
    return figures


def test_every_chapter_is_counted():
    assert sorted(FIGURES) == sorted(p.stem for p in (REPO / "book").glob("ch*.md"))


@pytest.mark.parametrize("chapter", sorted(FIGURES))
def test_chapter_figures_are_named_captioned_and_described(chapter):
    figures = chapter_figures(chapter)
    unnamed = [f["source"].splitlines()[0] for f in figures if not f["name"]]
    assert not unnamed, f"{chapter}: cells that draw without figure metadata: {unnamed}"
    assert [f["name"] for f in figures] == FIGURES[chapter], chapter
    for f in figures:
        assert len(f["caption"].split()) >= 8, f"{f['name']}: caption too short"
        # Alt text says what the picture shows, in words (not a copy of the caption).
        assert len(f["alt"].split()) >= 10 and f["alt"].strip() != f["caption"].strip(), f["name"]
        # The figure is the cell's only display output, so the cell must not end in an expression
        # whose repr would be shown too (an Axes, a Figure): end with ";" or a statement.
        assert not shows_a_repr(f["source"]), (
            f"{f['name']}: the cell ends in an expression whose repr would be shown too; end it "
            "with ';' or a statement")
    assert len({f["name"] for f in figures}) == len(figures)


def test_cells_that_only_draw_hide_their_code():
    for chapter in FIGURES:
        for f in chapter_figures(chapter):
            if f["source"].lstrip().startswith(("viz.draw", "fig, ax")) and "glue(" not in f["source"]:
                assert {"remove-input", "hide-input"} & set(f["tags"]), f["name"]


class _Figures(HTMLParser):
    """Collects, per <figure>: its id, the img alt texts and the caption text; and the <img>
    elements that sit in cell outputs outside any figure."""

    def __init__(self):
        super().__init__()
        self.figures: list[dict] = []
        self.stray_images: list[str] = []
        self._depth = 0  # nesting inside the current <figure>
        self._in_caption = False
        self._output_depth = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "figure":
            self.figures.append({"id": a.get("id", ""), "alts": [], "caption": ""})
            self._depth = 1
        elif self._depth:
            self._depth += tag not in ("img", "br", "hr", "input", "meta", "link")
            if tag == "figcaption":
                self._in_caption = True
            if tag == "img":
                self.figures[-1]["alts"].append(a.get("alt") or "")
        elif tag == "img" and self._output_depth:
            self.stray_images.append(a.get("src", ""))
        if tag == "div" and "cell_output" in (a.get("class") or ""):
            self._output_depth = 1
        elif tag == "div" and self._output_depth:
            self._output_depth += 1

    def handle_endtag(self, tag):
        if self._depth:
            if tag == "figcaption":
                self._in_caption = False
            if tag not in ("img", "br", "hr", "input", "meta", "link"):
                self._depth -= 1
        if tag == "div" and self._output_depth:
            self._output_depth -= 1

    def handle_data(self, data):
        if self._depth and self._in_caption:
            self.figures[-1]["caption"] += data


@pytest.mark.slow
@pytest.mark.parametrize("chapter", sorted(FIGURES))
def test_built_chapter_has_numbered_captioned_figures_with_alt_text(built_book, chapter):
    html = (built_book / "book" / f"{chapter}.html").read_text()
    parser = _Figures()
    parser.feed(html)
    figures = [f for f in parser.figures if f["id"].startswith("fig-")]
    assert [f["id"] for f in figures] == FIGURES[chapter]
    sources = {f["name"]: f for f in chapter_figures(chapter)}
    # Sphinx's numfig numbers the figures through the whole book, in toc order (the chapters come
    # first and no page before them has a figure): this chapter's continue the previous ones'.
    first = 1 + sum(len(FIGURES[c]) for c in sorted(FIGURES) if c < chapter)
    for number, f in enumerate(figures, start=first):
        assert re.match(rf"\s*Fig\. {number}\b", f["caption"]), (f["id"], f["caption"][:40])
        assert len(f["alts"]) == 1, f"{f['id']}: {len(f['alts'])} images in one figure"
        assert " ".join(f["alts"][0].split()) == " ".join(sources[f["id"]]["alt"].split())
    assert not parser.stray_images, f"{chapter}: images outside a figure: {parser.stray_images}"
    outputs = re.findall(r'<div class="cell_output[^"]*">(.*?)</div>\s*</div>', html, re.S)
    texts = [unescape(re.sub(r"<[^>]+>", "", out)) for out in outputs]
    raw = [m.group(0) for text in texts for m in [RAW_OUTPUT_TEXT.search(text)] if m]
    assert not raw, f"{chapter}: raw reprs or progress bars in the outputs: {raw[:3]}"


def test_no_figure_text_below_9_points():
    """Text stays readable at page width: no font size below 9 pt is set anywhere a figure is
    drawn (chapters, course_lib.viz, the grading report's plot). Figures are at most
    ``MAX_WIDTH_IN`` wide, so the page shrinks none of them below ~80 %."""
    sources = [*REPO.glob("book/ch[0-9][0-9]_*.md"), *REPO.glob("course_lib/viz/*.py"),
               REPO / "course_lib/grading/outputs.py"]
    small = []
    for path in sources:
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            for size in re.findall(r"(?:fontsize|labelsize|title_fontsize)=([0-9.]+)", line):
                if float(size) < 9:
                    small.append(f"{path.relative_to(REPO)}:{n}: {size} pt")
    assert len(sources) > 10
    assert not small, "text too small to read on the page:\n" + "\n".join(small)


def test_figures_the_reader_corrected():
    """Issue 23: Fig. 14's legend sits below the plots, Fig. 18 plots a share on its own axis
    (no unexplained "9 x share"), Fig. 28's alt text claims no clear 8, and Fig. 11 draws the
    output errors as hollow markers on top of the kernel errors."""
    figures = {f["name"]: f for chapter in FIGURES for f in chapter_figures(chapter)}
    mid = figures["fig-ch05-mid-activation"]["source"]
    assert "bbox_to_anchor=" in mid and 'loc="upper center"' in mid
    taps = figures["fig-ch06-taps-on-map"]
    assert "9 x share" not in taps["source"] and "twinx()" in taps["source"]
    assert "times 9" not in taps["alt"] and "%" in taps["caption"]
    walk = figures["fig-ch08-interpolation"]["alt"]
    assert "reshaped into an 8" not in walk and "rather than a clear 8" in " ".join(walk.split())
    fit = figures["fig-ch04-separable-fit"]["source"]
    assert 'markerfacecolor="none"' in fit and "zorder=3" in fit and "alpha=0.6" not in fit
