"""The grader installs and grades in every ordinary Python layout (issue 19), for real.

Each deployment runs ``PYTHON -m course_lib.grade_class`` as an instructor would, WITHOUT an
activated environment (PATH holds only the system folders), from a folder that is not the
repository, on a course that is a copy of this one. Each grades an honest class (full marks, an
EMPTY problem list: "0 with problems") and, in a second run at the same time, two hostile notebooks
(one reads the solutions, one rewrites course_lib) that must get exactly the score their honest
part deserves. Each also runs `PYTHON -m course_lib.grading.sandbox check` first.

The deployments of the issue:

(a) a venv under ``/tmp`` and (c) course_lib installed from the built wheel, not editable, with
    the course elsewhere: ONE real install serves both (``test_wheel_in_a_venv_under_tmp``);
(b) a venv in a home folder, run without activation: ``.ci/run`` installs the requirements into
    ``~/.venvs/...`` as the README says and runs the whole suite with that venv's Python, so
    ``test_the_interpreter_running_the_tests`` grades in it;
(d) the system interpreter: the interpreter running the tests when it is not a venv (a
    developer's machine), and under ``.ci/run`` the one the venv was made from
    (``test_the_interpreter_the_venv_was_made_from``).

The fast tests check the pieces one at a time: the mounts, ``sandbox check``, the re-check's
guard, nbgrader's ``alembic``.
"""
from __future__ import annotations

import builtins
import csv
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import course_lib
from course_lib import grading
from course_lib.grading import course, gradebook, sandbox
from course_lib.grading.inside.guard import Guard
from course_lib.grading.sandbox import check as sandbox_check
from course_lib.grading.sandbox import policy
from test_grading_pipeline import POINTS, TOTAL, _hostile, _solved_release

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENT = "ex01_standard"
HOSTILE = ("read_solutions", "edit_course_lib")
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"  # no venv, no pyenv shims: nothing activated


# ----------------------------------------------------------------------------- fast tests
def test_only_the_python_installation_is_mounted_after_tmp_and_the_masks(tmp_path, monkeypatch):
    """A folder on sys.path that is not the installation (a dask worker's local directory,
    pytest's temp folders) is not mounted; the installation's own folders are mounted after the
    private /tmp and the masks, so that neither hides them (a venv under /tmp)."""
    scratch_space = tmp_path / "dask-scratch-space"
    scratch_space.mkdir()
    monkeypatch.syspath_prepend(str(scratch_space))
    assert str(scratch_space) not in policy.python_dirs()
    prefix = os.path.realpath(sys.prefix)
    assert any(prefix == d or prefix.startswith(d + "/") for d in policy.python_dirs())
    box = sandbox.Sandbox.for_batch(tmp_path / "work", hide=[REPO])
    argv = box.bwrap_argv(writable={})
    pairs = list(zip(argv, argv[1:]))
    binds = [b for a, b in pairs if a in ("--ro-bind", "--bind")]
    assert str(scratch_space) not in binds
    tmpfs = [i for i, (a, b) in enumerate(pairs) if a == "--tmpfs"]
    assert pairs[tmpfs[0]][1] == "/tmp"
    own = [i for i, (a, b) in enumerate(pairs) if a == "--ro-bind" and b in policy.python_dirs()]
    system = ("/usr/", "/lib", "/bin", "/sbin", "/etc/")
    if not prefix.startswith(system):  # an installation in a folder of its own (pyenv, venv)
        assert own, f"the installation under {prefix} is not mounted: {argv}"
    masks = [i for i in tmpfs[1:] if not any(pairs[i][1].startswith(pairs[j][1] + "/")
                                             for j in own)]
    assert all(i > tmpfs[0] for i in own) and all(i > m for i in own for m in masks), argv


def test_a_folder_on_sys_path_is_not_visible_inside(tmp_path, monkeypatch):
    outside = tmp_path / "dask-scratch-space"
    outside.mkdir()
    (outside / "worker.lock").write_text("x")
    monkeypatch.syspath_prepend(str(outside))
    box = sandbox.Sandbox.for_batch(tmp_path / "work", hide=[])
    scratch = box.new_scratch("probe")
    out = tmp_path / "probe.out"
    with open(out, "wb") as stdout:
        report = sandbox.run_sandboxed(
            box, [sys.executable, "-c", f"import os; print(os.path.exists({str(outside)!r}))"],
            "probe", writable={str(scratch): str(scratch)}, cwd=str(scratch), stdout=stdout,
            stderr=subprocess.STDOUT)
    assert report.returncode == 0, out.read_text()
    assert out.read_text().strip() == "False"


