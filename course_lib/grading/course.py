"""Drive nbgrader end to end in a course directory: generate, validate, submit, autograde, score.

The repository itself is an nbgrader course (``nbgrader_config.py`` at the root: sources in
``solutions/``, releases in ``exercises/``). :func:`new_course` makes a throw-away copy of it in a
temporary directory so tests and dry runs never touch the repository's own gradebook.

Grading a whole class (ingest, tamper-resistant re-check, feedback, CSV, report) is
:mod:`course_lib.grade_class`; this module keeps the single nbgrader steps.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# Every process of the grader imports nbformat, which imports jsonschema, which imports
# `rfc3987_syntax` where it is installed (jupyter-events pulls it in) for its "iri" format
# checker; that module builds a parser when imported: 1.2 of the 1.3 s of CPU `import nbformat`
# takes, in each of the ten or so processes a class starts. No schema nbformat or nbgrader checks
# uses that format, so the grader's processes (this package is imported first in each) and the
# nbgrader commands it runs (NBGRADER_MAIN) leave it out: jsonschema skips a checker whose module
# is missing.
LEFT_OUT = "rfc3987_syntax"
sys.modules.setdefault(LEFT_OUT, None)

ASSIGNMENT_PATTERN = re.compile(r"^ex\d\d_[a-z0-9_]+$")


class GradingError(RuntimeError):
    """An nbgrader step failed; the message carries nbgrader's own output."""


def repo_root() -> Path:
    """The course repository (course_lib is installed editable from it)."""
    return Path(__file__).resolve().parents[2]


def assignments(root: Path | None = None) -> list[str]:
    """Assignment ids: the ``exNN_topic`` folders under solutions/."""
    source = Path(root or repo_root()) / "solutions"
    if not source.is_dir():
        raise FileNotFoundError(f"no solutions/ folder in {source.parent}")
    return sorted(p.name for p in source.iterdir()
                  if p.is_dir() and ASSIGNMENT_PATTERN.match(p.name))


def notebook_name(assignment: str) -> str:
    """Each assignment has one notebook, named after it."""
    return f"{assignment}.ipynb"


def where_tests_run(assignment: str, root: Path | None = None) -> dict[str, float | None]:
    """Each graded test cell of an assignment's source notebook, by grade id: its points where
    the re-check runs it in its server (value-only checking: checker.py), None where it runs in
    the student's process under the guard (its check needs the student's objects themselves)."""
    import importlib

    import nbformat

    from course_lib.grading.inside.checker import tests_run_in_server

    importlib.import_module(f"course_lib.checks.{assignment}")  # as the re-check's server does
    path = Path(root or repo_root()) / "solutions" / assignment / notebook_name(assignment)
    cells, points = [], {}
    for cell in nbformat.read(path, as_version=4).cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code" and meta.get("grade_id"):
            test = bool(meta.get("grade")) and not meta.get("solution")
            cells.append({"id": meta["grade_id"], "kind": "test" if test else "code",
                          "source": cell.source, "locked": bool(meta.get("locked"))})
            points[meta["grade_id"]] = float(meta.get("points", 0))
    return {gid: points[gid] if in_server else None
            for gid, in_server in tests_run_in_server(cells).items()}


# `python -m nbgrader`, leaving out what the grader's processes leave out (above).
NBGRADER_MAIN = (f"import sys; sys.modules.setdefault({LEFT_OUT!r}, None); "
                 "from nbgrader.apps.nbgraderapp import main; sys.exit(main())")


