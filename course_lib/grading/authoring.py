"""Write the notebooks students open: nbgrader *source* notebooks (solutions/exNN_topic/exNN_topic.ipynb)
built from Python, their setup cells, and the chapters' Colab twins (book/chNN_topic.ipynb).

Instructors write an exercise as a list of cells; this module attaches the nbgrader metadata
(schema 3) so that ``nbgrader generate_assignment`` strips the solutions and hides the hidden tests.
Conventions every exercise follows:

* the first code cell (:func:`setup_cell`) pins the course_lib release the notebook is written for
  (installing it where it is missing or another release is installed, e.g. on Colab), then imports
  the exercise's checks *before* any student code runs, so the checks capture their PyTorch
  references first;
* test cells are one-line calls into ``course_lib.checks``, with hidden tests between
  ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS``;
* written answers are manually graded markdown cells (:func:`manual_answer`) whose model answer
  and rubric sit in the solution region, so only graders see them;
* notebooks are stored without outputs, with a python3 kernelspec.

The release number and the URLs come from one place each (:func:`publishing`): the version from
``course_lib/__init__.py``, the repository and site URLs from ``_config.yml``. After changing either,
``python -m course_lib.grading.authoring`` rewrites every setup cell, the chapter twins and the
releases; :func:`publishing_drift` (run by the tests) lists whatever is out of date.
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

from course_lib.grading.course import assignments, notebook_name, repo_root, run_nbgrader

KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def _meta(grade_id: str, *, grade: bool, solution: bool, locked: bool,
          points: float | None = None) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3,
            "solution": solution}
    if points is not None:
        meta["points"] = points
    return {"nbgrader": meta}


def markdown(grade_id: str, text: str) -> nbformat.NotebookNode:
    """Read-only instructions."""
    return nbformat.v4.new_markdown_cell(text.strip("\n"), metadata=_meta(
        grade_id, grade=False, solution=False, locked=True))


def readonly_code(grade_id: str, source: str) -> nbformat.NotebookNode:
    """Code the student runs but may not edit (imports, given data)."""
    return nbformat.v4.new_code_cell(source.strip("\n"), metadata=_meta(
        grade_id, grade=False, solution=False, locked=True))


# Where the book publishes the wheel, relative to the site's root (.github/workflows/book.yml).
WHEEL_FOLDER = "_static/wheels/"
# The chapters that get a Colab twin: book/chNN_topic.md -> book/chNN_topic.ipynb.
CHAPTER_GLOB = "book/ch[0-9][0-9]_*.md"


@dataclass(frozen=True)
class Publishing:
    """What a setup cell pins and where it installs from: the course's release and its URLs."""
    version: str
    repository_url: str  # https://github.com/OWNER/NAME
    site_url: str  # where the book is published, ending in "/"

    @property
    def wheel_name(self) -> str:
        return f"course_lib-{self.version}-py3-none-any.whl"

    @property
    def wheel_folders(self) -> tuple[str, str]:
        """The book's copy of the wheel first; the repository's release of that version second (it
        stays when the book moves on to a newer release)."""
        return (self.site_url + WHEEL_FOLDER,
                f"{self.repository_url}/releases/download/v{self.version}/")


def read_version(root: Path) -> str:
    """``__version__`` from ``root/course_lib/__init__.py``, read without importing it (as setuptools
    reads it for the wheel's metadata)."""
    init = Path(root) / "course_lib" / "__init__.py"
    for node in ast.parse(init.read_text()).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and getattr(node.targets[0], "id", None) == "__version__"):
            return ast.literal_eval(node.value)
    raise ValueError(f"{init} has no __version__ = '...' line")


def publishing(root: Path | None = None) -> Publishing:
    """The course's release (course_lib/__init__.py) and URLs (_config.yml: repository.url,
    html.baseurl) of the course repository at ``root`` (default: this checkout)."""
    import yaml  # the instructor's side only: a student's course_lib never reads _config.yml

    root = Path(root or repo_root())
    config = yaml.safe_load((root / "_config.yml").read_text())
    repository = config["repository"]["url"].rstrip("/")
    site = config["html"]["baseurl"]
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", repository):
        raise ValueError(f"_config.yml: repository.url {repository!r} is not https://github.com/OWNER/NAME")
    if not site.startswith("https://") or not site.endswith("/"):
        raise ValueError(f"_config.yml: html.baseurl {site!r} must be an https:// URL ending in '/'")
    return Publishing(read_version(root), repository, site)


