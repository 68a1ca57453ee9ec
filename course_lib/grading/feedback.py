"""Feedback safe to open: what of a student's notebook may reach a page someone opens.

Feedback pages and the report are opened in a browser, by the student and by the instructor
(formgrader runs on the Jupyter origin), so nothing the student wrote may run there, and nothing
may make a page too big to open. Before nbgrader writes a feedback page, :func:`make_safe`
rewrites the graded notebook:

* student HTML and JavaScript are rendered as TEXT, never as markup: an output keeps only its
  ``text/plain`` version (``display(HTML(...))``, ``text/html``, ``application/javascript``,
  SVG, markdown, LaTeX and widget outputs without one are shown as their source text); PNG and
  JPEG images stay (checked to be base64, bounded); markdown cells the gradebook does not hold
  have their raw HTML tags, character references and ``javascript:``/``data:`` links
  neutralised (instructor cells are restored from the gradebook as they are); raw cells become
  plain text;
* every output is capped in characters (:data:`MAX_OUTPUT_CHARS`) as well as the whole
  notebook's outputs (:data:`MAX_NOTEBOOK_OUTPUT_CHARS`), so one 120 MB line gives a bounded page.

nbconvert's own ``sanitize_html`` is switched on as well (:data:`NBCONVERT_CONFIG`), a second
line of defence. :func:`clip` and :func:`clip_problems` bound every other text that reaches the
CSV, problems.txt, report.html and the resume cache.
"""
from __future__ import annotations

import re

MAX_OUTPUT_CHARS = 10_000             # of one output: a stream, a result, a traceback
MAX_NOTEBOOK_OUTPUT_CHARS = 200_000   # of all outputs of one notebook
MAX_IMAGE_CHARS = 4_000_000           # of one base64 PNG/JPEG output (about 3 MB)
MAX_PROBLEM_CHARS = 500               # of one problem text (CSV, report, problems.txt)
MAX_PROBLEMS = 40                     # problem texts kept per submission
SAFE_IMAGES = ("image/png", "image/jpeg")
NBCONVERT_CONFIG = {"HTMLExporter.sanitize_html": True}

_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]*")
_TAG = re.compile(r"<(?=[A-Za-z/!?])")            # what could open a tag or a comment
_REFERENCE = re.compile(r"&(?=#|[A-Za-z][A-Za-z0-9]*;)")  # &#58; &colon; ...
_SCHEME = r"\s*<?\s*(?:j\s*a\s*v\s*a|v\s*b)\s*s\s*c\s*r\s*i\s*p\s*t\s*:|\s*<?\s*d\s*a\s*t\s*a\s*:"
_LINK = re.compile(r"(\]\(|^\s*\[[^\]]*\]:)(?=" + _SCHEME + ")", re.I | re.M)


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    text = str(text)
    if len(text) <= limit:
        return text
    return text[:limit] + f" ... [{len(text) - limit} more characters not shown]"


def clip_problems(problems: list[str]) -> list[str]:
    """Problem texts bounded in number and length (student output can reach them)."""
    kept = [clip(p, MAX_PROBLEM_CHARS) for p in problems[:MAX_PROBLEMS]]
    if len(problems) > MAX_PROBLEMS:
        kept.append(f"... {len(problems) - MAX_PROBLEMS} more problems not shown")
    return kept


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _as_text_output(output: dict, budget: list[int]) -> None:
    """Rewrite one output in place: plain text (and safe images) only, capped."""
    kind = output.get("output_type")
    if "metadata" in output:
        output["metadata"] = {}
    if kind == "stream":
        output["text"] = _spend(_text(output.get("text", "")), budget)
    elif kind == "error":
        output["ename"] = clip(_text(output.get("ename", "")), 200)
        output["evalue"] = clip(_text(output.get("evalue", "")), 2_000)
        output["traceback"] = _spend("\n".join(_text(t) for t in output.get("traceback", [])),
                                     budget).split("\n")
    elif kind in ("display_data", "execute_result"):
        data = output.get("data", {}) or {}
        kept = {m: data[m] for m in SAFE_IMAGES if m in data and isinstance(data[m], str)
                and len(data[m]) <= MAX_IMAGE_CHARS and _BASE64.fullmatch(data[m])}
        if "text/plain" in data:
            kept["text/plain"] = _spend(_text(data["text/plain"]), budget)
        elif not kept:
            rich = next((m for m in data if m not in SAFE_IMAGES), None)
            kept["text/plain"] = ("[output not shown]" if rich is None else _spend(
                f"[{rich} output, shown as text]\n" + _text(data[rich]), budget))
        output["data"] = kept
    else:  # an output type nbformat does not know: nothing of it is shown
        output.clear()
        output.update({"output_type": "stream", "name": "stdout", "text": "[output not shown]"})


def _spend(text: str, budget: list[int]) -> str:
    """Clip ``text`` to one output's cap and to what is left of the notebook's budget."""
    limit = max(0, min(MAX_OUTPUT_CHARS, budget[0]))
    shown = clip(text, limit) if limit else (
        f"[{len(text)} characters not shown: the notebook's output passed the feedback limit of "
        f"{MAX_NOTEBOOK_OUTPUT_CHARS} characters]")
    budget[0] -= min(len(text), limit)
    return shown


def markdown_as_text(source: str) -> str:
    """Markdown whose raw HTML shows as text: no tag, comment, character reference or
    ``javascript:``/``data:`` link survives as markup."""
    source = _REFERENCE.sub("&amp;", source)
    source = _TAG.sub("&lt;", source)
    return _LINK.sub(r"\1#blocked-link ", source)


def make_safe(nb, trusted_markdown: dict[str, str]) -> None:
    """Rewrite a graded notebook in place for its feedback page (module docstring).
    ``trusted_markdown``: grade_id -> source of the gradebook's locked markdown cells."""
    budget = [MAX_NOTEBOOK_OUTPUT_CHARS]
    for cell in nb.cells:
        cell.pop("attachments", None)
        if cell.cell_type == "code":
            for output in cell.get("outputs", []):
                _as_text_output(output, budget)
        elif cell.cell_type == "markdown":
            meta = cell.metadata.get("nbgrader")
            gid = meta.get("grade_id") if isinstance(meta, dict) else None
            cell.source = (trusted_markdown[gid] if gid in trusted_markdown
                           else markdown_as_text(_text(cell.source)))
        else:  # raw cells are copied into the page as they are: make them text
            cell.cell_type = "markdown"
            cell.metadata.pop("format", None)
            cell.metadata.pop("raw_mimetype", None)
            cell.source = markdown_as_text(_text(cell.source))
