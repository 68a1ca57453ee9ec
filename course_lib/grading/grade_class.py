"""Grade a whole class: submissions folder or LMS zip -> scores, feedback, CSV, report, problems.

    python -m course_lib.grade_class ASSIGNMENT SUBMISSIONS --course DIR [--workers N] [--db URL]
                                     [--scheduler tcp://HOST:PORT] [--chunk-size K]
                                     [--out DIR] [--cell-timeout S] [--mem-mb MB]

Steps (see book/instructor_guide.md):

1. **ingest** SUBMISSIONS: nbgrader's ``submitted/<student>/<assignment>/<nb>.ipynb`` layout, a
   ``<student>/<nb>.ipynb`` folder, or a zip of either or of flat LMS files
   ``<student>_<anything>.ipynb``. Renamed notebooks are found, corrupt JSON and missing notebooks
   are recorded (score 0), nbgrader metadata the student edited (points, grade flags) is restored
   from the gradebook;
2. **autograde** with real ``nbgrader autograde`` in private shard courses (each its own SQLite
   file, so no locking), one per task of a few submissions, on dask workers: an embedded cluster
   of ``--workers`` processes, or an existing one (``--scheduler``; :mod:`.cluster`, which also
   retries tasks whose worker died and resumes an interrupted batch from ``OUT/results``); kernels
   limited in memory (:mod:`course_lib.grading.kernel`) and time per cell;
3. **re-check** every submission in a fresh process with protected checks
   (:mod:`course_lib.grading.recheck`); a test cell's final score is the lower of nbgrader's and the
   re-check's (the re-check's alone where nbgrader could not grade the notebook at all);
4. write the final scores to the course gradebook (``--db``: any SQLAlchemy URL, e.g. PostgreSQL),
   **feedback** HTML per student (``nbgrader generate_feedback``), ``grades.csv`` (one row per
   submission, always), ``report.html`` with plots, and ``problems.txt``.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import html
import json
import os
import re
import signal
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from tqdm import tqdm

from course_lib.grading import course as grading
from course_lib.grading import cluster, recheck, sandbox
from course_lib.grading.kernel import DEFAULT_MEM_MB, kernel_env

MAX_ZIP_BYTES = 2 * 2**30  # refuse zips that would unpack to more than this
FLOOD_CHARS = 100_000  # a cell printing more than this is reported
# Results that are broken rather than just wrong, by course_lib.checks.expect_tensor's messages.
_BAD_RESULTS = {"NaN or infinite": "result has NaN/inf values",
                "expected a floating-point tensor": "result has the wrong dtype",
                "result is on": "result is on the wrong device",
                "subclass": "result is a tensor subclass"}


# ----------------------------------------------------------------------------- gradebook facts
@dataclass
class SourceInfo:
    """What the gradebook knows about the assignment's notebook (the trusted version)."""
    assignment: str
    notebook: str
    order: list[str]                 # grade_ids of the release notebook, in order
    cells: dict[str, dict]           # grade_id -> {cell_type, locked, source}
    points: dict[str, float]         # autograded test cell grade_id -> max points
    solutions: set[str]
    manual: dict[str, float] = field(default_factory=dict)  # manually graded answers -> points

    @property
    def max_score(self) -> float:
        """The autograded points (manually graded answers are graded later, in formgrader)."""
        return float(sum(self.points.values()))

    @property
    def manual_max(self) -> float:
        return float(sum(self.manual.values()))


def source_info(db_url: str, assignment: str, release: Path) -> SourceInfo:
    from nbgrader.api import Gradebook

    name = Path(grading.notebook_name(assignment)).stem
    with Gradebook(db_url) as gb:
        nb = gb.find_notebook(name, assignment)
        cells = {c.name: {"cell_type": c.cell_type, "locked": bool(c.locked), "source": c.source}
                 for c in nb.source_cells}
        solutions = {c.name for c in nb.solution_cells}
        # A grade cell that is also a solution cell (or markdown) is a manually graded answer.
        points = {c.name: float(c.max_score) for c in nb.grade_cells
                  if c.cell_type == "code" and c.name not in solutions}
        manual = {c.name: float(c.max_score) for c in nb.grade_cells if c.name not in points}
    order = [c.metadata.get("nbgrader", {}).get("grade_id")
             for c in nbformat.read(release, as_version=4).cells]
    return SourceInfo(assignment, name, [g for g in order if g], cells, points, solutions,
                      manual)


# ----------------------------------------------------------------------------- submissions
@dataclass
class Submission:
    student: str
    origin: str
    notebook: Path | None = None          # sanitized notebook to grade; None: nothing gradable
    problems: list[str] = field(default_factory=list)
    status: str = "ok"                     # ok | missing | corrupt | graded-by-recheck | error
    submitted_as: str = ""                 # the name it came under (folder or LMS file prefix)
    nbgrader: dict[str, float] | None = None
    recheck: dict[str, float] = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)
    feedback: Path | None = None

    @property
    def score(self) -> float:
        return float(sum(self.final.values()))


