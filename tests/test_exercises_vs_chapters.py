"""The chapter demonstrates, the exercise asks for a different case: no by-number answer of an
exercise appears in its chapter's text.

The answers are computed from the solution notebooks themselves (their code cells run here, in
order, without the test cells and the timing cells), so a change to an exercise is covered without
editing this test. The chapters are read as written (the MyST sources in book/) and as built (the
HTML pages, with every number the build computes and glues in). Whole numbers below 100
are too common in any text to be told apart and are left out; so are ex07 (it reproduces the
MobileNet paper's published numbers on purpose) and ex08/ex09 (their numbers come from training).
"""
from __future__ import annotations

import ast
import contextlib
import io
import json
import math
import numbers
import re

import pytest

from exercise_helpers import REPO

BY_NUMBER = ["ex01_standard", "ex02_pointwise", "ex03_depthwise", "ex04_separable",
             "ex05_xception", "ex06_atrous"]


def _test_cell_arguments(source: str) -> list[str]:
    """Names passed to the ``checks.check_...`` calls of a test cell (visible part)."""
    visible = source.split("### BEGIN HIDDEN TESTS")[0]
    names = []
    for node in ast.walk(ast.parse(visible)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "checks":
            names += [arg.id for arg in node.args if isinstance(arg, ast.Name)]
    return names


def by_number_answers(assignment: str) -> dict[str, float]:
    """{variable: value} of every number a test cell of the solution checks, computed by running
    the solution notebook's code (setup, solutions, demos) in order."""
    nb = json.loads((REPO / "solutions" / assignment / f"{assignment}.ipynb").read_text())
    namespace: dict = {}
    checked: list[str] = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        meta = cell["metadata"].get("nbgrader", {})
        source = "".join(cell["source"])
        if meta.get("grade"):
            checked += _test_cell_arguments(source)
            continue
        if meta.get("grade_id", "").startswith("written"):
            continue   # timing cells: slow, and what they print varies by machine
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(source, f"{assignment}:{meta.get('grade_id')}", "exec"), namespace)
    return {name: namespace[name] for name in checked
            if isinstance(namespace.get(name), numbers.Real)
            and not isinstance(namespace.get(name), bool)}


def spellings(value: float) -> set[str]:
    """How a text may write ``value``: with or without thousands separators, rounded to 3 or 4
    significant digits, as a percentage (fractions). Empty for whole numbers below 100."""
    if float(value).is_integer():
        value = int(value)
        return set() if abs(value) < 100 else {f"{value:,}", str(value), f"{value:_}"}
    found = {f"{value:.3g}", f"{value:.4g}", f"{value:.2f}"}
    if 0 < value < 1:
        found |= {f"{100 * value:.0f}%", f"{100 * value:.1f}%", f"{100 * value:.0f} %"}
    return {s for s in found if len(re.sub(r"\D", "", s).lstrip("0")) >= 3 or "%" in s}


def appearances(text: str, spelling: str) -> list[str]:
    """Where ``spelling`` stands in ``text`` as a number of its own (not inside a longer one)."""
    pattern = r"(?<![\d.,])" + re.escape(spelling) + r"(?![\d]|[.,]\d)"
    return [text[max(0, m.start() - 40):m.end() + 40].replace("\n", " ")
            for m in re.finditer(pattern, text)]


@pytest.mark.parametrize("assignment", BY_NUMBER)
def test_no_by_number_answer_is_printed_by_the_chapter(assignment):
    answers = by_number_answers(assignment)
    assert answers, f"{assignment}: no by-number answers found in the solution's test cells"
    chapter = REPO / "book" / f"ch{assignment[2:]}.md"
    text = chapter.read_text()
    found = [f"{name} = {value!r} as {spelling!r}: ...{where}..."
             for name, value in answers.items() if math.isfinite(value)
             for spelling in spellings(value) for where in appearances(text, spelling)]
    assert not found, f"{chapter.name} prints answers of {assignment}:\n" + "\n".join(found)


@pytest.mark.slow
@pytest.mark.parametrize("assignment", BY_NUMBER)
def test_no_by_number_answer_is_in_the_built_chapter(assignment, built_book):
    """The built page too: numbers a chapter computes and glues in at build time are not in its
    source (the book is built once for the whole suite, tests/conftest.py)."""
    import html

    answers = by_number_answers(assignment)
    page = built_book / "book" / f"ch{assignment[2:]}.html"
    text = html.unescape(re.sub(r"<[^>]+>", " ", page.read_text()))
    found = [f"{name} = {value!r} as {spelling!r}: ...{where}..."
             for name, value in answers.items() if math.isfinite(value)
             for spelling in spellings(value) for where in appearances(text, spelling)]
    assert not found, f"{page.name} shows answers of {assignment}:\n" + "\n".join(found)


def test_the_scan_finds_a_printed_answer():
    """The scan itself: the old ex03 answer as chapter 3 printed it is found, small numbers not."""
    text = "a depthwise layer with 288 params and 3,612,672 MACs, 16 of 49 read, 75%"
    assert appearances(text, "3,612,672") and appearances(text, "288")
    assert "75%" in spellings(0.75) and appearances(text, "75%")
    assert spellings(16) == set() and not appearances(text, "3,612")
