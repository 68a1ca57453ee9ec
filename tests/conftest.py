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
PIPELINE_SOLUTION_STUDENT = "reference_solution_by_the_pipeline"  # graded with the variants


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


# ------------------------------------------------------------------ background jobs
# Some expensive results need no other fixture, and run in background threads while the tests
# go on; the tests that read them wait (BACKGROUND.result). When they start matters, because the
# suite is CPU-bound (measured per test from /proc/stat, 2 cores):
# * `nbgrader validate` of the solutions and of the student variants starts as soon as the
#   session's tests are collected: the first tests use one core;
# * building the book (it executes the chapters one kernel at a time), installing the wheel into
#   a venv (pip) and autograding the whole course with plain nbgrader take one core each for one
#   to two minutes. They start with the first test marked `one_core` (the one-worker grading runs,
#   which leave about 40 % of the machine idle), not at collection, when the fast tests and the
#   validations keep both cores busy. The tests that read the book and the wheel run last.
class _Background:
    def __init__(self) -> None:
        self.results: dict[str, object] = {}
        self.threads: dict[str, object] = {}
        self.folders: list[Path] = []  # removed at the session's end (a built book, a venv)

    def start(self, names: list[str]) -> None:
        """Run the jobs ``names`` one after the other in a new thread."""
        import threading

        def run() -> None:
            for name in names:
                try:
                    self.results[name] = JOBS[name]()
                except BaseException as exc:  # raised in the test that reads it
                    self.results[name] = exc

        thread = threading.Thread(target=run, daemon=True, name="+".join(names))
        self.threads.update({name: thread for name in names})
        thread.start()

    def result(self, name: str):
        if name not in self.threads:  # not started in the background: start it now
            self.start([name])
        self.threads[name].join()
        result = self.results[name]
        if isinstance(result, BaseException):
            raise result
        return result

    def folder(self, prefix: str, parent: str | None = None) -> Path:
        made = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        self.folders.append(made)
        return made


BACKGROUND = _Background()


def _validate_solutions() -> dict:
    # The solution runs its hidden tests too (ex09 trains more there): the course's grading
    # timeout (nbgrader_config.py), not the 30 s nbgrader uses from a student's folder.
    return {a: grading.validate(REPO / "solutions" / a / grading.notebook_name(a),
                                cell_timeout=120) for a in ASSIGNMENTS}


def _validate_variants():
    from exercise_variants import validate_variants

    return validate_variants()


def _build_book() -> Path:
    """The whole book, built exactly as the README says (warnings are errors), into a temporary
    folder; returns the HTML folder."""
    out = BACKGROUND.folder("course-book-")
    proc = subprocess.run(
        [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build",
         str(REPO), "-W", "-n", "--keep-going", "--path-output", str(out)],
        capture_output=True, text=True, timeout=1800, cwd=REPO)
    if proc.returncode != 0:
        pytest.fail(f"jupyter-book build failed (exit {proc.returncode}):\n"
                    f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return out / "_build" / "html"


def _install_wheel():
    from test_deployments import install_wheel_in_a_venv_under_tmp

    return install_wheel_in_a_venv_under_tmp(BACKGROUND.folder)


def _grade_course() -> Path:
    """A temporary nbgrader course with every assignment generated, its solution submitted by one
    student and its blank release by another, autograded in one real ``nbgrader autograde``; and
    each student variant of tests/exercise_variants.py graded by the pipeline itself
    (``grade_class``, one class per assignment) into the same gradebook. What the pipeline
    reported for each variant is in :func:`variant_reports`."""
    import nbformat
    from exercise_variants import variant_notebook, variant_students

    root = BACKGROUND.folder("course-graded-")
    course = root / "course"
    course.mkdir()
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
    # Autograde as the grading pipeline does: sandboxed kernels forked from a warm nursery (one
    # `import torch` for all the notebooks instead of one each); stock kernels without bwrap.
    from course_lib.grading.sandbox import broker, policy

    command = ["autograde", "ex*", "--create", "--force"]
    sandboxed = policy.bwrap_path() is not None
    if not sandboxed:
        grading.run_nbgrader(command, cwd=course, timeout=3000)
    else:
        kernels = root / "kernels"
        kernels.mkdir()
        with broker.warm_kernels(kernels, hide=[course, REPO],
                                  modules=[f"course_lib.checks.{a}" for a in ASSIGNMENTS]
                                  ) as (env, args):
            grading.run_nbgrader(command + args, cwd=course, timeout=3000, env=env)
    variants = root / "variants"
    for student, (assignment, changes) in variant_students(ASSIGNMENTS).items():
        path = variants / assignment / student / grading.notebook_name(assignment)
        path.parent.mkdir(parents=True)
        nbformat.write(variant_notebook(assignment, changes), path)
    for assignment in ASSIGNMENTS:  # and each solution: full marks through the pipeline too
        name = grading.notebook_name(assignment)
        path = variants / assignment / PIPELINE_SOLUTION_STUDENT / name
        path.parent.mkdir(parents=True)
        shutil.copy(REPO / "solutions" / assignment / name, path)
    # In a process of its own: two dask clusters in one process (this thread's and a test's in
    # the main thread) share asyncio state and break each other.
    proc = subprocess.run([sys.executable, "-c", GRADE_VARIANTS, str(variants), str(course),
                           str(root / "pipeline"), str(root / "variant_reports.json"),
                           "1" if sandboxed else ""],
                          capture_output=True, text=True, timeout=3000, cwd=root,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                              [str(REPO)] + os.environ.get("PYTHONPATH", "").split(os.pathsep))))
    if proc.returncode != 0:
        raise RuntimeError(f"grading the variants failed:\n{proc.stderr[-4000:]}")
    return course


