"""course_lib as students get it: one release number and one set of URLs (copies checked for drift),
a wheel with complete metadata, and setup cells that install exactly that release.

The "Colab simulation" at the end builds the wheel, serves it from ``python -m http.server`` on
127.0.0.1, and runs the released notebooks in a new virtual environment that has torch and Jupyter
but no course_lib (nor myst_nb, like Colab), first with no course_lib, then with an older one.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import site
import socket
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import nbformat
import pytest
import yaml

import course_lib
from conftest import ASSIGNMENTS, REPO
from course_lib.grading import authoring, notebook_name

INFO = authoring.publishing(REPO)
CONFIG = yaml.safe_load((REPO / "_config.yml").read_text())
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
OLD_VERSION = "0.0.1"


# --- one version, one set of URLs ---------------------------------------------------------------

def test_the_release_number_has_one_source():
    """pyproject.toml takes its version from course_lib/__init__.py, which authoring reads too."""
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "course_lib.__version__"}
    assert INFO.version == course_lib.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", INFO.version), "a plain release number, e.g. 0.2.0"


def test_urls_have_one_source():
    """_config.yml holds the repository and site URLs; the site is that repository's GitHub Pages,
    where .github/workflows/book.yml publishes the book; pyproject's URLs are the same."""
    assert INFO.repository_url == CONFIG["repository"]["url"]
    owner, name = INFO.repository_url.removeprefix("https://github.com/").split("/")
    assert INFO.site_url == f"https://{owner.lower()}.github.io/{name}/"
    urls = PYPROJECT["project"]["urls"]
    assert urls["Source"] == INFO.repository_url and urls["Issues"] == INFO.repository_url + "/issues"
    assert urls["Homepage"] == urls["Documentation"] == INFO.site_url


@pytest.mark.parametrize("doc", ["README.md", "book/students.md"])
def test_documents_quote_the_configured_urls(doc):
    """Every repository, Pages or Colab URL in the students' page and the README is the configured
    one, and both name it."""
    text = (REPO / doc).read_text()
    repo_path = INFO.repository_url.removeprefix("https://github.com/")
    assert INFO.repository_url in text
    for url in re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", text):
        assert url == INFO.repository_url, f"{doc}: {url}"
    for url in re.findall(r"https://[\w-]+\.github\.io/[\w.-]+/?", text):
        assert INFO.site_url.startswith(url), f"{doc}: {url}"
    for path in re.findall(r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)", text):
        assert path == repo_path, f"{doc}: {path}"
    for folder in re.findall(r"^cd ([\w.-]+)\s*$", text, flags=re.M):
        assert folder == repo_path.split("/")[1], f"{doc}: cd {folder}"
    # Releases named in the text (the version line, the wheel's file name) are the current one.
    for version in re.findall(r"course_lib[- ](\d+\.\d+\.\d+)", text):
        assert version == INFO.version, f"{doc}: course_lib {version}"


def test_setup_cells_and_twins_are_current():
    """Every solution's and release's setup cell, and every chapter's Colab twin, is what authoring
    makes from the current release and URLs."""
    stale = authoring.publishing_drift(REPO)
    assert not stale, ("out of date (run `python -m course_lib.grading.authoring` at the repository "
                       "root and commit the result):\n" + "\n".join(stale))


def test_every_exercise_and_chapter_pins_the_release():
    version_line = f'COURSE_LIB_VERSION = "{INFO.version}"'
    notebooks = [REPO / folder / a / notebook_name(a) for a in ASSIGNMENTS
                 for folder in ("solutions", "exercises")]
    notebooks += sorted(p.with_suffix(".ipynb") for p in REPO.glob(authoring.CHAPTER_GLOB))
    assert len(notebooks) >= 2 * len(ASSIGNMENTS) + 8
    for path in notebooks:
        first_code = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        assert version_line in first_code.source, path
        assert INFO.site_url + authoring.WHEEL_FOLDER in first_code.source, path