def _student_id(raw: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", raw).strip("-.") or "unknown"
    return cleaned


def student_ids(names: list[str]) -> dict[str, str]:
    """A distinct gradebook id for every submitted name, never merging two students.

    Names are cleaned to letters, digits, '_', '-', '.'; where two names clean to the same id,
    the ones that changed get a suffix from a hash of the name itself (stable across runs and
    independent of the other names' order)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(_student_id(name), []).append(name)
    ids = {}
    for cleaned, members in groups.items():
        for name in members:
            clash = len(members) > 1 and name != cleaned
            ids[name] = (f"{cleaned}-{hashlib.sha1(name.encode()).hexdigest()[:6]}" if clash
                         else cleaned)
    return ids


def _safe_unzip(archive: Path, dest: Path) -> Path:
    """Extract refusing absolute paths, '..' and zip bombs; skips macOS metadata."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{archive} is not a readable zip file: {exc}") from None
    with zf:
        total = sum(i.file_size for i in zf.infolist())
        if total > MAX_ZIP_BYTES:
            raise ValueError(f"{archive} would unpack to {total / 2**30:.1f} GiB; refusing")
        for info in zf.infolist():
            name = info.filename
            if name.startswith("__MACOSX/") or info.is_dir():
                continue
            target = (dest / name).resolve()
            if dest.resolve() not in target.parents:
                raise ValueError(f"{archive}: member {name!r} would be written outside the folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
    return dest


def _find_candidates(root: Path, assignment: str) -> dict[str, list[Path]]:
    """submitted name -> notebooks found for it, for the layouts in the module docstring."""
    if (root / "submitted").is_dir():
        root = root / "submitted"
    entries = [p for p in root.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and entries[0].is_dir() and not any(entries[0].glob("*/*.ipynb")) \
            and not (entries[0] / assignment).is_dir() and any(entries[0].glob("*")):
        return _find_candidates(entries[0], assignment)  # a zip with one top-level folder
    found: dict[str, list[Path]] = {}
    for entry in sorted(entries):
        if entry.is_dir():
            folder = entry / assignment if (entry / assignment).is_dir() else entry
            found.setdefault(entry.name, []).extend(
                sorted(p for p in folder.glob("*.ipynb") if ".ipynb_checkpoints" not in p.parts))
        elif entry.suffix == ".ipynb":  # LMS style: <student>_<anything>.ipynb
            found.setdefault(entry.name.split("_")[0], []).append(entry)
    return found


# What nbgrader's ClearHiddenTests removes from a test cell for the student's release.
_HIDDEN = re.compile(r"### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS\n?", re.S)


def _sanitize(nb, info: SourceInfo) -> list[str]:
    """Restore nbgrader metadata the student edited; report edited/deleted test cells."""
    problems, seen = [], set()
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader")
        gid = meta.get("grade_id") if isinstance(meta, dict) else None
        if gid not in info.cells or gid in seen:
            continue
        seen.add(gid)
        trusted = info.cells[gid]
        graded = {**info.points, **info.manual}
        want = {"grade": gid in graded, "solution": gid in info.solutions,
                "locked": trusted["locked"]}
        if gid in graded:
            want["points"] = graded[gid]
        edits = [f"{k} {meta.get(k)!r} -> {v!r}" for k, v in want.items() if meta.get(k) != v]
        if edits:
            problems.append(f"cell {gid}: nbgrader metadata edited ({', '.join(edits)}); restored")
            meta.update(want)
        if cell.cell_type != trusted["cell_type"]:
            problems.append(f"cell {gid}: changed to a {cell.cell_type} cell; restored")
        if gid in info.points and cell.source.strip() not in (
                trusted["source"].strip(), _HIDDEN.sub("", trusted["source"]).strip()):
            problems.append(f"test cell {gid} edited; the gradebook's version is graded")
    for gid in info.points:
        if gid not in seen:
            problems.append(f"test cell {gid} deleted; restored from the gradebook")
    return problems


def ingest(submissions: Path, info: SourceInfo, workdir: Path) -> list[Submission]:
    """Find, validate and sanitize every submission; nothing found is dropped."""
    submissions = Path(submissions)
    if not submissions.exists():
        raise FileNotFoundError(f"no submissions at {submissions}")
    root = submissions
    if submissions.is_file():
        root = _safe_unzip(submissions, workdir / "unzipped")
    expected = grading.notebook_name(info.assignment)
    result = []
    candidates = _find_candidates(root, info.assignment)
    ids = student_ids(list(candidates))
    for name, paths in candidates.items():
        student = ids[name]
        sub = Submission(student, str(root), submitted_as=name)
        if student != name:
            sub.problems.append(f"submitted as {name!r}: graded as student id {student!r}")
        exact = [p for p in paths if p.name == expected]
        if exact:
            chosen = exact[-1]
        elif len(paths) == 1:
            chosen = paths[0]
            if not chosen.name.startswith(f"{name}_"):  # LMS names are <student>_...: fine
                sub.problems.append(f"notebook renamed to {chosen.name!r}; graded as {expected}")
        elif paths:
            named = [p for p in paths if info.assignment in p.name] or paths
            chosen = sorted(named)[-1]
            sub.problems.append(f"no {expected}; {len(paths)} notebooks found, graded "
                                f"{chosen.name!r}")
        else:
            sub.status = "missing"
            sub.problems.append(f"missing notebook: no .ipynb file submitted (expected {expected})")
            result.append(sub)
            continue
        sub.origin = str(chosen.relative_to(root))
        if len(exact) > 1:
            sub.problems.append(f"{len(exact)} copies of {expected}; graded {sub.origin}")
        try:
            nb = nbformat.reads(chosen.read_text(encoding="utf-8"), as_version=4)
            nbformat.validate(nb)
        except Exception as exc:  # JSON or nbformat errors: nothing can be graded
            sub.status = "corrupt"
            sub.problems.append(f"corrupt notebook ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); "
                                "scored 0")
            result.append(sub)
            continue
        sub.problems += _sanitize(nb, info)
        sub.notebook = workdir / "sanitized" / f"{student}.ipynb"
        sub.notebook.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, sub.notebook)
        result.append(sub)
    return result


# ----------------------------------------------------------------------------- shards
def _prepare_shard(course: Path, assignment: str, shard: Path, template: Path | None,
                   env: dict) -> None:
    shard.mkdir(parents=True, exist_ok=True)
    shutil.copy(course / "nbgrader_config.py", shard / "nbgrader_config.py")
    shutil.copytree(course / "solutions" / assignment, shard / "solutions" / assignment,
                    dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    if template is None:
        grading.run_nbgrader(["generate_assignment", assignment, "--force"], cwd=shard, env=env)
    else:
        shutil.copy(template / "gradebook.db", shard / "gradebook.db")
        shutil.copytree(template / "exercises", shard / "exercises", dirs_exist_ok=True)


def _stream(cmd: list[str], cwd: Path, env: dict, log: Path, pattern: str, tick,
            idle_s: float | None = None) -> int:
    """Run ``cmd``, saving its output to ``log`` and calling ``tick`` on lines with ``pattern``.

    ``idle_s``: stop the command (and its process group) when it prints nothing for that long,
    so that no step can hang the batch; the submissions it did not finish are graded by the
    re-check alone and say so."""
    env = {**env, "PYTHONUNBUFFERED": "1"}  # the log is complete even if the step hangs
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace",
                                start_new_session=True)
        last = [time.monotonic()]

        def watch() -> None:
            while proc.poll() is None:
                if idle_s and time.monotonic() - last[0] > idle_s:
                    out.write(f"\n[grade_class] no output for {idle_s:g} s: stopped\n")
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except OSError:
                        pass
                    return
                time.sleep(1)

        threading.Thread(target=watch, daemon=True).start()
        for line in proc.stdout:
            last[0] = time.monotonic()
            out.write(line)
            if pattern in line:
                tick()
        return proc.wait()


def _recheck_jobs(subs: list[Submission], info: SourceInfo) -> list[dict]:
    """The cells to run for each submission: student code as submitted, locked and test cells
    from the gradebook, deleted test cells put back where the release had them."""
    jobs = []
    for sub in subs:
        nb = nbformat.read(sub.notebook, as_version=4)
        entries: list[tuple[str | None, dict]] = []
        seen = set()
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            gid = cell.metadata.get("nbgrader", {}).get("grade_id")
            if gid in info.cells and gid not in seen:
                seen.add(gid)
                trusted = info.cells[gid]
                if gid in info.points:
                    entries.append((gid, {"id": gid, "kind": "test", "source": trusted["source"],
                                          "points": info.points[gid], "locked": True}))
                    continue
                if trusted["locked"]:
                    entries.append((gid, {"id": gid, "kind": "code", "locked": True,
                                          "source": trusted["source"]}))
                    continue
            entries.append((gid, {"id": gid or f"cell-{i}", "kind": "code", "locked": False,
                                  "source": cell.source}))
        for gid in info.order:  # deleted cells: after the previous cell the release has
            if gid in seen or gid not in info.cells or info.cells[gid]["cell_type"] != "code":
                continue
            if gid not in info.points and not info.cells[gid]["locked"]:
                continue
            before = info.order[:info.order.index(gid)]
            pos = max((k + 1 for k, (g, _) in enumerate(entries) if g in before), default=0)
            kind = "test" if gid in info.points else "code"
            entries.insert(pos, (gid, {"id": gid, "kind": kind, "locked": True,
                                       "source": info.cells[gid]["source"],
                                       "points": info.points.get(gid, 0.0)}))
            seen.add(gid)
        jobs.append({"student": sub.student, "cells": [e for _, e in entries]})
    return jobs


def _read_recheck(sub: Submission, events: list[dict], info: SourceInfo, timeout: float) -> None:
    last_started = None
    for ev in events:
        kind = ev.get("event")
        if kind == "start":
            last_started = ev["cell"]
        elif kind == "cell":
            cell, name, text = ev["cell"], ev.get("error_name"), ev.get("error_text") or ""
            # Raised in the cell, or inside a student function (the check names it then).
            raised = next((e for e in ("SystemExit", "KeyboardInterrupt")
                           if name == e or f"raised {e}" in text), None)
            if ev.get("timed_out") or name == "_Timeout":
                sub.problems.append(f"cell {cell}: ran past the {timeout:g} s limit "
                                    "(infinite loop?); interrupted")
            elif raised:
                sub.problems.append(f"cell {cell}: raised {raised}")
            elif name == "MemoryError" or "can't allocate memory" in text:
                sub.problems.append(f"cell {cell}: hit the memory limit")
            for marker, label in _BAD_RESULTS.items():
                if marker in text:
                    sub.problems.append(f"test {cell}: {label}")
            if ev.get("stdout_chars", 0) > FLOOD_CHARS:
                sub.problems.append(f"cell {cell}: flood of output ({ev['stdout_chars']:,} "
                                    "characters; truncated)")
            if ev.get("kind") == "test":
                sub.recheck[cell] = float(ev["score"])
                if ev.get("tampered_before"):
                    sub.problems.append(
                        f"before test {cell}: student code replaced protected objects "
                        f"({', '.join(ev['tampered_before'][:4])}); restored for the test")
                if ev.get("tampered_during"):
                    sub.problems.append(
                        f"test {cell}: protected objects replaced while it ran "
                        f"({', '.join(ev['tampered_during'][:4])}); cell scored 0")
        elif kind == "forged":
            sub.problems.append(f"cell {ev['cell']}: a forged result on the re-check's channel; "
                                "that and later tests score 0")
        elif kind == "exit":
            sub.problems.append(f"kernel died in cell {last_started} ({ev['reason']}); later "
                                "cells score 0")
    if not any(ev.get("event") in ("done", "exit") for ev in events):
        sub.problems.append("re-check did not finish")
    for gid in info.points:
        sub.recheck.setdefault(gid, 0.0)


class GradebookUnavailable(RuntimeError):
    """The gradebook URL cannot be opened; the message says what to check."""


def check_gradebook(db_url: str) -> None:
    """Open the gradebook once, before any grading, so that a wrong ``--db`` fails in seconds with
    a message instead of after the batch (nbgrader creates its tables on first use)."""
    from nbgrader.api import Gradebook

    try:
        with Gradebook(db_url):
            pass
    except Exception as exc:  # SQLAlchemy's errors (no server, no database, no driver, bad URL)
        shown = re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", db_url)  # never print a password
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        if isinstance(exc, FileNotFoundError) and "alembic" in str(exc):
            raise GradebookUnavailable(
                f"cannot create the gradebook {shown}: nbgrader runs the `alembic` command, "
                f"which is not on PATH ({os.environ.get('PATH', '')}). It is installed with "
                f"nbgrader next to the interpreter: run the grader with the Python of the "
                f"environment that has nbgrader (`{sys.executable} -m course_lib.grade_class "
                f"...`), or `{sys.executable} -m pip install -r requirements.txt`.") from None
        raise GradebookUnavailable(
            f"cannot open the gradebook {shown} ({type(exc).__name__}: {first}). For PostgreSQL "
            "check that the server runs and accepts connections from this host, that the "
            "database exists (`createdb gradebook`) and the user may use it; URLs look like "
            "postgresql://USER@HOST:5432/gradebook (driver: psycopg, in requirements.txt).") \
            from None


def _write_scores(db_url: str, assignment: str, subs: list[Submission], as_manual: bool) -> None:
    """Record final scores: in a shard as manual overrides (for feedback), in the course as
    auto scores (one submission per student, ungradable ones included)."""
    import warnings

    from nbgrader.api import Gradebook

    with Gradebook(db_url) as gb, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SQLAlchemy's autoflush notices from nbgrader's API
        for sub in subs:
            gb.update_or_create_student(sub.student)
            submission = gb.update_or_create_submission(assignment, sub.student)
            for nb in submission.notebooks:
                for grade in nb.grades:
                    if grade.name not in sub.final:
                        continue
                    value = sub.final[grade.name]
                    if as_manual:
                        if grade.auto_score is None or float(grade.auto_score) != value:
                            grade.manual_score = value
                    else:
                        grade.auto_score, grade.manual_score = value, None
                    grade.needs_manual_grade = False
        gb.db.commit()


def _fallback_feedback(sub: Submission, info: SourceInfo, dest: Path) -> Path:
    rows = "".join(f"<tr><td>{html.escape(g)}</td><td>{sub.final.get(g, 0):g}</td>"
                   f"<td>{p:g}</td></tr>" for g, p in info.points.items())
    problems = "".join(f"<li>{html.escape(p)}</li>" for p in sub.problems)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(f"<html><body><h1>{html.escape(info.assignment)}: "
                    f"{html.escape(sub.student)}</h1><p>Score {sub.score:g} / "
                    f"{info.max_score:g}</p><table border=1><tr><th>test</th><th>score</th>"
                    f"<th>points</th></tr>{rows}</table><h2>Problems</h2><ul>{problems}</ul>"
                    "</body></html>")
    return dest


def _grade_shard(shard: Path, subs: list[Submission], info: SourceInfo, settings: dict,
                 bars: dict) -> None:
    """autograde -> re-check -> final scores -> feedback, for one shard course. Student code
    runs only inside ``settings["sandbox"]`` (when there is one)."""
    a, nbname = info.assignment, grading.notebook_name(info.assignment)
    timeout, box, env = settings["cell_timeout"], settings["sandbox"], settings["env"]
    for sub in subs:
        target = shard / "submitted" / sub.student / a
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(sub.notebook, target / nbname)
    t = str(int(timeout))
    seconds = settings.setdefault("seconds", {})  # per stage, for the benchmark
    started = time.monotonic()
    with settings.get("broker") or contextlib.nullcontext():  # warm kernels, where there are
        code = _stream([sys.executable, "-m", "nbgrader", "autograde", a, "--create", "--force",
                        f"--Execute.timeout={t}", f"--ExecutePreprocessor.timeout={t}",
                        "--OverwriteCells.add_missing_cells=True",
                        *(box.kernel_manager_args("kernel") if box else [])],
                       shard, env, shard / "autograde.log", "Autograding",
                       bars["autograde"].update,
                       # a notebook may run its kernel's whole budget without nbgrader printing
                       # a line
                       idle_s=timeout * (sum(c["cell_type"] == "code"
                                             for c in info.cells.values()) + 2) + 180)
    seconds["autograde"], started = time.monotonic() - started, time.monotonic()
    graded = grading.scores(shard, a)
    stopped = _autograding_when_stopped(shard / "autograde.log") if code < 0 else None
    for sub in subs:
        autograded = shard / "autograded" / sub.student / a / nbname
        if autograded.is_file() and sub.student in graded and sub.student != stopped:
            sub.nbgrader = {g: s for g, (s, _) in graded[sub.student].cells.items()
                            if g in info.points}
            sub.problems += _slow_cells(autograded, timeout)
        if box is not None:
            sub.problems += _sandbox_problems(Path(box.events_dir), sub.student, box)
    events = recheck.recheck(_recheck_jobs(subs, info), timeout, settings["mem_mb"],
                             [f"course_lib.checks.{a}"], box=box, log=shard / "recheck.log",
                             progress=lambda student: bars["recheck"].update())
    seconds["recheck"] = time.monotonic() - started
    for sub in subs:
        _read_recheck(sub, events.get(sub.student, []), info, timeout)
        if sub.nbgrader is None:
            sub.status = "graded-by-recheck"
            sub.problems.append("nbgrader could not grade this notebook (kernel died or hung: "
                                "see autograde.log); scored by the re-check")
            sub.final = dict(sub.recheck)
        else:
            for gid in info.points:
                n, r = sub.nbgrader.get(gid, 0.0), sub.recheck[gid]
                sub.final[gid] = min(n, r)
                if n != r:
                    sub.problems.append(f"test {gid}: nbgrader gave {n:g}, the re-check {r:g}; "
                                        f"{min(n, r):g} kept")
    _write_scores(f"sqlite:///{shard / 'gradebook.db'}", a, subs, as_manual=True)
    started = time.monotonic()
    _stream([sys.executable, "-m", "nbgrader", "generate_feedback", a, "--force"], shard, env,
            shard / "feedback.log", "Converting notebook", bars["feedback"].update)
    seconds["feedback"] = time.monotonic() - started


def _autograding_when_stopped(log: Path) -> str | None:
    """The student nbgrader was autograding when it was killed (hung on a kernel whose channel a
    submission broke, ...): its autograded copy and its gradebook entry (zeros) were written
    BEFORE the notebook ran, so they are no grade (that notebook is scored by the re-check)."""
    found = re.findall(r"Autograding .*?[/\\]autograded[/\\]([^/\\]+)[/\\]",
                       log.read_text(errors="replace"))
    return found[-1] if found else None


def _slow_cells(autograded: Path, timeout: float) -> list[str]:
    """Cells that used more than half their time limit, from nbclient's timing metadata, and a
    notebook that used more than half of what all its cells together may take."""
    from datetime import datetime

    try:
        nb = nbformat.read(autograded, as_version=4)
    except Exception:  # nbgrader wrote it; a broken one is reported elsewhere
        return []
    problems, total, code_cells = [], 0.0, 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        code_cells += 1
        timing = cell.metadata.get("execution", {})
        try:
            began = datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
            ended = datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
        except (KeyError, ValueError, AttributeError):
            continue
        seconds = (ended - began).total_seconds()
        total += seconds
        if seconds > 0.5 * timeout:
            gid = cell.metadata.get("nbgrader", {}).get("grade_id", cell.get("id", "?"))
            problems.append(f"cell {gid}: took {seconds:.0f} s of its {timeout:g} s limit "
                            "(slows the whole batch)")
    if code_cells and total > 0.5 * timeout * code_cells:
        problems.append(f"used {total:.0f} s, most of its time budget "
                        f"({timeout * code_cells:g} s)")
    return problems


def _sandbox_problems(events_dir: Path, student: str, box) -> list[str]:
    """What the sandbox's supervisor saw of this student's kernel: processes it started, files
    it tried to change outside its folder, and why it was stopped."""
    path = events_dir / f"kernel-{student}.json"
    problems = []
    if not path.is_file():
        return problems
    for line in path.read_text().splitlines():
        try:
            run = json.loads(line)
        except ValueError:
            continue
        if run.get("killed"):
            problems.append(f"sandbox stopped the kernel: it {run['killed']}")
        spawned = sorted({e["detail"] for e in run.get("audit", []) if e["kind"] == "spawn"})
        # The audit hook sees every process Python starts; the supervisor's count (polled) also
        # catches C-level forks, but may glimpse one transient process of the kernel's own.
        if spawned or run.get("max_processes", 0) > 2:
            problems.append(f"started processes ({', '.join(spawned[:3]) or 'not from Python'}"
                            f", up to {run.get('max_processes', 0)} seen at once); all were "
                            "ended with the notebook")
        writes = [e["detail"] for e in run.get("audit", []) if e["kind"] == "write"]
        if writes:
            problems.append(f"tried to change files outside its folder ({'; '.join(writes[:3])}"
                            f"{'; ...' if len(writes) > 3 else ''}): refused by the sandbox")
    return problems


# ----------------------------------------------------------------------------- outputs
def _course_lib_hash() -> str:
    """Hash of every source file of course_lib (a submission that rewrote them on disk would
    change every later grade: impossible in the sandbox, checked anyway)."""
    folder = Path(grading.__file__).parents[1]
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def write_csv(path: Path, subs: list[Submission], info: SourceInfo) -> Path:
    tests = list(info.points)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["student", "submitted_as", "assignment", "status", "score",
                         "max_score", *tests, "manual_points_pending", "nbgrader_score",
                         "source", "problems"])
        for sub in sorted(subs, key=lambda s: s.student):
            nbg = "" if sub.nbgrader is None else f"{sum(sub.nbgrader.values()):g}"
            writer.writerow([sub.student, sub.submitted_as or sub.student, info.assignment,
                             sub.status, f"{sub.score:g}",
                             f"{info.max_score:g}", *(f"{sub.final.get(t, 0.0):g}" for t in tests),
                             f"{info.manual_max:g}", nbg, sub.origin, " | ".join(sub.problems)])
    return path