def test_sandbox_check_imports_inside_and_names_what_is_missing(monkeypatch):
    """The check starts the real sandbox with this interpreter; a module that cannot be imported
    in there is named, with the command that fixes it."""
    monkeypatch.setattr(sandbox_check, "INSIDE_MODULES",
                        (*sandbox_check.INSIDE_MODULES, "course_lib_missing_helper"))
    with pytest.raises(sandbox.SandboxUnavailable) as caught:
        sandbox_check.check_sandbox()
    message = str(caught.value)
    assert "course_lib_missing_helper: ModuleNotFoundError" in message
    assert f"{sys.executable} -m pip install -r requirements.txt" in message
    for module in ("torch", "ipykernel", "course_lib.grading.inside.recheck", "course_lib.checks.ex01"):
        assert f"{module}" not in message.split("needs:")[1].split("The sandbox")[0], message


def test_a_passed_check_is_not_repeated_until_what_it_checked_changes(monkeypatch):
    """Grading several assignments from one process checks the box once: a second check starts
    no box; one with another module to import (or other masks) starts it again, and fails."""
    summary = sandbox_check.check_sandbox()
    started = []
    real = sandbox_check.run_sandboxed
    monkeypatch.setattr(sandbox_check, "run_sandboxed",
                        lambda *args, **kwargs: started.append(args[2]) or real(*args, **kwargs))
    assert sandbox_check.check_sandbox() == summary and started == []
    monkeypatch.setattr(sandbox_check, "INSIDE_MODULES",
                        (*sandbox_check.INSIDE_MODULES, "course_lib_missing_helper"))
    with pytest.raises(sandbox.SandboxUnavailable, match="course_lib_missing_helper"):
        sandbox_check.check_sandbox()
    with pytest.raises(sandbox.SandboxUnavailable):  # a failed check is never remembered
        sandbox_check.check_sandbox()
    assert started == ["check", "check"]


def test_sandbox_check_says_when_the_interpreter_is_not_visible(monkeypatch):
    """What a venv under /tmp looked like before the mounts came after /tmp: the interpreter
    missing inside. The check says so, and where the sandbox looks."""
    if os.path.realpath(sys.executable).startswith(("/usr/", "/bin/")):
        pytest.skip("a system interpreter is always visible (/usr is mounted)")
    monkeypatch.setattr(policy, "python_dirs", lambda: [])
    with pytest.raises(sandbox.SandboxUnavailable) as caught:
        sandbox_check.check_sandbox()
    message = str(caught.value)
    assert f"The interpreter {sys.executable} is not visible inside" in message, message
    assert "python3 -m venv" in message


def test_guard_ignores_builtins_reinserted_in_another_order_but_not_a_replacement():
    """IPython's builtin trap deletes and re-inserts ``exit``, ``quit``, ... around every cell:
    the same objects in a new order is no tampering; a replaced builtin still is."""
    guard = Guard()
    original_len = builtins.len
    try:
        for key in ("exit", "quit", "help", "print"):
            if key in vars(builtins):
                value = vars(builtins).pop(key)
                vars(builtins)[key] = value
        assert guard.changes() == [] and guard.digest() == guard.reference
        builtins.len = lambda obj: 0
        changed = guard.changes()
        assert "builtins.len" in changed
        assert guard.digest() != guard.reference
    finally:
        builtins.len = original_len
        guard.restore()
    assert guard.changes() == []


def test_gradebook_without_alembic_on_path_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(gradebook.GradebookUnavailable) as caught:
        gradebook.check(f"sqlite:///{tmp_path / 'gradebook.db'}")
    message = str(caught.value)
    assert "alembic" in message and "PostgreSQL" not in message
    assert f"{sys.executable} -m course_lib.grade_class" in message


def test_the_interpreters_folder_goes_first_on_path():
    env = course.interpreter_on_path({"PATH": SYSTEM_PATH})
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)
    assert shutil.which("alembic", path=env["PATH"]), "nbgrader's alembic is next to python"