def _course_copy(dest: Path) -> Path:
    """What authoring reads and writes: a throw-away copy of the course."""
    for folder in ("solutions", "exercises"):
        shutil.copytree(REPO / folder, dest / folder,
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    (dest / "book").mkdir()
    for chapter in REPO.glob(authoring.CHAPTER_GLOB):
        shutil.copy(chapter, dest / "book")
        shutil.copy(chapter.with_suffix(".ipynb"), dest / "book")
    (dest / "course_lib").mkdir()
    for name in ("course_lib/__init__.py", "_config.yml", "nbgrader_config.py"):
        shutil.copy(REPO / name, dest / name)
    return dest


def _set_version(root: Path, version: str) -> None:
    init = root / "course_lib" / "__init__.py"
    text, n = re.subn(r'^__version__ = "[^"]*"$', f'__version__ = "{version}"', init.read_text(),
                      flags=re.M)
    assert n == 1
    init.write_text(text)


def _setup_sources(root: Path, folder: str) -> dict[str, str]:
    return {a: next(c.source for c in nbformat.read(root / folder / a / notebook_name(a),
                                                      as_version=4).cells
                    if c.metadata.get("nbgrader", {}).get("grade_id") == "setup")
            for a in ASSIGNMENTS}


def test_changing_the_version_makes_every_copy_stale_until_refreshed(tmp_path):
    """Bump the version in its one place: the drift check lists every setup cell and twin; the
    refresh rewrites only the pinned version in each of them; the releases stay stale until
    nbgrader regenerates them (test_version_change_reaches_the_releases)."""
    course = _course_copy(tmp_path)
    before = _setup_sources(course, "solutions")
    _set_version(course, "9.9.9")
    stale = authoring.publishing_drift(course)
    assert len([s for s in stale if s.endswith("setup cell")]) == 2 * len(ASSIGNMENTS)
    assert len([s for s in stale if ": Colab twin" in s]) == len(list(
        course.glob(authoring.CHAPTER_GLOB)))
    authoring.refresh(course, releases=False)
    after = _setup_sources(course, "solutions")
    for assignment in ASSIGNMENTS:
        assert 'COURSE_LIB_VERSION = "9.9.9"' in after[assignment]
        assert after[assignment].replace("9.9.9", INFO.version) == before[assignment]
    assert sorted(authoring.publishing_drift(course)) == sorted(
        f"exercises/{a}/{notebook_name(a)}: setup cell" for a in ASSIGNMENTS)


def test_changing_the_repository_url_reaches_every_setup_cell(tmp_path):
    course = _course_copy(tmp_path)
    config = course / "_config.yml"
    config.write_text(config.read_text().replace(INFO.repository_url,
                                                 "https://github.com/another-school/convs")
                      .replace(INFO.site_url, "https://another-school.github.io/convs/"))
    assert len(authoring.publishing_drift(course)) == 2 * len(ASSIGNMENTS) + len(
        list(course.glob(authoring.CHAPTER_GLOB)))
    authoring.refresh(course, releases=False)
    for source in _setup_sources(course, "solutions").values():
        assert "https://another-school.github.io/convs/_static/wheels/" in source
        assert "https://github.com/another-school/convs/releases/download/v" in source
        assert "efficient-convolutions" not in source


@pytest.mark.slow
def test_version_change_reaches_the_releases(tmp_path):
    """The command the README gives regenerates the releases too: then nothing is stale and every
    release pins the new version."""
    course = _course_copy(tmp_path)
    _set_version(course, "9.9.9")
    proc = subprocess.run([sys.executable, "-m", "course_lib.grading.authoring", "--root", str(course)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "course_lib 9.9.9: setup cells and twins are current; exercises/ regenerated" in proc.stdout
    assert authoring.publishing_drift(course) == []
    for source in _setup_sources(course, "exercises").values():
        assert 'COURSE_LIB_VERSION = "9.9.9"' in source


# --- Binder ------------------------------------------------------------------------------------

def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if match:
            pins[match[1].lower()] = match[2]
    return pins


def test_binder_environment_matches_the_course_pins():
    """repo2docker builds .binder/: the course's pins, PyTorch's CPU build of the same release
    (small, so Binder starts fast), and the repository's course_lib installed by postBuild."""
    binder, course = _pins(REPO / ".binder" / "requirements.txt"), _pins(REPO / "requirements.txt")
    assert binder.pop("torch") == course["torch"].split("+")[0] + "+cpu"
    assert "https://download.pytorch.org/whl/cpu" in (REPO / ".binder" / "requirements.txt").read_text()
    for name in ("numpy", "matplotlib", "scikit-learn", "tqdm", "ipykernel"):
        assert name in binder, f"{name} missing from .binder/requirements.txt"
    for name, version in binder.items():
        assert course.get(name) == version, f"{name}=={version} but requirements.txt has {course.get(name)}"
    post_build = REPO / ".binder" / "postBuild"
    assert os.access(post_build, os.X_OK), "postBuild must be executable"
    assert re.search(r"pip install .*--no-deps \.$", post_build.read_text(), flags=re.M)
    mode = subprocess.run(["git", "ls-files", "-s", ".binder/postBuild"], cwd=REPO,
                          capture_output=True, text=True).stdout
    assert not mode or mode.startswith("100755"), f"postBuild is committed without its x bit: {mode}"


# --- the students' page --------------------------------------------------------------------------

def test_students_page_walks_through_the_setup_in_order():
    """Open on Colab (or download), run the setup cell, what the version line means, what to do when
    it cannot install: in that order, quoting the line the setup cell really prints."""
    text = (REPO / "book" / "students.md").read_text()
    line = authoring.VERSION_LINE.format(version=INFO.version)
    steps = ["Colab", "download", "setup cell", line, "could not be installed"]
    positions = [text.find(s) for s in steps]
    assert -1 not in positions, dict(zip(steps, positions))
    assert positions == sorted(positions), dict(zip(steps, positions))
    # The failure the page explains is the one the cell raises.
    assert "could not be installed" in authoring.install_source(INFO)


# --- the wheel -----------------------------------------------------------------------------------

def _build(source: Path, out: Path, version: str | None = None, drop: list[str] = ()) -> Path:
    """Build course_lib's sdist and wheel (the wheel from the sdist, as `python -m build` does) from a
    copy of the package, optionally with another version or without some modules."""
    tree = out / "src"
    shutil.copytree(source / "course_lib", tree / "course_lib",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(source / name, tree / name)
    if version:
        _set_version(tree, version)
    for module in drop:
        (tree / module).unlink()
    # No isolation: the build uses the installed setuptools (no network at test time).
    proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out),
                           str(tree)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    return _build(REPO, tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def wheel(dist) -> Path:
    return dist / INFO.wheel_name


@pytest.mark.slow
def test_wheel_and_sdist_pass_twine_check(dist):
    files = sorted(str(p) for p in dist.iterdir() if p.is_file())
    assert [Path(f).name for f in files] == [INFO.wheel_name, f"course_lib-{INFO.version}.tar.gz"]
    proc = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *files],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_wheel_metadata_is_complete(wheel):
    with zipfile.ZipFile(wheel) as zf:
        meta_text = zf.read(f"course_lib-{INFO.version}.dist-info/METADATA").decode()
        names = set(zf.namelist())
    head = meta_text.split("\n\n", 1)[0]
    fields: dict[str, list[str]] = {}
    for line in head.splitlines():
        key, _, value = line.partition(": ")
        fields.setdefault(key, []).append(value)
    assert fields["Version"] == [course_lib.__version__]
    assert fields["License-Expression"] == ["MIT"]
    assert fields["Requires-Python"] == [">=3.10"]
    assert fields["Description-Content-Type"] == ["text/markdown"]
    assert "# Efficient Convolutions" in meta_text.split("\n\n", 1)[1]  # the README
    assert f"Source, {INFO.repository_url}" in fields["Project-URL"]
    assert f"Homepage, {INFO.site_url}" in fields["Project-URL"]
    assert any(c.startswith("Programming Language :: Python :: 3.") for c in fields["Classifier"])
    requires = [r for r in fields["Requires-Dist"] if "extra ==" not in r]
    torch_req = [r for r in requires if re.match(r"torch\b", r)]
    # A lower bound only: Colab's CUDA build of torch must satisfy it (never ==, never an upper bound).
    assert torch_req == ["torch>=2.1"], torch_req
    assert f"course_lib-{INFO.version}.dist-info/licenses/course_lib/LICENSE" in names


@pytest.mark.slow
def test_wheel_holds_every_module_of_the_package(wheel):
    """All of course_lib, checks and grading included, and nothing else."""
    with zipfile.ZipFile(wheel) as zf:
        packaged = {n for n in zf.namelist() if not n.startswith(f"course_lib-{INFO.version}.dist-info/")}
    expected = {p.relative_to(REPO).as_posix() for p in (REPO / "course_lib").rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert packaged == expected
    assert {"course_lib/checks/__init__.py", "course_lib/grading/authoring.py"} <= packaged
    assert {f"course_lib/checks/{a}.py" for a in ASSIGNMENTS} <= packaged


# --- the Colab simulation ------------------------------------------------------------------------

# Colab has torch, Jupyter, numpy, matplotlib, scikit-learn, tqdm, but not the book's tools: the
# simulated environment hides these (and course_lib is absent until a setup cell installs it).
_HIDDEN_ON_COLAB = ("myst_nb", "jupyter_book", "nbgrader")
_HIDER = f'''
import importlib.abc, sys
class HideBookTools(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {_HIDDEN_ON_COLAB!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, HideBookTools())
'''


class Venv:
    """A new virtual environment whose Python sees the system's packages (torch, ipykernel, ...) as a
    plain path, so that no install needs the network, but not course_lib: the editable install of
    the repository is a .pth finder in the system's site-packages, and .pth files inside a folder
    added by a .pth line are not processed."""

    def __init__(self, root: Path):
        self.root = root
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True,
                       timeout=120)
        self.python = root / "bin" / "python"
        self.site_packages = Path(subprocess.run(
            [self.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True).stdout.strip())
        system = [p for p in site.getsitepackages() + [site.getusersitepackages()] if Path(p).is_dir()]
        (self.site_packages / "system_packages.pth").write_text("\n".join(system) + "\n")
        (self.site_packages / "hide_book_tools.py").write_text(_HIDER)
        (self.site_packages / "hide_book_tools.pth").write_text("import hide_book_tools\n")
        # A kernelspec that starts this environment's Python.
        self.kernels = root / "share" / "jupyter" / "kernels"
        spec = self.kernels / "colab-sim"
        spec.mkdir(parents=True)
        spec.joinpath("kernel.json").write_text(json.dumps({
            "argv": [str(self.python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Colab simulation", "language": "python"}))

    def env(self, **extra: str) -> dict:
        """The environment of the kernel (no PYTHONPATH: that would show the working copy)."""
        # Matplotlib's default backend in a kernel is inline (figures become outputs), as on Colab.
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "NBGRADER_EXECUTION", "JUPYTER_PATH", "MPLBACKEND")}
        # pip never reaches an index: the wheel's dependencies are all here already.
        env.update(PIP_NO_INDEX="1", PIP_RETRIES="0", **extra)
        return env

    def run(self, code: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.python, "-c", code], capture_output=True, text=True,
                              cwd=self.root, env=self.env(**env), timeout=600)

    def remove_course_lib(self) -> None:
        for path in self.site_packages.glob("course_lib*"):
            shutil.rmtree(path)

    def install(self, wheel: Path) -> None:
        self.remove_course_lib()
        proc = subprocess.run([self.python, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                               str(wheel)], capture_output=True, text=True, env=self.env())
        assert proc.returncode == 0, proc.stderr

    def course_lib_version(self) -> str | None:
        proc = self.run("import course_lib; print(course_lib.__version__, course_lib.__file__)")
        if proc.returncode:
            assert "No module named 'course_lib'" in proc.stderr, proc.stderr
            return None
        version, file = proc.stdout.split()
        assert Path(file).is_relative_to(self.site_packages), file
        return version

    def execute(self, nb: nbformat.NotebookNode, workdir: Path, **env: str) -> nbformat.NotebookNode:
        """Run every cell in a new kernel of this environment, as a student's Run all would."""
        from jupyter_client.kernelspec import KernelSpecManager
        from jupyter_client.manager import AsyncKernelManager
        from nbclient import NotebookClient

        workdir.mkdir(parents=True, exist_ok=True)
        km = AsyncKernelManager(kernel_name="colab-sim",
                                kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(self.kernels)]))
        client = NotebookClient(nb, km=km, timeout=600, resources={"metadata": {"path": str(workdir)}})
        client.execute(env=self.env(**env))
        return nb


class WheelServer:
    """``python -m http.server`` on 127.0.0.1, serving wheels laid out as the book publishes them."""

    def __init__(self, root: Path, wheels: list[Path]):
        folder = root / authoring.WHEEL_FOLDER
        folder.mkdir(parents=True)
        for wheel in wheels:
            shutil.copy(wheel, folder)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.log = root.parent / "http.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
             str(root)], stdout=subprocess.DEVNULL, stderr=self.log.open("w"))
        self.url = f"http://127.0.0.1:{port}/{authoring.WHEEL_FOLDER}"
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline, "http.server did not start"
                time.sleep(0.1)

    def downloads(self) -> list[str]:
        return re.findall(r'"GET (\S+) HTTP/[\d.]+" 200', self.log.read_text())

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def old_wheel(tmp_path_factory) -> Path:
    """A chapter-1-era course_lib: an older version whose checks stop at ex01."""
    later = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "course_lib" / "checks").glob("ex*.py")
                   if not p.name.startswith("ex01_"))
    out = _build(REPO, tmp_path_factory.mktemp("old"), version=OLD_VERSION, drop=later)
    return out / f"course_lib-{OLD_VERSION}-py3-none-any.whl"


