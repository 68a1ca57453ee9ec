"""Shared fixtures. The expensive ones (a graded nbgrader course, a built book) are session-scoped
and built once, so every test that needs them reads the same result."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from course_lib import grading

REPO = Path(__file__).resolve().parents[1]
# COURSE_ASSIGNMENTS="ex02_pointwise,ex03_depthwise" limits the notebook tests to those (for a quick
# local run while writing an exercise); CI runs them all.
ASSIGNMENTS = [a for a in grading.assignments(REPO)
               if a in os.environ.get("COURSE_ASSIGNMENTS", a).split(",")]

# Student ids used in the graded course fixture.
SOLUTION_STUDENT = "reference_solution"
BLANK_STUDENT = "blank_release"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


# ------------------------------------------------------------------ background jobs
# `nbgrader validate` runs (the solutions, the student variants) and the wheel's install into a
# venv need no other fixture, and most tests use one core: they start in background threads as
# soon as the session's tests are collected, on the core the test process leaves idle, and the
# tests that need them wait.
class _Background:
    def __init__(self) -> None:
        self.results: dict[str, object] = {}
        self.threads: dict[str, object] = {}

    def start(self, jobs: dict) -> None:
        import threading

        def run() -> None:
            for name, job in jobs.items():
                try:
                    self.results[name] = job()
                except BaseException as exc:  # raised in the test that reads it
                    self.results[name] = exc

        thread = threading.Thread(target=run, daemon=True, name="validation")
        self.threads.update({name: thread for name in jobs})
        thread.start()

    def result(self, name: str):
        if name not in self.threads:  # not started at collection: start it now
            self.start(_validation_jobs([name]))
        self.threads[name].join()
        result = self.results[name]
        if isinstance(result, BaseException):
            raise result
        return result


BACKGROUND = _Background()


def _validate_solutions() -> dict:
    # The solution runs its hidden tests too (ex09 trains more there): the course's grading
    # timeout (nbgrader_config.py), not the 30 s nbgrader uses from a student's folder.
    return {a: grading.validate(REPO / "solutions" / a / grading.notebook_name(a),
                                cell_timeout=120) for a in ASSIGNMENTS}


def _install_wheel():
    from test_deployments import install_wheel_in_a_venv_under_tmp

    return install_wheel_in_a_venv_under_tmp()


def _validation_jobs(names) -> dict:
    from exercise_variants import validate_variants

    jobs = {"solutions": _validate_solutions, "variants": validate_variants,
            "wheel venv": _install_wheel}
    return {n: jobs[n] for n in names}


# ------------------------------------------------------------------ the book, built aside
# Building the book executes its chapters one kernel at a time: about 100 s of ONE core. It starts
# as a subprocess when collection ends, beside the first tests (mostly one core too), and the tests
# that read the book run last, when it is long built.
class _BookBuild:
    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.out: Path | None = None

    def start(self) -> None:
        self.out = Path(tempfile.mkdtemp(prefix="course-book-"))
        # The README's command (warnings are errors). Output to a file: nobody reads a pipe
        # while it runs, and a full pipe would stop the build.
        with open(self.out / "build.log", "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build",
                 str(REPO), "-W", "-n", "--keep-going", "--path-output", str(self.out)],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    def html(self) -> Path:
        """The built book's HTML folder (builds it now if it was not started)."""
        if self.proc is None:
            self.start()
        try:
            code = self.proc.wait(timeout=1800)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        if code != 0:
            log = (self.out / "build.log").read_text(errors="replace")
            pytest.fail(f"jupyter-book build failed (exit {code}):\n{log[-12000:]}")
        return self.out / "_build" / "html"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.out is not None:
            shutil.rmtree(self.out, ignore_errors=True)


BOOK = _BookBuild()


def _uses_book(item) -> bool:
    return "built_book" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(session, config, items) -> None:
    """The tests that read the built book run last (see _BookBuild); the order is otherwise kept."""
    items.sort(key=_uses_book)


def pytest_collection_finish(session) -> None:
    """Start the validation runs and the book build the selected tests will read (see
    _Background and _BookBuild)."""
    if session.config.option.collectonly:
        return
    names = {item.name.split("[")[0] for item in session.items}
    wanted = [job for job, test in (("solutions", "test_solution_passes_nbgrader_validate"),
                                    ("variants", "test_validate_and_autograde_agree_on_every_cell"),
                                    ("variants", "test_honest_variants_are_not_reported"))
              if test in names]
    if wanted:
        BACKGROUND.start(_validation_jobs(wanted))
    if any(_uses_book(item) for item in session.items):
        BOOK.start()
    if "test_wheel_in_a_venv_under_tmp" in names:  # pip: a minute of one core, in a thread
        BACKGROUND.start(_validation_jobs(["wheel venv"]))