# ----------------------------------------------------------------------------- deployments
def _tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(root).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def _course_copy(dest: Path) -> Path:
    """The course as an instructor's checkout elsewhere: config and sources, no course_lib."""
    dest.mkdir(parents=True)
    shutil.copy(REPO / "nbgrader_config.py", dest / "nbgrader_config.py")
    shutil.copytree(REPO / "solutions" / ASSIGNMENT, dest / "solutions" / ASSIGNMENT,
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    return dest


def _write_class(folder: Path, notebooks: dict[str, nbformat.NotebookNode]) -> Path:
    for student, nb in notebooks.items():
        path = folder / student / ASSIGNMENT / grading.notebook_name(ASSIGNMENT)
        path.parent.mkdir(parents=True)
        nbformat.write(nb, path)
    return folder


def _start(python: str, course: Path, submitted: Path, out: Path, cwd: Path,
           env: dict) -> subprocess.Popen:
    return subprocess.Popen([python, "-m", "course_lib.grade_class", ASSIGNMENT, str(submitted),
                             "--course", str(course), "--out", str(out), "--workers", "1",
                             "--cell-timeout", "25"], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen, out: Path) -> tuple[dict[str, dict], list[str], str]:
    """(grades.csv rows by submitted name, problems.txt's lines, the command's output)."""
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-5000:]
    rows = {r["submitted_as"]: r for r in csv.DictReader((out / "grades.csv").open())}
    return rows, (out / "problems.txt").read_text().strip().splitlines(), stdout


def _deployment(python: str, tmp: Path, env: dict, course_lib_dir: Path) -> None:
    """Grade an honest class and, at the same time (two commands, two copies of the course: the
    two cores are better used), two hostile notebooks with ``python`` (see the module's
    docstring); ``course_lib_dir``: the course_lib that python imports, which must not change."""
    assert "VIRTUAL_ENV" not in env and "PYTHONHOME" not in env
    env = {**env, "PATH": SYSTEM_PATH, "HOME": env.get("HOME", str(tmp / "home"))}
    work = tmp / "elsewhere"  # neither the repository nor the installation: the cwd
    work.mkdir()
    check = subprocess.run([python, "-m", "course_lib.grading.sandbox", "check"], cwd=work,
                           env=env, capture_output=True, text=True, timeout=300)
    assert check.returncode == 0 and check.stdout.startswith("yes: "), check.stdout + check.stderr

    course, course2 = _course_copy(tmp / "course"), _course_copy(tmp / "course2")
    lib_before, course_before = _tree_hash(course_lib_dir), _tree_hash(course2 / "solutions")
    honest = _write_class(tmp / "honest", {s: _solved_release() for s in ("ada", "grace")})
    hostile = {k: v for k, v in _hostile({"course": str(course2),
                                          "submitted": str(tmp / "hostile"),
                                          "repo": str(course_lib_dir.parent)}).items()
               if k in HOSTILE}
    _write_class(tmp / "hostile", {k: nb for k, (nb, _) in hostile.items()})
    runs = [_start(python, course, honest, tmp / "out-honest", work, env),
            _start(python, course2, tmp / "hostile", tmp / "out-hostile", work, env)]

    rows, problems, stdout = _finish(runs[0], tmp / "out-honest")
    assert {s: float(r["score"]) for s, r in rows.items()} == {"ada": TOTAL, "grace": TOTAL}
    assert problems == [problems[0]] and "2 submissions, 0 with problems" in problems[0], problems
    assert "0 with problems" in stdout
    assert all(r["problems"] == "" and r["status"] == "ok" for r in rows.values()), rows

    rows, problems, _ = _finish(runs[1], tmp / "out-hostile")
    expected = {student: score for student, (_, score) in hostile.items()}
    assert {s: float(r["score"]) for s, r in rows.items()} == expected
    assert TOTAL - POINTS["part4-tests"] == float(rows["read_solutions"]["score"])
    assert "tried to change files outside its folder" in rows["edit_course_lib"]["problems"]
    assert _tree_hash(course_lib_dir) == lib_before, "a submission changed course_lib"
    assert _tree_hash(course2 / "solutions") == course_before


def _imports_the_requirements(python: str, env: dict) -> bool:
    probe = subprocess.run([python, "-c", "import torch, nbgrader, ipykernel, distributed"],
                           env=env, capture_output=True, timeout=300)
    return probe.returncode == 0


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items()
            if k not in ("VIRTUAL_ENV", "PYTHONHOME", "JUPYTER_PATH", "NBGRADER_EXECUTION")}


@pytest.mark.slow
def test_the_interpreter_running_the_tests(tmp_path):
    """(b) under .ci/run (a venv in a home folder, never activated), (d) on a machine whose
    system interpreter runs the tests."""
    env = {**_clean_env(), "PYTHONPATH": str(REPO)}  # course_lib of this checkout, as -e . does
    _deployment(sys.executable, tmp_path, env, Path(course_lib.__file__).resolve().parent)


