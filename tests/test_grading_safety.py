"""Submissions that are not what they seem, and feedback that must stay safe to open (issue 20,
items 4 and 5), through the real pipeline with the sandbox on.

One batch, graded once: every ingest trick (a notebook symlinked to the instructor's solution, an
assignment folder symlinked to ``solutions/<assignment>``, a symlink to a classmate's notebook, to
a non-JSON file, to ``/dev/zero``, a FIFO as the notebook) beside honest classmates, one of them
under a 250-character folder name, one honest solution that also prints a 20 MB line, its
sandbox's environment, and displays HTML/JavaScript, and one that looks for a classmate's code in
its own memory (issue 21, attack 7) in nbgrader's kernel and in the re-check. The tricks are refused with a reason (they
never reach a kernel, so they cost nothing), the honest students keep full marks, and every page
is free of student script and bounded in size.
"""
from __future__ import annotations

import copy
import csv
import json
import os
import re
from pathlib import Path

import nbformat
import pytest

from course_lib import grading
from course_lib.grading import feedback, pipeline
from test_grading_caps import CLASSMATE_SECRET, MEMORY_SCAN
from test_grading_ingest import _Markup
from test_grading_pipeline import (ASSIGNMENT, CELL_TIMEOUT, MEM_MB, REPO, SOURCE, TOTAL,
                                   _solved_release)

NB = grading.notebook_name(ASSIGNMENT)
SECRET = "INSTRUCTOR-ONLY-SECRET-4711"
LONG = "Zoë " + "x" * 246          # 250 characters
BIG_LINE = 20_000_000              # characters printed on one line
SCANNER = "zz_memory_scan"          # graded last, by the same kernels and re-check server
HONEST = ("alice", LONG, "html_and_big_print", SCANNER)
TRICKS = {  # submitted name -> words its reason must have
    "link_to_solution": ("symbolic link", "outside"),
    "linked_assignment_folder": ("assignment folder is a symbolic link",),
    "link_to_classmate": ("symbolic link", "outside"),
    "link_to_text_file": ("symbolic link", "outside"),
    "link_to_dev_zero": ("symbolic link", "outside"),
    "fifo_notebook": ("named pipe", "not opened"),
}
LOUD = """import sys
print(open('/proc/self/environ', 'rb').read().decode(errors='replace'))
from IPython.display import HTML, Javascript, display
display(HTML("<script>window.PWNED=1</script><img src=x onerror=alert(1)>"))
display(Javascript("window.PWNED=2"))
print("z" * %d)
""" % BIG_LINE


def _with_part1(extra: str) -> nbformat.NotebookNode:
    nb = copy.deepcopy(_solved_release())
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "part1")
    cell.source += "\n" + extra
    return nb


def _honest(name: str) -> nbformat.NotebookNode:
    """alice's solution holds a secret; the scanner's looks for it in its own memory (in
    nbgrader's kernel and in the re-check) and loses part 1 if it finds it (or if the scan
    cannot even find its own)."""
    if name == "html_and_big_print":
        return _loud_solution()
    if name == "alice":
        return _with_part1(f"secret = {CLASSMATE_SECRET!r}")
    if name == SCANNER:
        return _with_part1(MEMORY_SCAN + "if found != {mine}:\n    conv_output_size = None\n")
    return _solved_release()


def _loud_solution() -> nbformat.NotebookNode:
    nb = copy.deepcopy(_solved_release())
    nb.cells += [nbformat.v4.new_code_cell(LOUD),
                 nbformat.v4.new_markdown_cell("<script>window.PWNED=3</script><img src=x "
                                               "onerror=alert(3)> [x](javascript:alert(4))"),
                 nbformat.v4.new_raw_cell("<script>window.PWNED=4</script>",
                                          metadata={"format": "text/html"})]
    return nb


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("safety")
    course = grading.new_course(tmp / "course", [ASSIGNMENT], root=REPO)
    submitted = tmp / "submitted"
    for name in HONEST:
        folder = submitted / name / ASSIGNMENT
        folder.mkdir(parents=True)
        nbformat.write(_honest(name), folder / NB)
    secret = tmp / "instructor-notes.txt"
    secret.write_text(f"{SECRET}: not a notebook\n")
    solution = course / "solutions" / ASSIGNMENT
    targets = {"link_to_solution": solution / NB, "link_to_classmate": submitted / "alice" /
               ASSIGNMENT / NB, "link_to_text_file": secret, "link_to_dev_zero": Path("/dev/zero")}
    for name, target in targets.items():
        (submitted / name / ASSIGNMENT).mkdir(parents=True)
        (submitted / name / ASSIGNMENT / NB).symlink_to(target)
    (submitted / "linked_assignment_folder").mkdir()
    (submitted / "linked_assignment_folder" / ASSIGNMENT).symlink_to(solution)
    (submitted / "fifo_notebook" / ASSIGNMENT).mkdir(parents=True)
    os.mkfifo(submitted / "fifo_notebook" / ASSIGNMENT / NB)
    result = pipeline.grade_class(ASSIGNMENT, submitted, course, workers=1, out=tmp / "out",
                                  cell_timeout=CELL_TIMEOUT, mem_mb=MEM_MB, quiet=True)
    return result, course, submitted


