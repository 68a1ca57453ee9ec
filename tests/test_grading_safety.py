"""Submissions that are not what they seem, and feedback that must stay safe to open (issue 20,
items 4 and 5), through the real pipeline with the sandbox on.

One batch, graded once: every ingest trick (a notebook symlinked to the instructor's solution, an
assignment folder symlinked to ``solutions/<assignment>``, a symlink to a classmate's notebook, to
a non-JSON file, to ``/dev/zero``, a FIFO, a socket or a device node as the notebook, a hard link
to the solution, a notebook over the size limit) beside honest classmates: one under a
250-character folder name, one that also prints a 20 MB line, its sandbox's environment, and
displays HTML/JavaScript, and one that looks for a classmate's code in its own memory (issue 21,
attack 7), in nbgrader's kernel and in the re-check. The tricks are refused with a reason (they
never reach a kernel, so they cost nothing), the honest students keep full marks, and every page
is free of student script and bounded in size.
"""
from __future__ import annotations

import copy
import csv
import json
import os
import re
import socket
import stat
from pathlib import Path

import nbformat
import pytest

from course_lib import grading
from course_lib.grading import feedback, ingest, pipeline, sandbox
from test_grading_caps import (CLASSMATE_SECRET, MEMORY_SCAN, needs_caps, needs_filter,
                               resource_hog)
from test_grading_ingest import _Markup
from test_grading_pipeline import (ASSIGNMENT, CELL_TIMEOUT, MEM_MB, REPO, TOTAL, _cells_by_id,
                                   _solved_release, _with)

NB = grading.notebook_name(ASSIGNMENT)
SECRET = "INSTRUCTOR-ONLY-SECRET-4711"
LONG = "Zoë " + "x" * 246          # 250 characters
BIG_LINE = 20_000_000              # characters printed on one line
SCANNER = "zz_memory_scan"          # graded last, by the same kernels and re-check server
HONEST = ("alice", LONG, "html_and_big_print", SCANNER)
HOG = "a_hog"  # test_grading_caps.py's resource attacks, graded before alice
TRICKS = {  # submitted name -> words its reason must have
    "link_to_solution": ("symbolic link", "outside"),
    "linked_assignment_folder": ("assignment folder is a symbolic link",),
    "link_to_classmate": ("symbolic link", "outside"),
    "link_to_text_file": ("symbolic link", "outside"),
    "link_to_dev_zero": ("symbolic link", "outside"),
    "fifo_notebook": ("named pipe", "not opened"),
    "hard_link_to_solution": ("hard-linked", "outside"),
    "socket_notebook": ("a socket",),
    "huge_notebook": ("MiB limit", "not read"),
}
if os.geteuid() == 0:  # making a device node needs root (CI's machines have it)
    TRICKS["device_notebook"] = ("a device",)
LOUD = """import sys
print(open('/proc/self/environ', 'rb').read().decode(errors='replace'))
from IPython.display import HTML, Javascript, display
display(HTML("<script>window.PWNED=1</script><img src=x onerror=alert(1)>"))
display(Javascript("window.PWNED=2"))
print("z" * %d)
""" % BIG_LINE


def _with_part1(extra: str) -> nbformat.NotebookNode:
    return _with({"part1": _cells_by_id(_solved_release())["part1"].source + "\n" + extra})


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
    limits = sandbox.Limits(mem_mb=MEM_MB)
    for name in HONEST:
        folder = submitted / name / ASSIGNMENT
        folder.mkdir(parents=True)
        nbformat.write(_honest(name), folder / NB)
    (submitted / HOG / ASSIGNMENT).mkdir(parents=True)
    nbformat.write(resource_hog(limits), submitted / HOG / ASSIGNMENT / NB)
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
    _other_files(submitted, solution / NB)
    # The memory attack takes seconds on a loaded machine (3 GiB written before the OOM killer).
    result = pipeline.grade_class(ASSIGNMENT, submitted, course, workers=1, out=tmp / "out",
                                  cell_timeout=max(40, CELL_TIMEOUT), mem_mb=MEM_MB,
                                  limits=limits, quiet=True)
    return result, course, submitted


def _other_files(submitted: Path, solution: Path) -> None:
    """A hard link to the instructor's solution, a socket, a device node (as root) and a sparse
    notebook over the size limit, each where a student's notebook belongs."""
    def home(name: str) -> Path:
        (submitted / name / ASSIGNMENT).mkdir(parents=True)
        return submitted / name / ASSIGNMENT / NB

    os.link(solution, home("hard_link_to_solution"))
    listener = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    os.chdir(home("socket_notebook").parent)  # a socket's path is limited to 107 bytes
    try:
        listener.bind(NB)
    finally:
        os.chdir(cwd)
        listener.close()  # the socket file stays
    if "device_notebook" in TRICKS:
        os.mknod(home("device_notebook"), 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's
    with open(home("huge_notebook"), "wb") as f:  # sparse: no disk used, stat says 65 MiB
        f.truncate(ingest.MAX_NOTEBOOK_BYTES + 2**20)


def _rows(result) -> dict[str, dict]:
    return {r["submitted_as"]: r for r in csv.DictReader(result.csv.open(encoding="utf-8"))}


@pytest.mark.slow
def test_tricks_are_refused_with_a_reason_and_honest_classmates_keep_full_marks(batch):
    result, _, _ = batch
    rows = _rows(result)
    assert sorted(rows) == sorted([*HONEST, *TRICKS, HOG]), "one row per submitted name"
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


@pytest.mark.slow
@needs_caps
@needs_filter
def test_resource_attacks_are_bounded_and_the_next_classmate_keeps_full_marks(batch):
    """The hog (test_grading_caps.py) loses nothing if every cap held; alice, graded after it by
    the same warm kernels and re-check server, keeps full marks and hits no cap."""
    result, _, _ = batch
    subs = {s.submitted_as: s for s in result.submissions}
    # Each attack sits in a part that is lost if its cap did not hold (see resource_hog).
    assert subs[HOG].score == TOTAL, subs[HOG].problems
    assert subs["alice"].score == TOTAL, subs["alice"].problems
    problems = " | ".join(subs[HOG].problems)
    assert "memory cap" in problems and "processes and threads" in problems, problems
    peak = float(problems.split("peak ")[1].split(" MiB")[0])
    assert peak <= MEM_MB
    assert not any("cap" in p for p in subs["alice"].problems), subs["alice"].problems
    assert "limits enforced here" in result.report.read_text()