@pytest.mark.slow
def test_the_interpreter_the_venv_was_made_from(tmp_path):
    """(d) when the tests run in a venv: the system interpreter it was made from, with this
    checkout's course_lib on PYTHONPATH (what `pip install -r requirements.txt` into it gives)."""
    if sys.prefix == sys.base_prefix:
        pytest.skip("the tests run in the system interpreter: "
                    "test_the_interpreter_running_the_tests is deployment (d)")
    python = os.path.join(sys.base_prefix, "bin", f"python{sys.version_info[0]}")
    env = {**_clean_env(), "PYTHONPATH": str(REPO)}
    if not _imports_the_requirements(python, env):
        # .ci/run installs the pins there under CI: a skip would hide a broken deployment (d).
        assert os.environ.get("CI") != "true", f"{python} lacks the requirements under CI"
        pytest.skip(f"{python} lacks the requirements (e.g. Debian's python3, which refuses a "
                    "system-wide pip): nothing to grade with there")
    _deployment(python, tmp_path, env, REPO / "course_lib")


def _pins() -> list[str]:
    """requirements.txt's pins (torch's included, so that pip never picks another torch), without
    the editable install of the checkout."""
    return [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text()
            .splitlines() if line.split("#")[0].strip() and not line.startswith("-e")]


@pytest.mark.slow
def test_wheel_in_a_venv_under_tmp(wheel_venv):
    """(a) + (c): a venv under /tmp, course_lib installed from its wheel (not editable) with
    the grading extra, the course a copy elsewhere. The install (a minute of one core) starts in
    the background with the first `one_core` test (conftest); this test runs last."""
    tmp, python, installed, env = wheel_venv
    _deployment(python, tmp, env, installed)


def install_wheel_in_a_venv_under_tmp(new_folder) -> tuple[Path, str, Path, dict]:
    """Build course_lib's wheel, make a venv in ``new_folder(prefix, "/tmp")`` (under /tmp even
    with --basetemp) and install the wheel with its grading extra and the course's pins; returns
    (the folder, the venv's python, the installed course_lib, the environment to run it in)."""
    tmp = new_folder("cl-deploy-", "/tmp")
    dist = tmp / "dist"
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--wheel",
                            "--outdir", str(dist), str(REPO)], capture_output=True,
                           text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheel = next(dist.glob("course_lib-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    constraints = tmp / "constraints.txt"
    constraints.write_text("\n".join(p for p in _pins() if "[" not in p) + "\n")
    env = {k: v for k, v in _clean_env().items() if k != "PYTHONPATH"}
    install = subprocess.run([python, "-m", "pip", "install", "-q", "-c", str(constraints),
                              f"{wheel}[grading]"], capture_output=True, text=True,
                             env=env, cwd=tmp, timeout=1200)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    where = subprocess.run([python, "-c", "import course_lib, torch; "
                            "print(course_lib.__file__); print(torch.__version__)"],
                           capture_output=True, text=True, env=env, cwd=tmp,
                           check=True).stdout.split()
    installed = Path(where[0]).parent
    assert installed.is_relative_to(venv) and "site-packages" in installed.parts
    assert where[1].split("+")[0] == _pin("torch"), "pip must keep the course's torch"
    return tmp, python, installed, env


def _pin(name: str) -> str:
    return next(p.split("==")[1] for p in _pins() if p.startswith(name + "=="))


# ----------------------------------------------------------------------------- CI = README
def test_ci_installs_and_tests_the_way_the_readme_says():
    """`.ci/run` makes the venv, installs and runs the tests with exactly the README's commands
    (the venv's Python, not activated), stops at the first failing step and passes pytest's exit
    status on."""
    import re

    readme = (REPO / "README.md").read_text()
    run = (REPO / ".ci" / "run").read_text()
    quick = readme.split("## Quick start")[1].split("\n## ")[0]
    venv = re.search(r'^VENV="\$\{COURSE_VENV:-\$HOME/([^}]+)\}"$', run, flags=re.M).group(1)
    for line in (f"python3 -m venv ~/{venv}", f"~/{venv}/bin/python -m pip install -r "
                 "requirements.txt", f"~/{venv}/bin/python -m pytest", "bash .ci/run"):
        assert f"\n{line}\n" in quick, line
    steps = [line for line in run.splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert 'python3 -m venv "$VENV"' in [s.strip() for s in steps]
    assert ('"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r '
            'requirements.txt') in steps
    assert steps[-1] == '"$VENV/bin/python" -m pytest', "pytest's exit status is the script's"
    assert "set -euo pipefail" in steps
    assert "activate" not in "\n".join(steps)
    assert subprocess.run(["bash", "-n", str(REPO / ".ci" / "run")]).returncode == 0