@pytest.fixture(scope="module")
def server(tmp_path_factory, wheel):
    server = WheelServer(tmp_path_factory.mktemp("site") / "site", [wheel])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Venv:
    venv = Venv(tmp_path_factory.mktemp("colab") / "venv")
    imported = venv.run("import torch, ipykernel, numpy, matplotlib, sklearn, tqdm; print('ok')")
    assert imported.stdout.strip() == "ok", imported.stderr
    assert venv.course_lib_version() is None, "course_lib must not be importable in the new venv"
    assert "No module named 'myst_nb'" in venv.run("import myst_nb").stderr
    return venv


def _with_solutions(assignment: str) -> nbformat.NotebookNode:
    """The release a student gets, with the solution cells filled in from solutions/."""
    release = nbformat.read(REPO / "exercises" / assignment / notebook_name(assignment), as_version=4)
    source = nbformat.read(REPO / "solutions" / assignment / notebook_name(assignment), as_version=4)
    answers = {c.metadata["nbgrader"]["grade_id"]: c.source for c in source.cells
               if c.metadata.get("nbgrader", {}).get("solution")}
    filled = 0
    for cell in release.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source = answers[grade_id]
            filled += 1
    assert filled, f"{assignment}: no solution cells"
    return release


def _assert_setup_used_the_release(nb: nbformat.NotebookNode) -> None:
    setup = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "setup"
                 or c.get("id") == "setup")
    stdout = "".join(o.get("text", "") for o in setup.outputs if o.get("name") == "stdout")
    assert authoring.VERSION_LINE.format(version=INFO.version) in stdout, setup.outputs


