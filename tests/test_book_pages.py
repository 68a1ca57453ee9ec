"""What a reader of the book sees (issue 23): only the code that teaches, and a self-check at the
end of every section. Read from the chapters' sources (fast), with one check on the built pages
(slow) for raw floats in the outputs."""
from __future__ import annotations

import functools
import re
from html import unescape

import jupytext
import pytest

from conftest import REPO

CHAPTERS = sorted((REPO / "book").glob("ch[0-9][0-9]_*.md"))
# Every page that executes code: the chapters and the instructor guide.
EXECUTED_PAGES = [*CHAPTERS, REPO / "book" / "instructor_guide.md"]
HIDDEN = {"remove-cell", "remove-input"}
# Bookkeeping a reader should not see: the glue that hands numbers to the prose, the notebook's
# display plumbing, and a branch on data the build may not have.
BOOKKEEPING = re.compile(r"\bglue\(|from IPython\.display import|^if gpu is not None", re.M)
# A float printed with all its digits (e.g. 2.384185791015625e-07): format it, or glue it.
RAW_FLOAT = re.compile(r"\b\d\.\d{9,}(e[-+]\d+)?\b")


@functools.lru_cache(maxsize=None)
def read_page(path):
    return jupytext.read(path)


def visible_code_cells(chapter):
    for cell in read_page(chapter).cells:
        if cell.cell_type == "code" and not HIDDEN & set(cell.metadata.get("tags", [])):
            yield cell


@pytest.mark.parametrize("chapter", EXECUTED_PAGES, ids=lambda p: p.name)
def test_no_bookkeeping_or_empty_cell_is_shown(chapter):
    for cell in visible_code_cells(chapter):
        first = cell.source.strip().splitlines()[0] if cell.source.strip() else "(empty)"
        assert cell.source.strip(), f"{chapter.name}: an empty code cell is shown"
        found = BOOKKEEPING.search(cell.source)
        assert not found, (f"{chapter.name}: the cell starting {first!r} shows bookkeeping "
                           f"({found.group(0)!r}); move it to a cell tagged remove-cell")


@pytest.mark.parametrize("chapter", EXECUTED_PAGES, ids=lambda p: p.name)
def test_printed_floats_are_formatted(chapter):
    """A print of a bare .item() or float shows every digit: format it (e.g. :.1e)."""
    for cell in visible_code_cells(chapter):
        for line in cell.source.splitlines():
            if "print(" in line:
                assert not re.search(r"\.item\(\)\)\s*$", line), f"{chapter.name}: {line.strip()}"


def sections(chapter):
    """(title, body) of each '## ' section of a chapter, code cells included."""
    text = chapter.read_text()
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return list(zip(parts[1::2], parts[2::2]))


SELF_CHECK = re.compile(
    r":::\{admonition\} Self-check\n:class: tip\n(?P<questions>.*?)\n:::\s*\n"
    r":::\{admonition\} Answers\n:class: dropdown\n(?P<answers>.*?)\n:::\s*$", re.S)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name)
def test_every_section_ends_with_a_self_check(chapter):
    """2 to 4 questions, then as many answers in a collapsed (dropdown) block, at the very end of
    every section but the summary."""
    checked = 0
    for title, body in sections(chapter):
        if title.strip() == "Summary":
            continue
        found = SELF_CHECK.search(body.rstrip() + "\n")
        assert found, f"{chapter.name}: section {title!r} does not end with a self-check"
        questions = re.findall(r"^\d\. ", found["questions"], flags=re.M)
        answers = re.findall(r"^\d\. ", found["answers"], flags=re.M)
        assert 2 <= len(questions) <= 4, f"{chapter.name}: {title!r} has {len(questions)} questions"
        assert len(answers) == len(questions), f"{chapter.name}: {title!r}: answers != questions"
        # Numbers in answers are computed: no number with a decimal point or a thousands
        # separator is typed there, only glued ones.
        typed = re.findall(r"(?<![\w{`$.])\d[\d,]*\.\d+|\d{1,3}(?:,\d{3})+", re.sub(
            r"\{glue:text\}`[^`]*`|\$[^$]*\$|`[^`]*`", "", found["answers"]))
        assert not typed, f"{chapter.name}: {title!r}: typed numbers in the answers: {typed}"
        checked += 1
    assert checked >= 3, f"{chapter.name}: only {checked} sections"


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name)
def test_built_pages_show_no_raw_floats(built_book, chapter):
    html = (built_book / "book" / f"{chapter.stem}.html").read_text()
    outputs = re.findall(r'<div class="cell_output[^"]*">(.*?)</div>\s*</div>', html, re.S)
    raw = [m.group(0) for out in outputs
           for m in [RAW_FLOAT.search(unescape(re.sub(r"<[^>]+>", "", out)))] if m]
    assert not raw, f"{chapter.name}: unformatted floats in the outputs: {raw[:3]}"