_INSTALL = '''
# Setup: run this cell first. It makes sure this notebook runs with the release of the course's
# package, course_lib, that it was written for: where that release is missing (e.g. on Colab) or
# another one is installed, it installs it with pip.
COURSE_LIB_VERSION = "{version}"
import importlib, os, subprocess, sys


def course_lib_version():
    """The course_lib release this kernel imports (None where there is none)."""
    importlib.invalidate_caches()  # see what pip has just installed
    try:
        import course_lib
    except ImportError:
        return None
    return getattr(course_lib, "__version__", "unknown")


# While a notebook is graded (NBGRADER_EXECUTION is set) nothing is installed: the grader's is used.
if course_lib_version() != COURSE_LIB_VERSION and "NBGRADER_EXECUTION" not in os.environ:
    wheel = f"course_lib-{{COURSE_LIB_VERSION}}-py3-none-any.whl"
    # The wheel published with the book, else the repository's release (COURSE_LIB_WHEELS: other
    # folder URLs to install from instead, separated by spaces).
    folders = os.environ.get("COURSE_LIB_WHEELS", "").split() or [
        "{site_folder}",
        "{release_folder}"]
    if not any(subprocess.run([sys.executable, "-m", "pip", "install", "-q", folder + wheel]
                              ).returncode == 0 for folder in folders):
        raise RuntimeError(
            f"course_lib {{COURSE_LIB_VERSION}} could not be installed (is this computer offline?): "
            f"connect to the internet and run this cell again, or download {{folders[0] + wheel}} "
            f"elsewhere, copy it here and run `pip install {{wheel}}` in this notebook's environment.")
    # Forget the release imported before the install, so that the next import loads the new one.
    for name in [m for m in sys.modules if m.split(".")[0] == "course_lib"]:
        del sys.modules[name]
assert course_lib_version() == COURSE_LIB_VERSION, (
    f"this notebook needs course_lib {{COURSE_LIB_VERSION}} but imports {{course_lib_version()}}: "
    f"restart the kernel (on Colab: Runtime > Restart session) and run this cell again.")
import course_lib
print(f"Using course_lib {{course_lib.__version__}}, the release this notebook was written for.")
'''.strip("\n")
# The sentence every setup cell prints, as book/students.md quotes it.
VERSION_LINE = "Using course_lib {version}, the release this notebook was written for."


def install_source(info: Publishing | None = None) -> str:
    """The code that opens every setup cell: pin, install if needed, check, print the version."""
    info = info or publishing()
    site_folder, release_folder = info.wheel_folders
    return _INSTALL.format(version=info.version, site_folder=site_folder,
                           release_folder=release_folder)


def _checks_import(assignment: str) -> str:
    return f"import course_lib.checks.{assignment} as checks"


def setup_cell(assignment: str, extra: str = "", info: Publishing | None = None
               ) -> nbformat.NotebookNode:
    """First cell: install the pinned course_lib where needed (Colab), then import the checks.

    Importing the checks before any student cell runs lets them capture their PyTorch references
    first (see course_lib.checks). ``extra``: the exercise's own imports and data, after that."""
    source = f"{install_source(info)}\n{_checks_import(assignment)}\n{extra.strip(chr(10))}"
    return readonly_code("setup", source.rstrip("\n"))


_GLUE_FALLBACK = '''
# The book places computed numbers in its text with myst_nb's glue(); outside the book (e.g. on
# Colab) glue() shows each value here instead, under the name the text refers to.
try:
    import myst_nb
except ImportError:
    import types
    from IPython.display import display as show

    def glue(name, variable, display=True):
        print(f"{name}:")
        show(variable)

    sys.modules["myst_nb"] = types.ModuleType("myst_nb")
    sys.modules["myst_nb"].glue = glue
'''.strip("\n")


def chapter_setup_cell(info: Publishing | None = None) -> nbformat.NotebookNode:
    """First cell of a chapter's Colab twin: the pinned course_lib, and glue() outside the book."""
    cell = nbformat.v4.new_code_cell(f"{install_source(info)}\n{_GLUE_FALLBACK}")
    cell["id"] = "setup"
    return cell


# A chapter that reads the book's committed measurements (book/data) names them through this.
DATA_MARKER = "DATA = next("


def chapter_data_files(chapter_md: Path) -> list[Path]:
    """The committed measurements (``book/data``) a chapter reads: named in its text, or through
    ``bench.REFERENCE_GPU_FILE``."""
    text = Path(chapter_md).read_text()
    if DATA_MARKER not in text:
        return []
    named = []
    if "REFERENCE_GPU_FILE" in text:
        from course_lib.bench import REFERENCE_GPU_FILE
        named.append(REFERENCE_GPU_FILE)
    return [p for p in sorted((Path(chapter_md).parent / "data").glob("*.json"))
            if p.name in text or p.name in named]