# Grades each assignment's folder of variants with grade_class (argv: variants, course, out,
# reports JSON, sandboxed) as plain nbgrader grades them here: GPU parts on CPU (their checks
# pass with a note); writes what it reported per assignment.
GRADE_VARIANTS = """
import json, sys
from pathlib import Path
from course_lib.grading.pipeline import grade_class

if __name__ == "__main__":
    variants, course, out, reports_path, sandboxed = sys.argv[1:]
    reports = {}
    for folder in sorted(Path(variants).iterdir()):
        result = grade_class(folder.name, folder, Path(course), out=Path(out) / folder.name,
                             quiet=True, use_sandbox=bool(sandboxed), gpu_parts_on_cpu=True)
        reports[folder.name] = {
            "rows": {s.submitted_as: {"status": s.status.value, "problems": s.problems,
                                      "score": s.score} for s in result.submissions},
            "max_score": result.info.max_score,
            "problems.txt": result.problems.read_text(), "notes": result.dispatch.notes}
    Path(reports_path).write_text(json.dumps(reports, indent=1))
"""


def variant_reports(course: Path) -> dict:
    """What the pipeline reported for the student variants and the solutions graded into
    ``course`` (_grade_course): assignment -> {"rows": {student: {status, problems, score}},
    "max_score", "problems.txt", "notes"}."""
    import json

    return json.loads((course.parent / "variant_reports.json").read_text())


JOBS = {"solutions": _validate_solutions, "variants": _validate_variants,
        "book": _build_book, "wheel venv": _install_wheel, "graded course": _grade_course}
# The deferred jobs, by the fixture that reads each, in two threads: the book then the graded
# course (one core, in turn), and pip.
DEFERRED_THREADS = ({"book": "built_book", "graded course": "graded_course"},
                    {"wheel venv": "wheel_venv"})
RUN_LAST = ("built_book", "wheel_venv")
DEFERRED: list[list[str]] = []  # what starts with the first `one_core` test


def _uses(item, fixture: str) -> bool:
    return fixture in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(session, config, items) -> None:
    """The tests that read the book and the wheel run last; the order is otherwise kept."""
    items.sort(key=lambda item: any(_uses(item, f) for f in RUN_LAST))


def pytest_collection_finish(session) -> None:
    """Start the validations the selected tests will read; defer the other jobs (see above)."""
    if session.config.option.collectonly:
        return
    names = {item.name.split("[")[0] for item in session.items}
    wanted = [job for job, test in (("solutions", "test_solution_passes_nbgrader_validate"),
                                    ("variants", "test_validate_and_autograde_agree_on_every_cell"),
                                    ("variants", "test_honest_variants_are_not_reported"))
              if test in names]
    if wanted:
        BACKGROUND.start(list(dict.fromkeys(wanted)))
    for thread in DEFERRED_THREADS:
        jobs = [job for job, fixture in thread.items()
                if any(_uses(item, fixture) for item in session.items)]
        if jobs:
            DEFERRED.append(jobs)


def pytest_runtest_setup(item) -> None:
    if item.get_closest_marker("one_core"):
        while DEFERRED:
            BACKGROUND.start(DEFERRED.pop(0))


def pytest_sessionfinish(session, exitstatus) -> None:
    for folder in BACKGROUND.folders:  # a built book, a course, a venv of 2 GB
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def graded_course() -> Path:
    """The course every assignment was autograded in (started in the background: _grade_course)."""
    return BACKGROUND.result("graded course")


@pytest.fixture(scope="session")
def built_book() -> Path:
    """The built book's HTML folder (started in the background: _build_book)."""
    return BACKGROUND.result("book")


@pytest.fixture(scope="session")
def wheel_venv() -> tuple[Path, str, Path, dict]:
    """course_lib's wheel installed into a venv under /tmp (started in the background:
    test_deployments.install_wheel_in_a_venv_under_tmp)."""
    return BACKGROUND.result("wheel venv")


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
