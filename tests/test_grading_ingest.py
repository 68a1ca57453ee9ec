"""Ingest takes only regular files inside each student's folder (issue 20, item 4), and the
feedback rewrite keeps student HTML/JavaScript inert and outputs bounded (item 5), unit by unit.
Each ingest case is a real folder or zip read by :func:`course_lib.grading.ingest.ingest`, the
function the pipeline calls; the same tricks go through the whole sandboxed pipeline in
tests/test_grading_safety.py."""
from __future__ import annotations

import os
import signal
import stat
import sys
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

from course_lib import grading
from course_lib.grading import feedback, ingest
from course_lib.grading.model import Status
from test_grading_pipeline import ASSIGNMENT, SOURCE, _info, _solved_release

NB = grading.notebook_name(ASSIGNMENT)
SECRET = "INSTRUCTOR-ONLY-SECRET-4711"


@pytest.fixture
def no_hang():
    """Fail (instead of hanging the suite) when ingest blocks on something."""
    def timeout(*_):
        raise TimeoutError("ingest blocked")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _honest(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(_solved_release(), folder / NB)
    return folder / NB


def _ingest(root: Path, work: Path) -> dict:
    return {s.submitted_as: s for s in ingest.ingest(root, _info(), work)}


def _refused(sub, *words: str) -> str:
    assert sub.unreadable is Status.REFUSED and sub.notebook is None, sub.problems
    text = " | ".join(sub.problems)
    assert all(w in text for w in words), text
    return text


def test_ingest_refuses_links_out_of_the_students_folder(tmp_path, no_hang):
    """Symlinks to the solution, a classmate, a non-JSON file, /dev/zero; linked folders."""
    sub = tmp_path / "submitted"
    alice = _honest(sub / "alice" / ASSIGNMENT)
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET + " not json")
    links = {"solution": SOURCE, "classmate": alice, "secret": secret, "zero": Path("/dev/zero"),
             "dangling": tmp_path / "nothing-here"}
    for name, target in links.items():
        (sub / name / ASSIGNMENT).mkdir(parents=True)
        (sub / name / ASSIGNMENT / NB).symlink_to(target)
    (sub / "linked_folder").mkdir()
    (sub / "linked_folder" / ASSIGNMENT).symlink_to(SOURCE.parent, target_is_directory=True)
    (sub / "linked_student").symlink_to(sub / "alice", target_is_directory=True)
    subs = _ingest(sub, tmp_path / "work")
    assert sorted(subs) == sorted([*links, "alice", "linked_folder", "linked_student"])
    assert subs["alice"].unreadable is None and subs["alice"].notebook.is_file()
    for name in ("solution", "classmate", "secret", "zero"):
        assert SECRET not in _refused(subs[name], "symbolic link", "outside")
    _refused(subs["dangling"], "broken symbolic link")
    _refused(subs["linked_folder"], "assignment folder is a symbolic link")
    _refused(subs["linked_student"], "student folder is a symbolic link")


def test_ingest_follows_a_link_inside_the_students_own_folder(tmp_path):
    folder = tmp_path / "in" / "erin" / ASSIGNMENT
    _honest(folder / "drafts")
    (folder / NB).symlink_to(Path("drafts") / NB)
    (sub,) = ingest.ingest(tmp_path / "in", _info(), tmp_path / "work")
    assert sub.unreadable is None and sub.notebook.is_file()


def test_ingest_refuses_fifos_devices_and_sockets_without_opening_them(tmp_path, no_hang,
                                                                       monkeypatch):
    import socket

    sub = tmp_path / "submitted"
    for name in ("fifo", "sock"):
        (sub / name / ASSIGNMENT).mkdir(parents=True)
    os.mkfifo(sub / "fifo" / ASSIGNMENT / NB)  # opening it to read would block forever
    server = socket.socket(socket.AF_UNIX)
    # Bound by a relative name: a socket's path may not exceed 107 bytes (pytest's tmp_path can).
    monkeypatch.chdir(sub / "sock" / ASSIGNMENT)
    server.bind(NB)
    monkeypatch.undo()
    _honest(sub / "zoe" / ASSIGNMENT)
    subs = _ingest(sub, tmp_path / "work")
    _refused(subs["fifo"], "named pipe", "not opened")
    _refused(subs["sock"], "socket")
    assert subs["zoe"].notebook.is_file()
    server.close()


def test_ingest_refuses_a_notebook_over_the_size_limit_before_reading(tmp_path):
    folder = tmp_path / "in" / "huge" / ASSIGNMENT
    folder.mkdir(parents=True)
    with open(folder / NB, "wb") as f:  # sparse: no disk used, but stat says 65 MiB
        f.truncate(ingest.MAX_NOTEBOOK_BYTES + 2**20)
    (sub,) = ingest.ingest(tmp_path / "in", _info(), tmp_path / "work")
    _refused(sub, "MiB limit")