def pytest_sessionfinish(session, exitstatus) -> None:
    BOOK.stop()
    test_deployments = sys.modules.get("test_deployments")
    for folder in getattr(test_deployments, "INSTALLS", []):  # 2 GB each
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def graded_course(tmp_path_factory) -> Path:
    """A temporary nbgrader course with every assignment generated, its solution submitted by one
    student, its blank release by another and each student variant of tests/exercise_variants.py
    by one more, all autograded in one real ``nbgrader autograde``."""
    import nbformat
    from exercise_variants import variant_notebook, variant_students

    course = tmp_path_factory.mktemp("course")
    shutil.copy(REPO / "nbgrader_config.py", course / "nbgrader_config.py")
    for assignment in ASSIGNMENTS:
        shutil.copytree(REPO / "solutions" / assignment, course / "solutions" / assignment,
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    # One nbgrader process per step for all assignments: its start-up is the slow part.
    grading.run_nbgrader(["generate_assignment", "ex*", "--force"], cwd=course)
    for assignment in ASSIGNMENTS:
        grading.submit(course, assignment, SOLUTION_STUDENT,
                       REPO / "solutions" / assignment / grading.notebook_name(assignment))
        grading.submit(course, assignment, BLANK_STUDENT,
                       grading.release_path(course, assignment))
    variants = tmp_path_factory.mktemp("variants")
    for student, (assignment, changes) in variant_students(ASSIGNMENTS).items():
        path = variants / student / grading.notebook_name(assignment)
        path.parent.mkdir()
        nbformat.write(variant_notebook(assignment, changes), path)
        grading.submit(course, assignment, student, path)
    # Autograde as the grading pipeline does: sandboxed kernels forked from a warm nursery (one
    # `import torch` for all 35 notebooks instead of one each); stock kernels without bwrap.
    from course_lib.grading.sandbox import broker, policy

    command = ["autograde", "ex*", "--create", "--force"]
    if policy.bwrap_path() is None:
        grading.run_nbgrader(command, cwd=course, timeout=3000)
        return course
    with broker.warm_kernels(tmp_path_factory.mktemp("kernels"), hide=[course, variants, REPO],
                              modules=[f"course_lib.checks.{a}" for a in ASSIGNMENTS]) as (env, args):
        grading.run_nbgrader(command + args, cwd=course, timeout=3000, env=env)
    return course


@pytest.fixture(scope="session")
def built_book() -> Path:
    """The whole book, built once exactly as the README says (warnings are errors) into a
    temporary folder (started when collection ended: _BookBuild); returns the HTML folder."""
    return BOOK.html()


# ----------------------------------------------------------------------------- a graded class
# Shared by tests/test_grading_cluster.py and tests/test_gradebook_postgres.py: one small mixed
# class of exercise 1, graded once with the default engine (embedded dask, SQLite gradebook); the
# other runs (--scheduler, a killed worker, PostgreSQL) are compared with it.
CLASS_ASSIGNMENT = "ex01_standard"


@pytest.fixture(scope="session")
def mixed_class(tmp_path_factory):
    """(course, submitted folder, student -> expected score): honest, wrong, hostile and broken
    submissions, scores computed from the source notebook's points."""
    import nbformat

    from test_grading_pipeline import POINTS, TOTAL, _adversarial, _with_conv_macs

    tmp = tmp_path_factory.mktemp("mixed_class")
    course = grading.new_course(tmp / "course", [CLASS_ASSIGNMENT], root=REPO)
    hostile = _adversarial()
    subs = {"honest": hostile["solution"],
            "wrong": (_with_conv_macs("    return 0"), TOTAL - POINTS["part2-tests"]),
            "blank": hostile["blank"],
            "patch_checks": hostile["patch_checks"],
            "kill_kernel": hostile["kill_kernel"],
            "corrupt_json": hostile["corrupt_json"]}
    submitted = tmp / "submitted"
    for student, (nb, _) in subs.items():
        folder = submitted / student / CLASS_ASSIGNMENT
        folder.mkdir(parents=True)
        path = folder / grading.notebook_name(CLASS_ASSIGNMENT)
        path.write_text(nb) if isinstance(nb, str) else nbformat.write(nb, path)
    return course, submitted, {student: score for student, (_, score) in subs.items()}


@pytest.fixture(scope="session")
def class_graded_embedded(mixed_class, tmp_path_factory):
    """The mixed class graded by `grade_class` with its defaults (embedded dask cluster, SQLite
    gradebook in the course), 2 workers."""
    from test_grading_pipeline import CELL_TIMEOUT, MEM_MB

    from course_lib.grading import pipeline

    course, submitted, _ = mixed_class
    return pipeline.grade_class(CLASS_ASSIGNMENT, submitted, course, workers=2,
                                   out=tmp_path_factory.mktemp("embedded") / "out",
                                   cell_timeout=CELL_TIMEOUT, mem_mb=MEM_MB, quiet=True)