def chapter_data_cell(files: list[Path]) -> nbformat.NotebookNode:
    """A cell that writes the book's committed measurements into ``data/`` where they are not
    (Colab opens the twin alone, without the book's folder; no network is needed)."""
    files = {p.name: p.read_text() for p in files}
    cell = nbformat.v4.new_code_cell(
        "# The committed measurements this chapter reads (book/data in the repository), for where\n"
        "# the twin runs without the book's folder (Colab). Generated with the twin.\n"
        "import pathlib\n"
        "pathlib.Path(\"data\").mkdir(exist_ok=True)\n"
        f"for name, text in {files!r}.items():\n"
        "    if not pathlib.Path(\"data\", name).exists():\n"
        "        pathlib.Path(\"data\", name).write_text(text)\n")
    cell["id"] = "data"
    return cell


def chapter_twin(chapter_md: Path, info: Publishing | None = None) -> nbformat.NotebookNode:
    """The ``.ipynb`` twin of a MyST chapter, for Colab (which opens only .ipynb): its cells as
    jupytext reads them, after :func:`chapter_setup_cell` (and, for a chapter that reads the
    committed measurements, :func:`chapter_data_cell`), with stable ids and no outputs."""
    import jupytext

    chapter = jupytext.read(chapter_md)
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": KERNELSPEC,
                                            "language_info": {"name": "python"}})
    nb.cells = [chapter_setup_cell(info)]
    nb.cells[0].source = (f"# Generated from {Path(chapter_md).name} (the book's chapter) by "
                          f"`python -m course_lib.grading.authoring`: edit that file, not this one.\n"
                          + nb.cells[0].source)
    if chapter_data_files(chapter_md):
        nb.cells.append(chapter_data_cell(chapter_data_files(chapter_md)))
    for i, cell in enumerate(chapter.cells, start=1):
        cell["id"] = f"cell-{i}"
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def _setup_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "setup"]


def refreshed_setup_source(assignment: str, source: str, info: Publishing | None = None) -> str:
    """The setup cell ``source`` rewritten from :func:`setup_cell`, keeping its exercise-specific
    part (everything after the line that imports the checks)."""
    line = _checks_import(assignment)
    if line not in source.splitlines():
        raise ValueError(f"{assignment}: the setup cell has no line `{line}`")
    extra = source.split(line + "\n", 1)[1] if line + "\n" in source else ""
    return setup_cell(assignment, extra, info).source


def publishing_drift(root: Path | None = None, info: Publishing | None = None) -> list[str]:
    """What is out of date with the release and URLs (empty when nothing is): each solution's setup
    cell, each release's setup cell, and each chapter's Colab twin."""
    root = Path(root or repo_root())
    info = info or publishing(root)
    stale = []
    for assignment in assignments(root):
        for folder in ("solutions", "exercises"):
            path = root / folder / assignment / notebook_name(assignment)
            if not path.exists():
                stale.append(f"{path.relative_to(root)}: missing")
                continue
            cells = _setup_cells(nbformat.read(path, as_version=4))
            if len(cells) != 1:
                stale.append(f"{path.relative_to(root)}: {len(cells)} setup cells, expected 1")
            elif cells[0].source != refreshed_setup_source(assignment, cells[0].source, info):
                stale.append(f"{path.relative_to(root)}: setup cell")
    for chapter in sorted(root.glob(CHAPTER_GLOB)):
        twin = chapter.with_suffix(".ipynb")
        if not twin.exists() or nbformat.read(twin, as_version=4) != chapter_twin(chapter, info):
            stale.append(f"{twin.relative_to(root)}: Colab twin (only chapters changed? "
                         f"`python -m course_lib.grading.authoring --no-releases` is enough)")
    for twin in sorted(root.glob(CHAPTER_GLOB.replace(".md", ".ipynb"))):
        if not twin.with_suffix(".md").exists():
            stale.append(f"{twin.relative_to(root)}: its chapter is gone")
    return stale