def _assert_every_test_passes(nb: nbformat.NotebookNode, assignment: str) -> None:
    """nbgrader's rule: a test cell with an error or any stderr output scores 0."""
    # Autograded test cells only: written answers (markdown) are graded by a person.
    tests = [c for c in nb.cells if c.cell_type == "code"
             and c.metadata.get("nbgrader", {}).get("grade")
             and not c.metadata.get("nbgrader", {}).get("solution")]
    assert tests
    for cell in tests:
        bad = [o for o in cell.outputs if o.output_type == "error"
               or (o.output_type == "stream" and o.name == "stderr")]
        assert not bad, f"{assignment} {cell.metadata.nbgrader.grade_id}: {bad}"
        assert "✔" in "".join(o.get("text", "") for o in cell.outputs), (
            f"{assignment} {cell.metadata.nbgrader.grade_id} printed no ✔ line: {cell.outputs}")


# Two exercises, not nine: every setup cell is the same generated cell
# (test_setup_cells_and_twins_are_current), the wheel's contents are checked module by module
# (test_wheel_holds_every_module_of_the_package), and every solution passes nbgrader in the
# development environment (test_notebooks.py). ex01 is the first install; ex07 times on the
# device it finds, the exercise most sensitive to its environment.
COLAB_SAMPLE = ["ex01_standard", "ex07_mobilenet"]


