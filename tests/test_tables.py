"""course_lib.tables.Table: aligned text that is also an HTML table."""
import re
from html.parser import HTMLParser

import pytest

from course_lib.tables import Table


class _Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self.caption, self._in = [], "", None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th", "caption"):
            self._in = tag
            if tag != "caption":
                self.rows[-1].append("")

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in == "caption":
            self.caption += data
        elif self._in:
            self.rows[-1][-1] += data


def test_text_and_html_hold_the_same_cells():
    table = Table(("model", "M params"), [("a <b>", "4.21"), ("VGG 16", "138")],
                  caption="Table 8 & co")
    assert isinstance(table, str) and "VGG 16" in table
    lines = str(table).splitlines()
    assert lines[0] == "Table 8 & co" and set(lines[2]) == {"-"}
    assert lines[3].startswith("a <b>") and lines[3].endswith(" 4.21")  # numbers right-aligned
    parser = _Cells()
    parser.feed(table._repr_html_())
    assert parser.caption == "Table 8 & co"
    assert parser.rows == [["model", "M params"], ["a <b>", "4.21"], ["VGG 16", "138"]]
    assert "<b>" not in re.sub(r"&lt;b&gt;", "", table._repr_html_().split("<tbody>")[1])


def test_ragged_rows_are_refused():
    with pytest.raises(ValueError, match="every row needs 2 cells"):
        Table(("a", "b"), [("1",)])