def refresh(root: Path | None = None, releases: bool = True) -> list[Path]:
    """Rewrite every solution's setup cell and every chapter twin from the current release and URLs
    (only the setup cells change, so concurrent edits to other cells merge cleanly); then, with
    ``releases``, regenerate exercises/ with nbgrader. Returns the files written."""
    root = Path(root or repo_root())
    info = publishing(root)
    written = []
    for assignment in assignments(root):
        path = root / "solutions" / assignment / notebook_name(assignment)
        nb = nbformat.read(path, as_version=4)
        for cell in _setup_cells(nb):
            new = refreshed_setup_source(assignment, cell.source, info)
            if new != cell.source:
                cell.source = new
                written.append(path)
        if path in written:
            nbformat.write(nb, path)
    for chapter in sorted(root.glob(CHAPTER_GLOB)):
        twin, nb = chapter.with_suffix(".ipynb"), chapter_twin(chapter, info)
        if not twin.exists() or nbformat.read(twin, as_version=4) != nb:
            nbformat.write(nb, twin)
            written.append(twin)
    for twin in sorted(root.glob(CHAPTER_GLOB.replace(".md", ".ipynb"))):
        if not twin.with_suffix(".md").exists():
            twin.unlink()
            written.append(twin)
    if releases:  # one nbgrader process for all of them: its start-up is the slow part
        run_nbgrader(["generate_assignment", "ex*", "--force"], cwd=root)
    return written


def solution(grade_id: str, source: str) -> nbformat.NotebookNode:
    """Student's code cell. Wrap the answer in ### BEGIN SOLUTION / ### END SOLUTION."""
    return nbformat.v4.new_code_cell(source.strip("\n"), metadata=_meta(
        grade_id, grade=False, solution=True, locked=False))


def tests(grade_id: str, points: float, visible: str, hidden: str = "") -> nbformat.NotebookNode:
    """Autograded test cell: visible lines, then hidden ones (removed from the release)."""
    source = visible.strip("\n")
    if hidden.strip():
        source += "\n### BEGIN HIDDEN TESTS\n" + hidden.strip("\n") + "\n### END HIDDEN TESTS"
    return nbformat.v4.new_code_cell(source, metadata=_meta(
        grade_id, grade=True, solution=False, locked=True, points=points))


def manual_answer(grade_id: str, points: float, model_answer: str,
                  rubric: str) -> nbformat.NotebookNode:
    """A manually graded written answer (nbgrader's "Manually graded answer"): a markdown cell
    the student edits. In the release its solution region becomes "YOUR ANSWER HERE"; in the
    source it holds the model answer and the grading rubric (put the question in the markdown
    cell before it: that one is released)."""
    if not points > 0:
        raise ValueError(f"a manually graded answer needs points > 0, got {points!r}")
    source = ("### BEGIN SOLUTION\n**Model answer.** " + model_answer.strip() +
              f"\n\n**Rubric ({points:g} points).**\n\n" + rubric.strip() + "\n### END SOLUTION")
    return nbformat.v4.new_markdown_cell(source, metadata=_meta(
        grade_id, grade=True, solution=True, locked=False, points=points))


def write_notebook(path: Path, cells: list[nbformat.NotebookNode]) -> Path:
    """Validate and write a source notebook (no outputs, python3 kernel)."""
    ids = [c.metadata["nbgrader"]["grade_id"] for c in cells if "nbgrader" in c.metadata]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise ValueError(f"duplicate grade_id(s): {sorted(duplicates)}")
    nb = nbformat.v4.new_notebook(cells=cells, metadata={
        "kernelspec": KERNELSPEC,
        "language_info": {"name": "python"},
    })
    for i, cell in enumerate(nb.cells):
        cell["id"] = cell.metadata.get("nbgrader", {}).get("grade_id", f"cell-{i}")
    nbformat.validate(nb)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.grading.authoring",
        description="Rewrite every exercise's setup cell and every chapter's Colab twin from the "
                    "release (course_lib/__init__.py) and URLs (_config.yml), then regenerate "
                    "exercises/ with nbgrader. Run it at the repository root after changing either.")
    parser.add_argument("--root", type=Path, default=None, help="the course repository (default: this one)")
    parser.add_argument("--no-releases", action="store_true", help="skip nbgrader generate_assignment")
    parser.add_argument("--check", action="store_true",
                        help="only list what is out of date (exit 1 if anything is)")
    args = parser.parse_args(argv)
    if args.check:
        stale = publishing_drift(args.root)
        print("\n".join(stale) or "everything is current")
        return 1 if stale else 0
    for path in refresh(args.root, releases=not args.no_releases):
        print("wrote", path)
    info = publishing(args.root)
    print(f"course_lib {info.version}: setup cells and twins are current"
          + ("" if args.no_releases else "; exercises/ regenerated"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