@pytest.mark.slow
@pytest.mark.parametrize("assignment", COLAB_SAMPLE)
def test_colab_simulation_exercise(venv, server, assignment, tmp_path):
    """An exercise, solved, in the new environment: every test passes with the course_lib the
    setup cell installed from the (local) site. The first exercise starts with no course_lib at all
    (the venv fixture checks it), so its setup cell installs the wheel; the later one finds it
    installed (one pip install in all keeps this test short) and must not reinstall it."""
    assert set(COLAB_SAMPLE) <= set(ASSIGNMENTS)
    installed = venv.course_lib_version()
    assert installed in (None, INFO.version)
    downloads = len(server.downloads())
    nb = venv.execute(_with_solutions(assignment), tmp_path, COURSE_LIB_WHEELS=server.url)
    _assert_setup_used_the_release(nb)
    _assert_every_test_passes(nb, assignment)
    assert venv.course_lib_version() == INFO.version
    assert server.downloads()[downloads:] == (
        [f"/{authoring.WHEEL_FOLDER}{INFO.wheel_name}"] if installed is None else [])


@pytest.mark.slow
def test_colab_simulation_replaces_an_older_course_lib(venv, server, old_wheel, tmp_path):
    """The issue's case: a chapter-1-era course_lib is installed, and even imported in the kernel
    before the setup cell runs; ex02's setup cell replaces it and the checks load."""
    assignment = "ex02_pointwise" if "ex02_pointwise" in ASSIGNMENTS else ASSIGNMENTS[-1]
    venv.install(old_wheel)
    assert venv.course_lib_version() == OLD_VERSION
    assert "No module named 'course_lib.checks.ex02_pointwise'" in venv.run(
        "import course_lib.checks.ex02_pointwise").stderr
    nb = _with_solutions(assignment)
    nb.cells.insert(0, nbformat.v4.new_code_cell(
        "import course_lib, course_lib.checks.ex01_standard\n"
        f"assert course_lib.__version__ == {OLD_VERSION!r}"))
    nb = venv.execute(nb, tmp_path, COURSE_LIB_WHEELS=server.url)
    _assert_setup_used_the_release(nb)
    _assert_every_test_passes(nb, assignment)
    assert venv.course_lib_version() == INFO.version