def write_report(out: Path, subs: list[Submission], info: SourceInfo,
                 batch_problems: list[str], seconds: float, notes: list[str] = ()) -> Path:
    """Plots (total score histogram, per-question distribution, hardest tests) and an HTML page."""
    import matplotlib
    matplotlib.use("Agg")  # a script, not a chapter: never open a window
    import matplotlib.pyplot as plt

    tests = list(info.points)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    totals = [s.score for s in subs]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(totals, bins=min(20, max(5, len(set(totals)))), range=(0, info.max_score),
            color="#4c72b0")
    ax.set(xlabel=f"score (max {info.max_score:g})", ylabel="students",
           title=f"{info.assignment}: total scores (n={len(subs)})")
    fig.tight_layout()
    fig.savefig(plots / "scores.png", dpi=110)
    plt.close(fig)

    fractions = [[s.final.get(t, 0.0) / info.points[t] for s in subs] for t in tests]
    fig, ax = plt.subplots(figsize=(1.2 * len(tests) + 2, 3.5))
    for i, values in enumerate(fractions):
        full = sum(v == 1 for v in values)
        zero = sum(v == 0 for v in values)
        part = len(values) - full - zero
        ax.bar(i, full, color="#55a868", label="full" if i == 0 else None)
        ax.bar(i, part, bottom=full, color="#dd8452", label="partial" if i == 0 else None)
        ax.bar(i, zero, bottom=full + part, color="#c44e52", label="zero" if i == 0 else None)
    ax.set_xticks(range(len(tests)), [f"{t}\n({info.points[t]:g} pt)" for t in tests],
                  fontsize=9.5)
    ax.set(ylabel="students", title="score per question")
    ax.legend(fontsize=9.5)
    fig.tight_layout()
    fig.savefig(plots / "per_question.png", dpi=110)
    plt.close(fig)

    means = sorted(((sum(v) / max(len(v), 1), t) for v, t in zip(fractions, tests)))
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(tests) + 1.2))
    ax.barh([t for _, t in means], [100 * m for m, _ in means], color="#8172b3")
    ax.invert_yaxis()
    ax.set(xlabel="mean score (% of points)", xlim=(0, 100), title="hardest tests first")
    fig.tight_layout()
    fig.savefig(plots / "hardest_tests.png", dpi=110)
    plt.close(fig)

    flagged = [s for s in subs if s.problems]
    items = "".join(f"<li><b>{html.escape(s.student)}</b> ({s.score:g}/{info.max_score:g}): "
                    + "; ".join(html.escape(p) for p in s.problems) + "</li>" for s in flagged)
    batch = "".join(f"<li>{html.escape(p)}</li>" for p in batch_problems)
    batch += "".join(f"<li>note: {html.escape(n)}</li>" for n in notes)
    page = out / "report.html"
    mean = sum(totals) / max(len(totals), 1)
    page.write_text(
        f"<html><head><meta charset='utf-8'><title>{info.assignment} report</title></head><body>"
        f"<h1>{info.assignment}: {len(subs)} submissions</h1>"
        f"<p>mean {mean:.2f} / {info.max_score:g} autograded points; graded in {seconds:.0f} s; "
        f"{len(flagged)} submissions with problems."
        + (f" {info.manual_max:g} more points per submission are manually graded answers: grade "
           "them in nbgrader's formgrader (they are left pending in the gradebook)."
           if info.manual else "") + "</p>"
        f"<img src='plots/scores.png'><img src='plots/per_question.png'>"
        f"<img src='plots/hardest_tests.png'><h2>Batch problems</h2><ul>{batch or '<li>none</li>'}"
        f"</ul><h2>Problems by submission</h2><ul>{items or '<li>none</li>'}</ul></body></html>")
    return page