def test_ingest_refuses_a_notebook_hard_linked_out_of_the_folder(tmp_path):
    """Decision: refused (its other name may be anyone's file), unless every name of it lies in
    the student's own folder."""
    sub = tmp_path / "submitted"
    outside = tmp_path / "solution-copy.ipynb"
    nbformat.write(_solved_release(), outside)
    (sub / "hard" / ASSIGNMENT).mkdir(parents=True)
    os.link(outside, sub / "hard" / ASSIGNMENT / NB)
    own = _honest(sub / "own" / ASSIGNMENT)
    os.link(own, own.parent / "backup.ipynb")
    subs = _ingest(sub, tmp_path / "work")
    _refused(subs["hard"], "hard-linked")
    assert subs["own"].unreadable is None and subs["own"].notebook.is_file()


def test_ingest_takes_a_name_of_any_length(tmp_path):
    """A 250-character folder name (the file system's limit is 255 bytes) makes no path too
    long: its row is there and its notebook is gradable; the original name is kept."""
    name = "Zoë " + "x" * 246  # 250 characters, 251 bytes
    _honest(tmp_path / "in" / name / ASSIGNMENT)
    _honest(tmp_path / "in" / "zed" / ASSIGNMENT)
    subs = _ingest(tmp_path / "in", tmp_path / "work")
    assert subs[name].notebook.is_file() and subs["zed"].notebook.is_file()
    assert len(subs[name].notebook.name) < 100


def test_ingest_refuses_only_the_entry_of_a_bad_zip_member(tmp_path):
    """Traversal, absolute path, a symlink member: that student's entry is refused (with the
    reason), the classmates are ingested, and nothing is written outside."""
    archive = tmp_path / "export.zip"
    text = nbformat.writes(_solved_release())
    link = zipfile.ZipInfo(f"export/carol/{ASSIGNMENT}/{NB}")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(f"export/alice/{ASSIGNMENT}/{NB}", text)
        zf.writestr(f"export/bob/{ASSIGNMENT}/../../../../escaped.ipynb", text)
        zf.writestr("/abs/dave_1_ex01_standard.ipynb", text)
        zf.writestr(link, str(SOURCE))
        zf.writestr(f"export/frank/{ASSIGNMENT}/{NB}", text)
        zf.writestr(f"export/frank/{ASSIGNMENT}/notes.txt", "fine")
    subs = _ingest(archive, tmp_path / "work")
    assert not list(tmp_path.glob("**/escaped.ipynb"))
    assert subs["alice"].notebook.is_file() and subs["frank"].notebook.is_file()
    _refused(subs["carol"], "symbolic link")
    _refused(subs["bob"], "'..'")
    refused = {n: s for n, s in subs.items() if s.unreadable is Status.REFUSED}
    texts = " ".join(p for s in refused.values() for p in s.problems)
    assert "'..'" in texts and "absolute path" in texts
    assert len(subs) == len(set(s.student for s in subs.values()))


# ----------------------------------------------------------------------------- feedback (item 5)
class _Markup(HTMLParser):
    """The tags, attributes and script bodies a browser would see."""

    def __init__(self):
        super().__init__()
        self.tags, self.attrs, self.links, self.scripts, self._in = [], [], [], [], False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [k for k, _ in attrs]
        self.links += [v.strip().lower() for k, v in attrs if k in ("href", "src") and v]
        self._in = tag == "script"

    def handle_data(self, data):
        if self._in:
            self.scripts.append(data)

    def handle_endtag(self, tag):
        self._in = False


def _hostile_outputs() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("x")
    code.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="y" * 5_000_000),
        nbformat.v4.new_output("display_data", data={
            "text/html": "<script>window.PWNED=1</script><img src=x onerror=alert(1)>"}),
        nbformat.v4.new_output("display_data", data={
            "application/javascript": "window.PWNED=2", "text/plain": "<js object>"}),
        nbformat.v4.new_output("display_data", data={"image/png": '"><script>bad</script>'}),
        nbformat.v4.new_output("error", ename="E", evalue="v" * 10**6,
                               traceback=["t" * 10**6] * 3),
    ]
    md = nbformat.v4.new_markdown_cell(
        "Hi <script>window.PWNED=3</script> <img src=x onerror=alert(2)> "
        "[a](javascript:alert(3)) [b]( JaVaScRiPt:alert(4)) &#106;avascript")
    raw = nbformat.v4.new_raw_cell("<script>window.PWNED=4</script>",
                                   metadata={"format": "text/html"})
    nb.cells = [code, md, raw]
    return nb


def test_ingest_a_class_of_one_student_folder_is_that_student(tmp_path):
    """``<student>/<notebook>.ipynb`` with one student: that student (not a zip's wrapper folder
    whose notebook name is read as an LMS file ``<student>_...``), renamed notebook or not; and
    one student in nbgrader's layout."""
    _honest(tmp_path / "one" / "ada_lovelace")
    renamed = tmp_path / "renamed" / "grace"
    renamed.mkdir(parents=True)
    nbformat.write(_solved_release(), renamed / "my copy.ipynb")
    _honest(tmp_path / "nbgrader" / "submitted" / "alan" / ASSIGNMENT)
    for root, name in (("one", "ada_lovelace"), ("renamed", "grace"), ("nbgrader", "alan")):
        subs = _ingest(tmp_path / root, tmp_path / f"work-{root}")
        assert list(subs) == [name], (root, list(subs))
        assert subs[name].notebook is not None and subs[name].notebook.is_file()