@pytest.mark.slow
def test_colab_simulation_chapter_twin(venv, server, tmp_path):
    """A chapter's .ipynb twin runs top to bottom where only Colab's packages are: its first cell
    installs course_lib, and glue() works without myst_nb."""
    venv.remove_course_lib()
    twin = nbformat.read(REPO / "book" / "ch01_standard.ipynb", as_version=4)
    nb = venv.execute(twin, tmp_path, COURSE_LIB_WHEELS=server.url)
    _assert_setup_used_the_release(nb)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the chapter's figures"
    assert venv.course_lib_version() == INFO.version


def _setup_code() -> str:
    """The code of ex01's setup cell, to run as a plain script in the environment."""
    return next(c.source for c in nbformat.read(REPO / "exercises" / "ex01_standard" /
                                                 "ex01_standard.ipynb", as_version=4).cells
                if c.metadata.get("nbgrader", {}).get("grade_id") == "setup")


@pytest.mark.slow
def test_setup_cell_says_what_to_do_when_it_cannot_install(venv, server):
    venv.remove_course_lib()
    proc = venv.run(_setup_code(), COURSE_LIB_WHEELS=server.url + "missing/")
    assert proc.returncode != 0
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith(f"RuntimeError: course_lib {INFO.version} could not be installed")
    assert "connect to the internet and run this cell again" in message
    # It names the file to fetch by hand: the first place it tried (by default the book's site).
    assert f"download {server.url}missing/{INFO.wheel_name} elsewhere" in message
    assert f'"{INFO.site_url}{authoring.WHEEL_FOLDER}",' in _setup_code()
    assert venv.course_lib_version() is None


@pytest.mark.slow
def test_setup_cell_never_installs_while_grading(venv, server, old_wheel):
    """Under nbgrader (NBGRADER_EXECUTION) the grader's course_lib is used as it is: nothing is
    downloaded, and a wrong release stops the notebook with the reason."""
    venv.install(old_wheel)
    before = len(server.downloads())
    proc = venv.run(_setup_code(), COURSE_LIB_WHEELS=server.url, NBGRADER_EXECUTION="autograde")
    assert proc.returncode != 0
    assert (f"this notebook needs course_lib {INFO.version} but imports {OLD_VERSION}"
            in proc.stderr.strip().splitlines()[-1])
    assert len(server.downloads()) == before
    assert venv.course_lib_version() == OLD_VERSION