# ----------------------------------------------------------------------------- driver
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
    dispatch: cluster.Dispatch | None = None  # where and how the submissions were graded


def grade_class(assignment: str, submissions: Path, course: Path, workers: int = 1,
                db_url: str | None = None, out: Path | None = None, cell_timeout: float = 60,
                mem_mb: int = DEFAULT_MEM_MB, quiet: bool = False, use_sandbox: bool = True,
                limits: sandbox.Limits | None = None, scheduler: str | None = None,
                chunk_size: int | None = None) -> ClassResult:
    """The whole pipeline (module docstring). Returns what it wrote; raises only on setup errors
    (no such assignment, unreadable zip, no sandbox), never because of one student's notebook.

    ``use_sandbox=False`` runs student code as the caller, with the caller's files in reach: only
    for machines that cannot sandbox (the report says so on every page). ``workers``: processes
    of the embedded dask cluster; ``scheduler``: grade on an existing one instead
    (``tcp://HOST:PORT``); ``chunk_size``: submissions per task."""
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
        sandbox.check_available()
    grading.interpreter_on_path()  # for nbgrader's `alembic`, here and in every subprocess
    db_url = db_url or f"sqlite:///{course / 'gradebook.db'}"
    check_gradebook(db_url)
    out = Path(out or course / "grading" / assignment).resolve()
    for old in (out.iterdir() if out.is_dir() else []):  # keep cluster.RESULTS: resume
        if old.name != cluster.RESULTS:
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    work = out / "work"
    work.mkdir(parents=True)
    lib_hash = _course_lib_hash()
    batch_problems = [] if use_sandbox else [
        "graded WITHOUT the sandbox (--no-sandbox): student code ran as the grader, with the "
        "course, the gradebook and other submissions in reach"]

    # The template generates the assignment privately; the course's gradebook gets it too.
    env = kernel_env(sandbox.install_kernelspec(work / "jupyter-setup", None, mem_mb))
    template = work / "template"  # every task's private shard course is a copy of it
    _prepare_shard(course, assignment, template, None, env)
    info = source_info(f"sqlite:///{template / 'gradebook.db'}", assignment,
                       template / "exercises" / assignment / grading.notebook_name(assignment))
    from nbgrader.api import Gradebook, MissingEntry
    with Gradebook(db_url) as gb:
        try:
            gb.find_assignment(assignment)
            known = True
        except MissingEntry:
            known = False
    if not known:
        grading.run_nbgrader(["generate_assignment", assignment, "--force", f"--db={db_url}"],
                             cwd=course, env=env)

    subs = ingest(submissions, info, work)
    gradable = [s for s in subs if s.notebook is not None]
    hide = [course, out, submissions if submissions.is_dir() else submissions.parent]
    if use_sandbox:
        code_cells = sum(1 for c in info.cells.values() if c["cell_type"] == "code")
        limits = limits or sandbox.Limits(mem_mb=mem_mb)
        # A kernel may take at most what all its cells may take, plus its start.
        limits.wall_s = limits.wall_s or cell_timeout * (code_cells + 2) + 60
    else:
        limits = None
    # Dispatch: tasks of a few submissions on dask workers (course_lib.grading.cluster); each
    # grades in a private shard course copied from the template and returns results as data.
    bar = tqdm(total=len(gradable), desc="graded", file=sys.stdout, unit="nb", disable=quiet)
    with cluster.Engine(workers, scheduler, log=lambda line: None if quiet else print(line)) \
            as engine:
        dispatch = cluster.grade_submissions(engine, subs, info, template, out, cell_timeout,
                                             mem_mb, limits, hide, chunk_size, bar.update)
    bar.close()

    nbname = grading.notebook_name(assignment)
    for sub in subs:
        if sub.notebook is None:
            sub.final = {g: 0.0 for g in info.points}
        if sub.feedback is None:
            sub.feedback = _fallback_feedback(
                sub, info, out / "feedback" / sub.student / assignment /
                nbname.replace(".ipynb", ".html"))
    try:
        _write_scores(db_url, assignment, subs, as_manual=False)
    except Exception as exc:  # the CSV below is still written: no grade is lost
        batch_problems.append(f"could not write the course gradebook {db_url} "
                              f"({type(exc).__name__}: {exc}); grades.csv has every score")

    if _course_lib_hash() != lib_hash:
        batch_problems.append("course_lib changed on disk during grading: a submission may have "
                              "rewritten it; treat these grades as untrustworthy")
    seconds = time.monotonic() - start
    csv_path = write_csv(out / "grades.csv", subs, info)
    report = write_report(out, subs, info, batch_problems, seconds, dispatch.notes)
    lines = [f"{info.assignment}: {len(subs)} submissions, {sum(bool(s.problems) for s in subs)} "
             f"with problems, graded in {seconds:.1f} s"] + [f"BATCH: {p}" for p in batch_problems]
    lines += [f"NOTE: {n}" for n in dispatch.notes]
    for sub in sorted(subs, key=lambda s: s.student):
        lines += [f"{sub.student} ({sub.score:g}/{info.max_score:g}): {p}" for p in sub.problems]
    problems = out / "problems.txt"
    problems.write_text("\n".join(lines) + "\n")
    return ClassResult(subs, info, out, csv_path, report, problems, seconds, batch_problems,
                       dispatch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
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
                        help="submissions per task (default: a few tasks per worker, <= 16)")
    parser.add_argument("--db", default=None,
                        help="gradebook URL (default sqlite:///COURSE/gradebook.db), e.g. "
                             "postgresql://user@host/gradebook")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default COURSE/grading/ASSIGNMENT)")
    parser.add_argument("--cell-timeout", type=float, default=60, help="seconds per cell")
    parser.add_argument("--mem-mb", type=int, default=DEFAULT_MEM_MB,
                        help="address-space limit per kernel, MiB")
    parser.add_argument("--no-sandbox", action="store_true",
                        help="run student code WITHOUT the bubblewrap sandbox (unsafe: only "
                             "where bwrap cannot run; the report is marked)")
    args = parser.parse_args(argv)
    if args.no_sandbox:
        print("WARNING: grading without the sandbox: student code runs as you, with the course, "
              "the gradebook and every submission in reach.", file=sys.stderr)
    try:
        result = grade_class(args.assignment, args.submissions, args.course, args.workers,
                             args.db, args.out, args.cell_timeout, args.mem_mb,
                             use_sandbox=not args.no_sandbox, scheduler=args.scheduler,
                             chunk_size=args.chunk_size)
    except (sandbox.SandboxUnavailable, cluster.ClusterError, GradebookUnavailable) as exc:
        print(f"grade_class: {exc}", file=sys.stderr)
        return 2
    print(result.problems.read_text())
    print(f"grades:   {result.csv}\nreport:   {result.report}\nfeedback: {result.out / 'feedback'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