def test_ingest_a_zip_wrapping_student_folders_reads_every_student(tmp_path):
    """A zip whose one top-level folder holds the student folders, each with its notebook
    directly inside (or in nbgrader's assignment folder): every student is read."""
    archive = tmp_path / "class.zip"
    text = nbformat.writes(_solved_release())
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(f"class/alice/{NB}", text)
        zf.writestr("class/bob/renamed.ipynb", text)
        zf.writestr(f"class/carol/{ASSIGNMENT}/{NB}", text)
    subs = _ingest(archive, tmp_path / "work")
    assert sorted(subs) == ["alice", "bob", "carol"]
    assert all(s.notebook is not None and s.notebook.is_file() for s in subs.values())


def test_feedback_rewrite_makes_student_markup_text_and_bounds_outputs():
    nb = _hostile_outputs()
    feedback.make_safe(nb, {})
    text = nbformat.writes(nb)
    assert len(text) < feedback.MAX_NOTEBOOK_OUTPUT_CHARS + 50_000
    outputs = nb.cells[0].outputs
    assert all(set(o.get("data", {})) <= {"text/plain"} for o in outputs), outputs
    assert "window.PWNED=1" in outputs[1].data["text/plain"], "HTML is shown as its text"
    assert outputs[2].data["text/plain"] == "<js object>"
    assert "<script" not in nb.cells[1].source and "<img" not in nb.cells[1].source
    assert "](javascript:" not in nb.cells[1].source.lower().replace(" ", "")
    assert "&#106;" not in nb.cells[1].source
    assert nb.cells[2].cell_type == "markdown" and "<script" not in nb.cells[2].source


def test_feedback_rewrite_renders_through_nbconvert_without_active_markup():
    """Through nbconvert's HTML exporter (what nbgrader's feedback uses): no student script,
    no event-handler attribute, no javascript: link."""
    from nbconvert import HTMLExporter

    nb = _hostile_outputs()
    feedback.make_safe(nb, {})
    page, _ = HTMLExporter(template_name="classic").from_notebook_node(nb)
    markup = _Markup()
    markup.feed(page)
    assert not any("PWNED" in s for s in markup.scripts)
    assert not [a for a in markup.attrs if a.startswith("on")]
    assert not [v for v in markup.links if v.startswith(("javascript", "data:text"))]
    assert len(page) < 2 * feedback.MAX_NOTEBOOK_OUTPUT_CHARS + 1_000_000


def test_feedback_keeps_the_instructors_markdown_and_plain_text():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_markdown_cell("edited by the student <b>x</b>")
    cell.metadata["nbgrader"] = {"grade_id": "intro", "locked": True}
    nb.cells = [cell, nbformat.v4.new_markdown_cell("a < b and 3 <= 4, **bold**")]
    feedback.make_safe(nb, {"intro": "The <b>real</b> intro"})
    assert nb.cells[0].source == "The <b>real</b> intro"
    assert nb.cells[1].source == "a < b and 3 <= 4, **bold**"


def test_problem_texts_are_bounded():
    problems = feedback.clip_problems(["z" * 10**6] * 1000)
    assert len(problems) == feedback.MAX_PROBLEMS + 1
    assert sum(map(len, problems)) < 100_000


def test_sandboxed_code_sees_no_instructor_path(tmp_path):
    """The environment of a sandboxed program (kernel, re-check) names none of the folders the
    box hides: course, submissions, repository (issue 20: COURSE_AUDIT_PROTECTED carried them)."""
    from course_lib.grading import sandbox

    course, submitted = tmp_path / "my-course", tmp_path / "my-submissions"
    for folder in (course / "solutions", submitted):
        folder.mkdir(parents=True)
    box = sandbox.Sandbox.for_batch(tmp_path / "work", hide=[course, submitted],
                                    limits=sandbox.Limits(wall_s=60))
    scratch = box.new_scratch("env")
    out = tmp_path / "env.out"
    with open(out, "wb") as stdout:
        report = sandbox.run_sandboxed(
            box, [sys.executable, "-c", "import sys; sys.stdout.buffer.write("
                  "open('/proc/self/environ', 'rb').read())"],
            "env", writable={str(scratch): str(scratch)}, cwd=str(scratch), stdout=stdout)
    environ = out.read_bytes().decode(errors="replace")
    assert report.returncode == 0 and "COURSE_AUDIT_FD" in environ
    for hidden in (course, submitted, Path(__file__).resolve().parents[1]):
        assert str(hidden) not in environ, f"{hidden} reached the sandbox's environment"
