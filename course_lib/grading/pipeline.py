"""Grade a whole class: submissions folder or LMS zip -> scores, feedback, CSV, report, problems.

    python -m course_lib.grade_class ASSIGNMENT SUBMISSIONS --course DIR [--workers N] [--db URL]
                                     [--scheduler tcp://HOST:PORT] [--chunk-size K]
                                     [--out DIR] [--cell-timeout S] [--mem-mb MB]
                                     [--regrade STUDENT ... | --regrade-all]

The stages, in order (:func:`grade_class`; book/instructor_guide.md explains each):

1. **prepare** — the gradebook opens (:mod:`.gradebook`); then, at once, the sandbox is checked
   here (:mod:`.sandbox.check`), the assignment is generated privately (the template every
   worker's course is copied from) and made known to the course's gradebook, and the workers
   start;
2. **ingest** every submission (:mod:`.ingest`): one record per submitted name, always, each
   with its own student id, recorded in the gradebook and kept by later batches
   (:mod:`.identities`, :func:`.gradebook.identify`);
3. **grade** on dask workers (:mod:`.dispatch`, :mod:`.worker`, :mod:`.shard`): nbgrader's
   autograde in sandboxed warm kernels with the re-check beside it, the decision
   (:mod:`.scoring`) and nbgrader's feedback, one submission per task; results already graded
   with the same inputs are taken from ``OUT/results`` unless anything about them is suspect or
   a regrade is asked for (:mod:`.resume`); a batch whose first results are all the same
   grader error stops early;
4. **record** the final automatic scores in the course's gradebook (rows the grader could not
   grade get no score; what a person graded in formgrader stays);
5. **outputs** (:mod:`.outputs`): ``grades.csv``, ``report.html``, ``problems.txt``, feedback.

A grader failure is never a student's zero: such rows say ``grader-error``, the command exits
with status 1 and one message, and running it again grades only them.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection

from tqdm import tqdm

from course_lib.grading import gradebook, ingest, outputs, scoring
from course_lib.grading.course import interpreter_on_path, notebook_name, run_nbgrader
from course_lib.grading.dispatch import ClusterError, Engine, chunked, gpu_tests, route
from course_lib.grading.environment import EnvironmentMismatch
from course_lib.grading.model import (Failure, Graded, GradingOptions, SourceInfo, Status,
                                      Submission, TaskSpec, Work)
from course_lib.grading.resume import RESULTS, ResultCache
from course_lib.grading.sandbox.check import check_available, check_sandbox, enforced_limits
from course_lib.grading.sandbox.kernelspec import install_kernelspec, kernel_env
from course_lib.grading.sandbox.policy import Limits, SandboxUnavailable
from course_lib.grading.shard import course_bundle
from course_lib.grading.sources import course_lib_hash
from course_lib.grading.worker import drop_sessions, grade_task

DEFAULT_MEM_MB = 4096


@dataclass
class Dispatch:
    """What the grade stage did, for the report and the benchmark."""
    graded: int = 0              # graded in this run
    resumed: int = 0             # taken from OUT/results (graded by an earlier run)
    suspect: dict[str, str] = field(default_factory=dict)  # stored but graded again: why
    failed: int = 0              # no result came back (Failure)
    notes: list[str] = field(default_factory=list)
    workers: dict[str, int] = field(default_factory=dict)   # worker -> submissions graded
    timings: dict[str, dict[str, float]] = field(default_factory=dict)  # student -> phases
    stages: list[dict] = field(default_factory=list)        # per task: students, seconds


@dataclass
class ClassResult:
    submissions: list[Submission]
    info: SourceInfo
    out: Path
    csv: Path
    report: Path
    problems: Path
    seconds: float
    batch_problems: list[str]
    dispatch: Dispatch | None = None  # where and how the submissions were graded
    gradebook_written: bool = True    # the course's gradebook holds the final scores

    @property
    def grader_errors(self) -> list[Submission]:
        return [s for s in self.submissions if s.status is Status.GRADER_ERROR]


# ----------------------------------------------------------------------------- 1. prepare
def prepare_template(course: Path, assignment: str, template: Path, db_url: str,
                     env: dict) -> SourceInfo:
    """Generate the assignment in a private copy of the course's sources (what every worker's
    course starts from) and make sure the course's gradebook knows it."""
    template.mkdir(parents=True, exist_ok=True)
    shutil.copy(course / "nbgrader_config.py", template / "nbgrader_config.py")
    shutil.copytree(course / "solutions" / assignment, template / "solutions" / assignment,
                    dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    run_nbgrader(["generate_assignment", assignment, "--force"], cwd=template, env=env)
    name = notebook_name(assignment)
    info = gradebook.source_info(gradebook.sqlite_url(template / "gradebook.db"), assignment,
                                 template / "exercises" / assignment / name, Path(name).stem)
    if not gradebook.has_assignment(db_url, assignment):
        run_nbgrader(["generate_assignment", assignment, "--force", f"--db={db_url}"],
                     cwd=course, env=env)
    return info


# ----------------------------------------------------------------------------- 2. ingest
def identify(db_url: str, names: list[str]) -> dict[str, str]:
    """Student ids for the batch's names, read from and recorded in the gradebook."""
    try:
        return gradebook.identify(db_url, names)
    except Exception as exc:  # SQLAlchemy's errors: the gradebook opened a moment ago
        raise gradebook.GradebookUnavailable(
            f"cannot record the students' ids in the gradebook ({type(exc).__name__}: "
            f"{str(exc).strip()[:300]}): check that it is writable, then run again") from None


# ----------------------------------------------------------------------------- 3. grade
def _stop_rule(options: GradingOptions, first: list[Graded | Failure]) -> Callable[[], str | None]:
    """Stop when the batch's first results are all the same grader error."""
    def reason(result) -> str | None:
        if isinstance(result, Failure):
            return result.reason.split(" (")[0] if result.grader else None
        if result.status is Status.GRADER_ERROR:
            return (result.problems[-1] if result.problems else "grader error").split(" (")[0]
        return None

    def should_stop() -> str | None:
        n = options.stop_after_same_errors
        if n and len(first) >= n:
            reasons = {reason(r) for r in first[:n]}
            if len(reasons) == 1 and None not in reasons:
                return f"the first {n} submissions all failed the same way: {reasons.pop()}"
        return None

    return should_stop


def grade_on_workers(engine: Engine, subs: list[Submission], info: SourceInfo, template: Path,
                     out: Path, options: GradingOptions, hide: list[Path],
                     chunk_size: int | None = None,
                     progress: Callable[[int], None] | None = None,
                     regrade: set[str] | bool = frozenset()) -> Dispatch:
    """Grade every gradable submission on ``engine``'s workers; record each result through
    :mod:`.scoring` as it arrives, store it for resume, write its feedback page. ``regrade``:
    student ids to grade again even if an earlier run's result could be reused (True: all)."""
    a = info.assignment
    report = Dispatch()
    engine.wait_for_workers(1)
    ours = engine.check_environment(a, sandboxed=options.sandboxed)
    resources, note = route(engine, a)
    if note:
        report.notes.append(note)
    if resources is None and gpu_tests(a) and not options.gpu_parts_on_cpu:
        info.pending = set(gpu_tests(a))
        report.notes.append(f"{', '.join(sorted(info.pending))} left PENDING (no score in the "
                            "gradebook or the CSV's total): they need a GPU worker; run the "
                            "command again on a cluster with one, or pass --gpu-parts-on-cpu")
    elif resources is None and gpu_tests(a):
        report.notes.append("graded on CPU as asked (--gpu-parts-on-cpu), where those checks "
                            "pass with a note")
    spec = TaskSpec(a, course_bundle(template, a), info, options, ours,
                    [str(Path(p).resolve()) for p in hide])
    cache = ResultCache(out / RESULTS, {"fingerprint": ours,
                                        "sources": spec.bundle_hash(sources_only=True),
                                        "pending": sorted(info.pending),
                                        **options.cache_context()})
    html_name = notebook_name(a).replace(".ipynb", ".html")
    by_student = {s.student: s for s in subs}
    keys: dict[str, str] = {}
    todo: list[Work] = []
    first: list = []

    def record(sub: Submission, graded: Graded) -> None:
        sub.nbgrader, sub.recheck = graded.nbgrader, dict(graded.recheck)
        sub.problems += graded.problems
        scoring.record(sub, scoring.Decision(graded.status, graded.final))
        if graded.feedback_html is not None:
            sub.feedback = out / "feedback" / sub.student / a / html_name
            sub.feedback.parent.mkdir(parents=True, exist_ok=True)
            sub.feedback.write_text(graded.feedback_html, encoding="utf-8")
        report.timings[sub.student] = graded.timing
        if progress:
            progress(1)

    asked = []
    for sub in subs:
        if sub.notebook is None:
            continue
        data = Path(sub.notebook).read_bytes()
        keys[sub.student] = cache.key(data)
        if regrade is True or sub.student in regrade:
            asked.append(sub.student)
            todo.append(Work(sub.student, data))
            continue
        cached = cache.get(sub.student, keys[sub.student], info.max_score)
        if cached is not None:
            sub.resumed = True
            record(sub, cached)
            report.resumed += 1
        else:
            todo.append(Work(sub.student, data))
    report.suspect = dict(cache.suspect)
    report.notes += reuse_notes(subs, report, asked)

    def done(item: Work, result) -> None:
        sub = by_student[item.student]
        first.append(result)
        cache.flag(item.student, result)
        if isinstance(result, Failure):
            report.failed += 1
            scoring.record(sub, scoring.for_failure(info, result))
            if progress:
                progress(1)
            return
        report.graded += 1
        report.workers[result.worker] = report.workers.get(result.worker, 0) + 1
        if result.task:
            report.stages.append(result.task["stages"] | {"students": result.task["students"],
                                                         "worker": result.worker})
            logs = out / "work" / "logs" / f"task{len(report.stages):04d}"
            logs.mkdir(parents=True, exist_ok=True)
            (logs / "students.txt").write_text("\n".join(result.task["students"]) + "\n")
            for name, text in result.task.get("logs", {}).items():
                (logs / name).write_text(text)
        cache.put(keys[item.student], result)
        record(sub, result)

    try:
        engine.map_chunks(grade_task, chunked(todo, len(engine.worker_info()), chunk_size), spec,
                          resources=resources, key=lambda w: w.student, on_done=done,
                          should_stop=_stop_rule(options, first))
    finally:
        try:  # the workers' sessions (atexit does not run on SIGTERM)
            engine.client.run(drop_sessions)
        except Exception:  # a worker that is gone has nothing left to remove
            pass
    return report


def reuse_notes(subs: list[Submission], report: Dispatch, asked: list[str]) -> list[str]:
    """What the report and the summary say about results taken from, or refused from, earlier
    runs (the CSV's from_earlier_run column says it per row)."""
    def listed(ids: list[str]) -> str:
        return ", ".join(ids[:30]) + (f", ... ({len(ids) - 30} more)" if len(ids) > 30 else "")

    notes = []
    reused = sorted(s.student for s in subs if s.resumed)
    if reused:
        notes.append(f"{len(reused)} submissions were graded by an earlier run with the same "
                     "notebook, checks and options and nothing suspect about them: not graded "
                     f"again (the CSV's from_earlier_run column; --regrade to grade them "
                     f"again): {listed(reused)}")
    if report.suspect:
        notes.append(f"{len(report.suspect)} results of an earlier run were suspect and graded "
                     "again: " + "; ".join(f"{s} ({why})" for s, why
                                           in sorted(report.suspect.items())[:30]))
    if asked:
        notes.append(f"{len(asked)} submissions graded again as asked (--regrade): "
                     f"{listed(sorted(asked))}")
    return notes


def regrade_ids(regrade, subs: list[Submission]) -> set[str] | bool:
    """``--regrade`` names (ids or names as submitted) -> student ids; an unknown one is an
    error, not a silent no-op."""
    if regrade is True:
        return True
    ids = {}
    for sub in subs:
        ids[sub.student] = ids[sub.submitted_as or sub.student] = sub.student
    unknown = [name for name in regrade if name not in ids]
    if unknown:
        raise ValueError(f"--regrade: no submission named {', '.join(map(repr, unknown))} in this "
                         "batch (give the student id from grades.csv or the name it was "
                         "submitted as)")
    return {ids[name] for name in regrade}


# ----------------------------------------------------------------------------- the whole flow
def grade_class(assignment: str, submissions: Path, course: Path, workers: int = 1,
                db_url: str | None = None, out: Path | None = None, cell_timeout: float = 60,
                mem_mb: int = DEFAULT_MEM_MB, quiet: bool = False, use_sandbox: bool = True,
                limits: Limits | None = None, scheduler: str | None = None,
                chunk_size: int | None = None, gpu_parts_on_cpu: bool = False,
                regrade: Collection[str] | bool = ()) -> ClassResult:
    """The whole pipeline (module docstring). Returns what it wrote; raises only on setup errors
    (no such assignment, unreadable zip, no sandbox, no gradebook), never because of one
    student's notebook.

    ``use_sandbox=False`` runs student code as the caller, with the caller's files in reach: only
    for machines that cannot sandbox (the report says so on every page). ``workers``: processes
    of the embedded dask cluster; ``scheduler``: grade on an existing one instead
    (``tcp://HOST:PORT``); ``chunk_size``: submissions per task (default 1);
    ``gpu_parts_on_cpu``: without a GPU worker, grade the GPU parts on CPU (where their checks pass
    with a note) instead of leaving them pending. ``regrade``: students (ids or names as submitted)
    to grade again even where an earlier run's result could be reused; True: every one."""
    start = time.monotonic()
    course = Path(course).resolve()
    if not (course / "nbgrader_config.py").is_file():
        raise FileNotFoundError(f"{course} is not an nbgrader course (no nbgrader_config.py)")
    if not (course / "solutions" / assignment).is_dir():
        raise FileNotFoundError(f"no source folder {course / 'solutions' / assignment}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    submissions = Path(submissions).resolve()
    if not submissions.exists():
        raise FileNotFoundError(f"no submissions at {submissions}")
    if use_sandbox:
        check_available()  # bwrap itself, at once: the clear message comes before anything
    interpreter_on_path()  # nbgrader runs `alembic` from PATH, here and in every subprocess
    db_url = db_url or gradebook.sqlite_url(course / "gradebook.db")
    gradebook.check(db_url)
    out = Path(out or course / "grading" / assignment).resolve()
    work = out / "work"  # scratch; the earlier run's outputs are replaced once grading can start
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    lib_hash = course_lib_hash()
    batch_problems = [] if use_sandbox else [
        "graded WITHOUT the sandbox (--no-sandbox): student code ran as the grader, with the "
        "course, the gradebook and other submissions in reach"]

    # 1. prepare. Three set-ups of seconds each run at once: the sandbox's check (the real box
    # importing torch and every check module) and the assignment's generation (an nbgrader
    # process) in threads, the workers' start here; grading waits for all three.
    env = kernel_env(install_kernelspec(work / "jupyter-setup", None, mem_mb))
    template = work / "template"
    setups = ThreadPoolExecutor(max_workers=2, thread_name_prefix="prepare")
    sandbox_checked = setups.submit(check_sandbox) if use_sandbox else None
    prepared = setups.submit(prepare_template, course, assignment, template, db_url, env)
    setups.shutdown(wait=False)
    with Engine(workers, scheduler, log=lambda line: None if quiet else print(line)) as engine:
        info = prepared.result()
        options = GradingOptions(float(cell_timeout), mem_mb, use_sandbox,  # 60 is 60.0: one key
                                 (limits or Limits(mem_mb=mem_mb)) if use_sandbox else None,
                                 gpu_parts_on_cpu=gpu_parts_on_cpu)
        options.for_assignment(info.code_cells)

        # 2. ingest
        subs = ingest.ingest(submissions, info, work, lambda names: identify(db_url, names))
        if len({s.student for s in subs}) != len(subs):  # identities.assign guarantees it
            raise RuntimeError("two submissions were given one student id: please report this bug")
        regrade = regrade_ids(regrade, subs)
        for sub in subs:
            if sub.unreadable is not None:
                scoring.record(sub, scoring.for_unreadable(info, sub.unreadable))

        # 3. grade
        if sandbox_checked is not None:
            try:
                sandbox_checked.result()
            except SandboxUnavailable:  # says what to fix; the earlier run's outputs stay
                shutil.rmtree(work, ignore_errors=True)
                raise
        for old in out.iterdir():  # keep the results: resume
            if old.name not in (RESULTS, work.name):
                shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
        gradable = [s for s in subs if s.notebook is not None]
        hide = [course, out, submissions if submissions.is_dir() else submissions.parent]
        bar = tqdm(total=len(gradable), desc="graded", file=sys.stdout, unit="nb", disable=quiet)
        dispatch = grade_on_workers(engine, subs, info, template, out, options, hide,
                                    chunk_size, bar.update, regrade)
    bar.close()
    nbname = notebook_name(assignment)
    for sub in subs:
        if sub.feedback is None and sub.status is not Status.GRADER_ERROR:
            sub.feedback = outputs.fallback_feedback(
                sub, info, out / "feedback" / sub.student / assignment /
                nbname.replace(".ipynb", ".html"))

    # 4. record
    written = True
    try:
        gradebook.write_final_scores(db_url, assignment, subs, info.pending)
    except Exception as exc:  # the CSV below is still written: no grade is lost
        written = False
        batch_problems.append(f"could not write the course gradebook {db_url} "
                              f"({type(exc).__name__}: {exc}); grades.csv has every score: run "
                              "the command again once the gradebook works (nothing is regraded)")
    if course_lib_hash() != lib_hash:
        batch_problems.append("course_lib changed on disk during grading: a submission may have "
                              "rewritten it; treat these grades as untrustworthy")

    # 5. outputs
    seconds = time.monotonic() - start
    csv_path = outputs.write_csv(out / "grades.csv", subs, info)
    # The report says which limits held here; problems.txt stays empty for an honest class.
    notes = [*dispatch.notes, *([f"limits enforced here: {enforced_limits(options.limits)}"]
                                if options.limits is not None else [])]
    report = outputs.write_report(out, subs, info, batch_problems, seconds, notes)
    problems = out / "problems.txt"
    problems.write_text("\n".join(outputs.problem_lines(subs, info, batch_problems,
                                                        dispatch.notes, seconds)) + "\n")
    return ClassResult(subs, info, out, csv_path, report, problems, seconds, batch_problems,
                       dispatch, written)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.grade_class",
        description="Grade a class: ingest, autograde, re-check, feedback, CSV, report.")
    parser.add_argument("assignment", help="assignment id, e.g. ex01_standard")
    parser.add_argument("submissions", type=Path,
                        help="submitted/ folder, a folder of student folders, or an LMS zip")
    parser.add_argument("--course", type=Path, default=Path("."),
                        help="the nbgrader course directory (default: current directory)")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes of the embedded dask cluster (about one per core)")
    parser.add_argument("--scheduler", default=None,
                        help="grade on an existing dask cluster instead, e.g. tcp://HOST:8786 "
                             "(see the instructor guide, 'Grading on a cluster')")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="submissions per task (default 1: no notebook waits behind another)")
    parser.add_argument("--db", default=None,
                        help="gradebook URL (default sqlite:///COURSE/gradebook.db), e.g. "
                             "postgresql://user@host/gradebook")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default COURSE/grading/ASSIGNMENT)")
    parser.add_argument("--cell-timeout", type=float, default=60, help="seconds per cell")
    parser.add_argument("--mem-mb", type=int, default=DEFAULT_MEM_MB,
                        help="address-space limit per kernel, MiB")
    parser.add_argument("--gpu-parts-on-cpu", action="store_true",
                        help="without a GPU worker, grade the GPU-timed parts on CPU (their "
                             "checks then pass with a note) instead of leaving them pending")
    parser.add_argument("--no-sandbox", action="store_true",
                        help="run student code WITHOUT the bubblewrap sandbox (unsafe: only "
                             "where bwrap cannot run; the report is marked)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--regrade", nargs="+", default=[], metavar="STUDENT",
                       help="grade these students again (ids from grades.csv or the names they "
                            "submitted as) even where an earlier run's result could be reused")
    which.add_argument("--regrade-all", action="store_true",
                       help="grade every submission again, reusing no earlier result")
    args = parser.parse_args(argv)
    if args.no_sandbox:
        print("WARNING: grading without the sandbox: student code runs as you, with the course, "
              "the gradebook and every submission in reach.", file=sys.stderr)
    try:
        result = grade_class(args.assignment, args.submissions, args.course, args.workers,
                             args.db, args.out, args.cell_timeout, args.mem_mb,
                             use_sandbox=not args.no_sandbox, scheduler=args.scheduler,
                             chunk_size=args.chunk_size, gpu_parts_on_cpu=args.gpu_parts_on_cpu,
                             regrade=True if args.regrade_all else args.regrade)
    except (SandboxUnavailable, ClusterError, EnvironmentMismatch,
            gradebook.GradebookUnavailable, FileNotFoundError, ValueError) as exc:
        print(f"grade_class: {exc}", file=sys.stderr)
        return 2
    print(result.problems.read_text())
    print(f"grades:   {result.csv}\nreport:   {result.report}\nfeedback: {result.out / 'feedback'}")
    errors = result.grader_errors
    if errors or not result.gradebook_written:
        why = sorted({p for s in errors for p in s.problems if p.startswith("grader error")})
        print(f"grade_class: the grader failed for {len(errors)} of {len(result.submissions)} "
              f"submissions ({'; '.join(why[:2]) or 'the gradebook could not be written'}); they "
              "have NO score. Fix the cause, then run the same command again: it grades only "
              "those.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