def run_nbgrader(args: list[str], cwd: Path, timeout: float = 1800,
                 check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m nbgrader ARGS`` in ``cwd`` (the course directory) and capture its output.

    ``env`` replaces the environment (e.g. :func:`course_lib.grading.sandbox.kernelspec.kernel_env`)."""
    env = nbgrader_env(env)
    proc = subprocess.run([sys.executable, "-c", NBGRADER_MAIN, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise GradingError(f"nbgrader {' '.join(args)} failed with exit code {proc.returncode}:\n"
                           f"{proc.stdout}\n{proc.stderr}")
    return proc


def interpreter_on_path(env: dict | None = None) -> dict:
    """``env`` (default: this process's own ``os.environ``, changed in place) with this
    interpreter's bin folder first on PATH. nbgrader runs ``alembic`` (its gradebook migrations)
    by name from PATH, which an unactivated venv (``/path/venv/bin/python -m ...``) lacks."""
    env = os.environ if env is None else env
    bindir = os.path.dirname(sys.executable)
    rest = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p != bindir]
    env["PATH"] = os.pathsep.join([bindir, *rest])
    return env


def nbgrader_env(env: dict | None = None) -> dict:
    """The environment nbgrader runs in (a copy): this interpreter first on PATH (see
    :func:`interpreter_on_path`), unbuffered output, headless plotting."""
    env = interpreter_on_path(dict(os.environ if env is None else env))
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["MPLBACKEND"] = "Agg"
    return env


def new_course(dest: Path, assignment_ids: list[str] | None = None,
               root: Path | None = None) -> Path:
    """Copy the config and the sources of ``assignment_ids`` into ``dest`` and generate the
    releases there (which also records the assignments in dest's gradebook)."""
    root = Path(root or repo_root())
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(root / "nbgrader_config.py", dest / "nbgrader_config.py")
    for assignment in assignment_ids or assignments(root):
        source = root / "solutions" / assignment
        if not source.is_dir():
            raise FileNotFoundError(f"no source folder solutions/{assignment}")
        shutil.copytree(source, dest / "solutions" / assignment, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        run_nbgrader(["generate_assignment", assignment, "--force"], cwd=dest)
    return dest


def release_path(course: Path, assignment: str) -> Path:
    return Path(course) / "exercises" / assignment / notebook_name(assignment)


@dataclass
class ValidationResult:
    passed: bool
    output: str


def validate(notebook: Path, invert: bool = False, cwd: Path | None = None,
             cell_timeout: int | None = None) -> ValidationResult:
    """``nbgrader validate`` (``--invert``: succeed only if every test cell fails).

    Run from the notebook's folder, as a student would, nbgrader's default cell timeout (30 s)
    applies; ``cell_timeout`` overrides it (a solution's hidden tests do more work)."""
    notebook = Path(notebook)
    if not notebook.is_file():
        raise FileNotFoundError(f"no notebook at {notebook}")
    args = ["validate", str(notebook.resolve())] + (["--invert"] if invert else []) \
        + ([f"--Execute.timeout={int(cell_timeout)}"] if cell_timeout else [])
    proc = run_nbgrader(args, cwd=Path(cwd or notebook.parent), check=False)
    output = proc.stdout + proc.stderr
    success = "Success!" in output and proc.returncode == 0
    return ValidationResult(success, output)


def submit(course: Path, assignment: str, student: str, notebook: Path) -> Path:
    """Place a student's notebook in ``submitted/<student>/<assignment>/`` as nbgrader expects."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", student):
        raise ValueError(f"student id {student!r} must be letters, digits, '_', '-' or '.'")
    target = Path(course) / "submitted" / student / assignment
    target.mkdir(parents=True, exist_ok=True)
    destination = target / notebook_name(assignment)
    shutil.copy(notebook, destination)
    return destination


def autograde(course: Path, assignment: str, student: str | None = None,
              timeout: float = 3600) -> subprocess.CompletedProcess:
    """``nbgrader autograde`` for every submission (or one student); creates unknown students."""
    args = ["autograde", assignment, "--create", "--force"]
    if student:
        args.append(f"--student={student}")
    return run_nbgrader(args, cwd=Path(course), timeout=timeout)


def scores(course: Path, assignment: str):
    """Scores recorded in a course's gradebook, per student and per graded cell
    (:func:`course_lib.grading.gradebook.scores`; imported on use: the kernel launcher and the
    processes in the box import this package and must not pay for nbformat)."""
    from course_lib.grading.gradebook import scores as recorded

    return recorded(course, assignment)