def _rows(result) -> dict[str, dict]:
    return {r["submitted_as"]: r for r in csv.DictReader(result.csv.open(encoding="utf-8"))}


@pytest.mark.slow
def test_tricks_are_refused_with_a_reason_and_honest_classmates_keep_full_marks(batch):
    result, _, _ = batch
    rows = _rows(result)
    assert sorted(rows) == sorted([*HONEST, *TRICKS]), "one row per submitted name"
    assert len({r["student"] for r in rows.values()}) == len(rows)
    for name in HONEST:
        assert (rows[name]["status"], float(rows[name]["score"])) == ("ok", TOTAL), \
            (name[:20], rows[name]["problems"])
    for name, words in TRICKS.items():
        row = rows[name]
        assert (row["status"], float(row["score"])) == ("refused", 0.0), (name, row)
        assert all(w in row["problems"] for w in words), (name, row["problems"])


@pytest.mark.slow
def test_no_output_quotes_a_file_the_student_did_not_write(batch):
    result, course, _ = batch
    solution_only = _solution_only_line(course)
    pages = [p for n in TRICKS for p in (result.out / "feedback").glob(f"{n}/**/*.html")]
    assert len(pages) == len(TRICKS), "every refused row has a (plain) feedback page"
    texts = {p: p.read_text(encoding="utf-8")
             for p in [result.csv, result.problems, result.report, *pages]}
    for path, text in texts.items():
        assert SECRET not in text, path
        assert solution_only not in text, path


def _solution_only_line(course: Path) -> str:
    """A line of the instructor's solution that the student release does not have."""
    release = (REPO / "exercises" / ASSIGNMENT / NB).read_text()
    source = nbformat.read(course / "solutions" / ASSIGNMENT / NB, as_version=4)
    return next(line.strip() for c in source.cells if c.cell_type == "code"
                for line in c.source.splitlines()
                if len(line.strip()) > 25 and line.strip() not in release)


@pytest.mark.slow
def test_feedback_runs_no_student_script_and_is_bounded(batch):
    result, course, submitted = batch
    sub = next(s for s in result.submissions if s.submitted_as == "html_and_big_print")
    page = sub.feedback.read_text(encoding="utf-8")
    assert "&lt;IPython.core.display.HTML object&gt;" in page, "its plain-text version shows"
    markup = _Markup()
    markup.feed(page)
    assert not [s for s in markup.scripts if "PWNED" in s], "a student script would run"
    assert not [a for a in markup.attrs if a.startswith("on")], "an event handler would run"
    assert not [v for v in markup.links if v.startswith("javascript")]
    assert len(page) < feedback.MAX_NOTEBOOK_OUTPUT_CHARS + 1_500_000, len(page)
    cut = re.search(r"(\d+) more characters not shown", page)
    assert cut and int(cut.group(1)) >= BIG_LINE - feedback.MAX_OUTPUT_CHARS, "the line is cut"
    cached = [p for p in (result.out / "results").glob("*.json")
              if json.loads(p.read_text())["student"] == sub.student]
    assert cached and cached[0].stat().st_size < 2 * len(page) + 100_000
    for path in (result.csv, result.problems, result.report):
        assert path.stat().st_size < 1_000_000, path
    # The box's environment (printed above, in the page) names no instructor folder.
    assert str(course) not in page and str(submitted) not in page
