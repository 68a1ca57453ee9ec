"""Tables the book shows: one object that prints as aligned text and renders as an HTML table in a
notebook or the built book (a paper's table is a table, not monospace text)."""
from __future__ import annotations

import html
from typing import Sequence


class Table(str):
    """A table that IS its aligned text (so ``print``, ``in`` and string tests work) and renders
    as HTML where a notebook can show it (``_repr_html_``). Column 0 and the columns listed in
    ``left`` are left-aligned, the others (numbers) right-aligned. ``caption`` names the source."""

    def __new__(cls, header: Sequence[str], rows: Sequence[Sequence[object]], caption: str = "",
                left: Sequence[int] = ()) -> "Table":
        header = tuple(str(h) for h in header)
        body = [tuple(str(c) for c in r) for r in rows]
        for r in body:
            if len(r) != len(header):
                raise ValueError(f"every row needs {len(header)} cells (one per column of "
                                 f"{header}), got {len(r)}: {r}")
        left_set = {0, *left}
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) if i in left_set else c.rjust(w)
                           for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                 for r in [header, *body]]
        lines.insert(1, "-" * max(len(line) for line in lines))
        text = "\n".join(([caption] if caption else []) + lines)
        table = super().__new__(cls, text)
        table.header, table.rows, table.caption, table.left = header, body, caption, left_set
        return table

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        def cell(tag: str, i: int, value: str) -> str:
            align = "left" if i in self.left else "right"
            return f'<{tag} style="text-align: {align}">{html.escape(value)}</{tag}>'

        head = "".join(cell("th", i, h) for i, h in enumerate(self.header))
        body = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(r)) + "</tr>"
                       for r in self.rows)
        caption = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        return (f'<table class="table course-table">{caption}<thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table>")
