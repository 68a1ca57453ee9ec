"""Grade on dask.distributed: the same tasks on a laptop or on a cluster of many hosts.

:class:`Engine` is where grading runs. By default it starts an embedded ``LocalCluster`` (one
worker process per ``--workers``, one task at a time each), so a laptop needs nothing new; with
``scheduler="tcp://HOST:PORT"`` it sends the same tasks to a cluster the instructor started
(``dask scheduler`` on one host, ``dask worker tcp://HOST:PORT`` on each grading host, or
dask-jobqueue / dask-kubernetes; see book/instructor_guide.md, "Grading on a cluster").

One task (:func:`grade_chunk`) grades a few submissions end to end on the worker, in a private
temporary course built from data the coordinator sends (the assignment's sources and the
sanitized notebooks: no shared file system needed), and returns scores, problems, feedback HTML
and logs **as data**. Only the coordinator (:func:`grade_submissions`) writes the course gradebook
and the outputs. Around that:

* **environments must match**: every worker's :func:`fingerprint` (Python, course_lib source,
  nbgrader, torch, the assignment's checks) is compared with the coordinator's before anything
  runs, and again inside each task (a worker that joined later); a mismatch stops the batch with
  a message naming the worker and what differs (:class:`EnvironmentMismatch`);
* **failure is normal**: a task whose worker dies is retried on another worker by the scheduler;
  a chunk that fails again is split into one task per submission, and a submission whose grading
  kills its worker twice is graded 0 with the reason in its row (:class:`Failure`);
* **resume**: each graded submission is stored at once in ``OUT/results/`` under a key made of
  the sanitized notebook, the checks, the assignment's source and the grading options
  (:class:`ResultCache`); a re-run grades only what is missing or changed;
* **GPU work on GPU workers**: an assignment whose checks module lists ``GPU_TESTS`` goes to
  workers started with ``--resources GPU=1`` where there are any (the whole notebook: its cells
  share one kernel); without such a worker it is graded on CPU as before and the report says so.
"""
from __future__ import annotations

import atexit
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

# How often the scheduler may see a task's worker die before the task fails (KilledWorker):
# 1 = one retry elsewhere. A submission that kills two workers is graded 0.
ALLOWED_FAILURES = 1
ALLOWED_LOSSES = 2       # a finished task's result lost with its worker: graded again, twice
NO_WORKER_TIMEOUT_S = 600  # no worker able to take the tasks this long: the rest fail (rows say so)
POLL_S = 5               # how often the coordinator looks for new or vanished workers
MAX_LOG_CHARS = 200_000  # of each shard log sent back to the coordinator
RESULTS = "results"      # OUT/results/<student>.json: the resume cache
MAX_CHUNK = 32           # submissions per task at most (see chunked)
# The resource name GPU workers declare (``dask worker ... --resources GPU=1``).
GPU = "GPU"


class ClusterError(RuntimeError):
    """The cluster cannot grade (no workers, unreachable scheduler); the message says what to do."""


class EnvironmentMismatch(ClusterError):
    """A worker's environment differs from the coordinator's: its grades could differ."""


# ----------------------------------------------------------------------------- environment
def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def checks_hash(assignment: str) -> str:
    """Hash of the checks the assignment is graded with, as this process imports them."""
    import course_lib

    folder = Path(course_lib.__file__).parent / "checks"
    digest = hashlib.sha256()
    for name in ("__init__.py", "cases.py", f"{assignment}.py"):
        path = folder / name
        digest.update(name.encode())
        digest.update(path.read_bytes() if path.is_file() else b"")
    return digest.hexdigest()[:16]


def fingerprint(assignment: str, sandboxed: bool = True) -> dict[str, str]:
    """What must be equal on every host for a submission to get the same grade everywhere.

    Versions are read from package metadata (importing torch here would cost seconds per worker);
    course_lib is hashed file by file, since an edited working copy keeps its version number.
    ``sandboxed``: also whether bubblewrap works here (a worker that cannot sandbox is refused)."""
    import course_lib
    from course_lib.grading import sandbox
    from course_lib.grading.grade_class import _course_lib_hash

    found = {
        "python": platform.python_version(),
        "course_lib": f"{course_lib.__version__} (source {_course_lib_hash()[:16]})",
        "nbgrader": _version("nbgrader"),
        # The release, not the build: a GPU host's CUDA build (2.13.0+cu128) grades like the
        # coordinator's CPU build (2.13.0+cpu); the GPU-only checks are what differs, by design.
        "torch": _version("torch").split("+")[0],
        "ipykernel": _version("ipykernel"),
        f"checks of {assignment}": checks_hash(assignment),
    }
    if sandboxed:
        try:
            sandbox.check_available()
            found["sandbox"] = "bubblewrap works"
        except sandbox.SandboxUnavailable as exc:
            found["sandbox"] = str(exc)
    return found


def differences(ours: dict[str, str], theirs: dict[str, str]) -> list[str]:
    return [f"{key}: {theirs.get(key, 'missing')} on the worker, {value} on the coordinator"
            for key, value in ours.items() if theirs.get(key) != value]


def _mismatch_message(worker: str, diffs: list[str]) -> str:
    return (f"worker {worker} does not have the coordinator's grading environment, so its grades "
            f"could differ; refusing to grade on it:\n  " + "\n  ".join(diffs) +
            "\nInstall the same requirements.txt and the same course_lib on every worker (pip "
            "install -r requirements.txt in a checkout of the same commit), restart its `dask "
            "worker`, or stop that worker.")


# ----------------------------------------------------------------------------- GPU routing
def gpu_tests(assignment: str) -> tuple[str, ...]:
    """Test cells that need a GPU to be graded for real: ``GPU_TESTS`` in the assignment's checks
    module, read from its source (importing it would import torch in the coordinator)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec(f"course_lib.checks.{assignment}")
    if spec is None or not spec.origin:
        return ()
    for node in ast.parse(Path(spec.origin).read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "GPU_TESTS"
                                                for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    return ()


def route(engine: "Engine", assignment: str) -> tuple[dict | None, str | None]:
    """Worker resources the assignment's tasks need, and a note for the report."""
    needs = gpu_tests(assignment)
    if not needs:
        return None, None
    gpus = engine.gpu_workers()
    if gpus:
        return {GPU: 1}, (f"{', '.join(needs)} need a GPU: every submission was graded on a GPU "
                          f"worker ({', '.join(gpus)})")
    return None, (f"{', '.join(needs)} need a GPU, but no worker declares one (dask worker "
                  f"--resources {GPU}=1): graded on CPU, where those checks pass with a note")


# ----------------------------------------------------------------------------- engine
@dataclass
class Failure:
    """What came back instead of a result for one item: the row's reason."""
    reason: str


def _set_allowed_failures(value: int, dask_scheduler=None) -> int:
    """Runs on the scheduler: set how often a task may lose its worker; returns the old value."""
    old = dask_scheduler.allowed_failures
    dask_scheduler.allowed_failures = value
    return old


class Engine:
    """A dask ``Client`` on an embedded ``LocalCluster`` (default) or an existing scheduler.

    Use as a context manager; :meth:`map_chunks` runs a function over chunks of items with the
    retry and split policy described in the module docstring."""

    def __init__(self, workers: int = 1, scheduler: str | None = None,
                 connect_timeout: float = 30, log: Callable[[str], None] | None = None,
                 no_worker_timeout: float = NO_WORKER_TIMEOUT_S) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers, self.scheduler = workers, scheduler
        self.connect_timeout, self.no_worker_timeout = connect_timeout, no_worker_timeout
        self.log = log or (lambda message: None)
        self.client = self.cluster = None
        self._old_allowed_failures: int | None = None

    # -- lifecycle
    def __enter__(self) -> "Engine":
        import dask
        from distributed import Client, LocalCluster

        if self.scheduler is None:
            with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
                                  "distributed.worker.daemon": False}):
                # One single-threaded worker process per grading slot; each task starts its own
                # nbgrader and kernel processes. memory_limit=0: the kernels' own RLIMIT_AS
                # bounds memory (the nanny would only see the worker process's own memory).
                self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1,
                                            processes=True, host="127.0.0.1",
                                            dashboard_address="127.0.0.1:0", memory_limit=0,
                                            silence_logs=50)
                self.client = Client(self.cluster)
            self.wait_for_workers(self.workers)
        else:
            try:
                self.client = Client(self.scheduler, timeout=self.connect_timeout)
            except (OSError, TimeoutError) as exc:
                raise ClusterError(
                    f"cannot reach the dask scheduler at {self.scheduler} ({exc}). Start one with "
                    "`dask scheduler --host HOST --port PORT` and workers with `dask worker "
                    "tcp://HOST:PORT --nthreads 1`, then pass that address to --scheduler.") \
                    from None
            self._old_allowed_failures = self.client.run_on_scheduler(
                _set_allowed_failures, ALLOWED_FAILURES)
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._old_allowed_failures is not None:
                self.client.run_on_scheduler(_set_allowed_failures, self._old_allowed_failures)
        except Exception:  # the scheduler may be gone; nothing left to restore
            pass
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    # -- workers
    def wait_for_workers(self, n: int = 1, timeout: float = 60) -> None:
        try:
            self.client.wait_for_workers(n, timeout=timeout)
        except TimeoutError:
            raise ClusterError(
                f"no dask worker joined the scheduler {self.scheduler or '(embedded)'} within "
                f"{timeout:g} s. Start workers with `dask worker {self.scheduler or 'ADDRESS'} "
                "--nthreads 1` on the grading hosts.") from None

    def worker_info(self) -> dict[str, dict]:
        """address -> {"resources": {...}, ...} for every connected worker (the scheduler's
        view; a worker's declared resources are those of ``dask worker --resources``)."""
        return self.client.scheduler_info(n_workers=-1)["workers"]

    def slots(self, resources: dict | None = None) -> int:
        """Worker threads that could run a task needing ``resources`` now."""
        need = resources or {}
        return sum(w.get("nthreads", 1) for w in self.worker_info().values()
                   if all((w.get("resources") or {}).get(r, 0) >= n for r, n in need.items()))

    def gpu_workers(self) -> list[str]:
        return sorted(a for a, w in self.worker_info().items()
                      if (w.get("resources") or {}).get(GPU, 0) >= 1)

    def check_environment(self, assignment: str, sandboxed: bool = True) -> dict[str, str]:
        """Compare every connected worker's fingerprint with ours; raise on any difference."""
        ours = fingerprint(assignment, sandboxed)
        theirs = self.client.run(fingerprint, assignment, sandboxed)
        refused = {w: differences(ours, fp) for w, fp in theirs.items()}
        refused = {w: d for w, d in refused.items() if d}
        if refused:
            raise EnvironmentMismatch("\n".join(_mismatch_message(w, d)
                                                for w, d in sorted(refused.items())))
        return ours

    # -- running
    def map_chunks(self, fn: Callable, chunks: list[list], *args,
                   resources: dict | None = None, key: Callable = repr,
                   on_done: Callable[[object, object], None] | None = None) -> dict:
        """Run ``fn(chunk, *args) -> list of results`` (one per item) for every chunk.

        Returns ``key(item) -> result or Failure``. A chunk that fails (its workers died
        ``ALLOWED_FAILURES + 1`` times, or it raised) is split into single items; a single item
        that fails is a :class:`Failure` with the reason. ``on_done(item, result)`` is called in
        this thread as soon as each item's result arrives (to store it: resume).
        :class:`EnvironmentMismatch` raised on a worker stops everything."""
        from collections import deque

        from distributed import wait
        from distributed.scheduler import KilledWorker

        results: dict = {}
        pending: dict = {}          # future -> chunk
        lost: dict[int, int] = {}   # id(chunk) -> times its result was lost or cancelled
        backlog = deque(c for c in chunks if c)
        no_worker_since = None

        def fill() -> None:
            # No more tasks in flight than worker threads that may run them: the scheduler blames
            # a worker's death on every task queued on that worker, and an innocent submission
            # queued beside a killer must not be failed with it.
            while backlog and len(pending) < max(1, self.slots(resources)):
                chunk = backlog.popleft()
                digest = hashlib.sha1(repr([key(i) for i in chunk]).encode()).hexdigest()[:10]
                future = self.client.submit(
                    fn, chunk, *args, resources=resources, pure=False,
                    key=f"{getattr(fn, '__name__', 'task')}-{digest}-{time.monotonic_ns()}")
                pending[future] = chunk

        def fail(item, reason: str) -> None:
            results[key(item)] = Failure(reason)
            if on_done:
                on_done(item, results[key(item)])

        while backlog or pending:
            fill()  # also when workers joined since the last round
            try:
                done = wait(list(pending), timeout=POLL_S, return_when="FIRST_COMPLETED").done
            except TimeoutError:
                done = set()
            if not done:
                if self.slots(resources):
                    no_worker_since = None
                    continue
                no_worker_since = no_worker_since or time.monotonic()
                if time.monotonic() - no_worker_since < self.no_worker_timeout:
                    continue
                self.log(f"no worker for {self.no_worker_timeout:g} s: giving up")
                for chunk in [*pending.values(), *backlog]:
                    for item in chunk:
                        fail(item, f"no dask worker could grade it for "
                                   f"{self.no_worker_timeout:g} s (all died or left); scored 0, "
                                   "run grade_class again to grade it")
                for future in pending:
                    future.cancel()
                break
            for future in done:
                chunk = pending.pop(future)
                if future.status == "finished":
                    try:
                        values = future.result()
                    except Exception:  # its result was lost with its worker
                        values = None
                    if values is not None:
                        for item, result in zip(chunk, values):
                            results[key(item)] = result
                            if on_done:
                                on_done(item, result)
                        continue
                if future.status in ("finished", "cancelled"):  # lost: grade it again
                    lost[id(chunk)] = lost.get(id(chunk), 0) + 1
                    if lost[id(chunk)] <= ALLOWED_LOSSES:
                        self.log(f"a task of {len(chunk)} was lost ({future.status}); again")
                        backlog.appendleft(chunk)
                        continue
                    for item in chunk:
                        fail(item, f"its grading task was lost {lost[id(chunk)]} times "
                                   "(scheduler or client restarted?); scored 0, run grade_class "
                                   "again to grade it")
                    continue
                exc = future.exception()
                if isinstance(exc, EnvironmentMismatch):
                    raise exc
                if len(chunk) > 1:
                    self.log(f"a task of {len(chunk)} failed ({_describe(exc)}); "
                             "retrying its items one by one")
                    backlog.extendleft([item] for item in reversed(chunk))
                elif isinstance(exc, KilledWorker):
                    fail(chunk[0], f"grading it killed its worker {exc.allowed_failures + 1} "
                                   f"times (last on {exc.last_worker.address}); scored 0")
                else:
                    fail(chunk[0], f"grading failed on the worker ({_describe(exc)}); scored 0")
        return results


def _describe(exc: BaseException) -> str:
    from distributed.scheduler import KilledWorker

    if isinstance(exc, KilledWorker):
        return f"its worker died {exc.allowed_failures + 1} times"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1][:300] if text else ''}"


def chunked(items: list, workers: int, chunk_size: int | None = None) -> list[list]:
    """Items in tasks: one per worker for a small class (each task pays the start-up of
    nbgrader, the kernel nursery, the re-check's server and the feedback converter: about 15 s
    on 2 cores, as much as grading 3-4 ex01 submissions), at most
    ``MAX_CHUNK`` per task for a large one, so that the work balances and a lost worker costs
    little."""
    if not items:
        return []
    size = chunk_size or max(1, min(MAX_CHUNK, math.ceil(len(items) / workers)))
    return [items[i:i + size] for i in range(0, len(items), size)]


# ----------------------------------------------------------------------------- the grading task
@dataclass
class Work:
    """One submission as sent to a worker: the coordinator's record and the notebook's bytes."""
    student: str
    notebook: bytes
    problems: list[str]  # found at ingest (kept by the coordinator; the worker adds its own)


@dataclass
class ChunkJob:
    """Everything a task needs besides the submissions, as data (workers share no files)."""
    assignment: str
    bundle: dict[str, bytes]   # the generated course: see course_bundle
    info: object               # grade_class.SourceInfo
    cell_timeout: float
    mem_mb: int
    fingerprint: dict[str, str]
    limits: object = None      # sandbox.Limits; None: no sandbox (--no-sandbox)
    hide: list[str] = field(default_factory=list)  # coordinator folders to mask where they exist

    def bundle_hash(self, sources_only: bool = False) -> str:
        """Hash of the bundle; ``sources_only``: of what the grades depend on (the config and
        the assignment's sources), not of the files generated from them (stamped each run)."""
        digest = hashlib.sha256()
        for name in sorted(self.bundle):
            if sources_only and not (name == "nbgrader_config.py"
                                     or name.startswith("solutions/")):
                continue
            digest.update(name.encode() + b"\0" + self.bundle[name])
        return digest.hexdigest()[:16]


@dataclass
class Graded:
    """A graded submission as data: what the coordinator records and writes."""
    student: str
    status: str
    nbgrader: dict[str, float] | None
    recheck: dict[str, float]
    final: dict[str, float]
    problems: list[str]         # found while grading (after the ingest problems)
    feedback_html: str | None
    worker: str = ""
    timing: dict[str, float] = field(default_factory=dict)   # this submission's phases, s
    chunk: dict = field(default_factory=dict)  # first item of a task only: logs, stage seconds


def course_bundle(shard: Path, assignment: str) -> dict[str, bytes]:
    """The files a worker needs for a private course: a shard in which the coordinator generated
    ``assignment`` (config, sources, release, gradebook), so workers run no generate step."""
    shard = Path(shard)
    files = {name: (shard / name).read_bytes() for name in ("nbgrader_config.py", "gradebook.db")}
    for folder in ("solutions", "exercises"):
        for path in sorted((shard / folder / assignment).rglob("*")):
            if path.is_file() and not {".ipynb_checkpoints", "__pycache__"} & set(path.parts):
                files[str(path.relative_to(shard))] = path.read_bytes()
    return files


# Per worker process: the course template and sandbox of the current batch, reused by its tasks
# (the folders of an earlier batch are removed when a new one arrives, and at exit).
_TEMPLATES: dict[tuple, tuple[Path, object]] = {}
_TEMPLATE_LOCK = threading.Lock()


def _drop_templates() -> None:
    for root, box in _TEMPLATES.values():
        shutil.rmtree(root, ignore_errors=True)
        if box is not None:
            shutil.rmtree(box.ipc_dir, ignore_errors=True)
    _TEMPLATES.clear()


atexit.register(_drop_templates)


def _template(job: ChunkJob) -> tuple[Path, object]:
    """(a folder for this batch on this worker, holding the generated course in ``shard/``;
    the batch's sandbox or None). The folder is masked from student code with the coordinator's
    folders that exist on this host (the same machine, or a shared file system)."""
    from course_lib.grading import sandbox

    key = (job.bundle_hash(), job.assignment, job.mem_mb, repr(job.limits), tuple(job.hide))
    with _TEMPLATE_LOCK:
        if key in _TEMPLATES and _TEMPLATES[key][0].is_dir():
            return _TEMPLATES[key]
        _drop_templates()
        root = Path(tempfile.mkdtemp(prefix="grading-worker-"))
        for name, data in job.bundle.items():
            path = root / "shard" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        box = None
        if job.limits is not None:
            box = sandbox.Sandbox.for_batch(root, hide=[Path(p) for p in job.hide
                                                        if Path(p).exists()],
                                            limits=job.limits)
        _TEMPLATES[key] = (root, box)
        return _TEMPLATES[key]


class _Bar:
    """Stands in for the coordinator's progress bars inside a task (progress is per task)."""

    def update(self, n: int = 1) -> None:
        pass


def _worker_address() -> str:
    try:
        from distributed import get_worker
        return get_worker().address
    except (ImportError, ValueError):
        return f"local process {os.getpid()}"


def grade_chunk(items: list[Work], job: ChunkJob) -> list[Graded]:
    """A dask task: grade ``items`` end to end in a private course on this worker (autograde,
    re-check, feedback, as :func:`course_lib.grading.grade_class._grade_shard` does), and return
    the results as data. Nothing is written outside this worker's temporary folder."""
    from course_lib.grading import course as grading
    from course_lib.grading import grade_class, nursery, sandbox
    from course_lib.grading.kernel import kernel_env

    worker = _worker_address()
    diffs = differences(job.fingerprint, fingerprint(job.assignment, job.limits is not None))
    if diffs:
        raise EnvironmentMismatch(_mismatch_message(worker, diffs))
    started = time.monotonic()
    root, box = _template(job)
    template = root / "shard"
    work = Path(tempfile.mkdtemp(prefix="chunk-", dir=root))
    box = box.for_shard() if box is not None else None  # IPC sockets of its own
    shard = work / "shard"
    # Warm kernels: one sandbox for this chunk's notebooks, forking a kernel per notebook.
    broker = nursery.Broker(box, [f"course_lib.checks.{job.assignment}"],
                            log=shard / "nursery.log") if box is not None else None
    box = broker.box if broker is not None else None
    try:
        settings = {"cell_timeout": job.cell_timeout, "mem_mb": job.mem_mb, "sandbox": box,
                    "broker": broker,
                    "env": kernel_env(sandbox.install_kernelspec(work / "jupyter", box,
                                                                 job.mem_mb))}
        grade_class._prepare_shard(template, job.assignment, shard, template, settings["env"])
        subs = []
        for item in items:
            sub = grade_class.Submission(item.student, "", problems=list(item.problems))
            sub.notebook = work / "in" / f"{len(subs)}.ipynb"
            sub.notebook.parent.mkdir(parents=True, exist_ok=True)
            sub.notebook.write_bytes(item.notebook)
            subs.append(sub)
        prepared = time.monotonic()
        grade_class._grade_shard(shard, subs, job.info, settings,
                                 {name: _Bar() for name in ("autograde", "recheck", "feedback")})
        a = job.assignment
        html_name = grading.notebook_name(a).replace(".ipynb", ".html")
        stages = dict(settings.get("seconds", {}), prepare=prepared - started)
        timings = _notebook_timings(shard, subs, job.info, _wall(prepared))
        stages.update(timings.pop(None, {}))
        results = []
        for item, sub in zip(items, subs):
            page = shard / "feedback" / sub.student / a / html_name
            results.append(Graded(
                sub.student, sub.status, sub.nbgrader, dict(sub.recheck), dict(sub.final),
                sub.problems[len(item.problems):],
                page.read_text(encoding="utf-8", errors="replace")
                if page.is_file() and not page.is_symlink() else None, worker,
                timings.get(sub.student, {})))
        results[0].chunk = {"students": [i.student for i in items], "stages": stages,
                            "logs": {log.name: log.read_text(errors="replace")[-MAX_LOG_CHARS:]
                                     for log in sorted(shard.glob("*.log"))}}
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if box is not None:
            shutil.rmtree(box.ipc_dir, ignore_errors=True)
            shutil.rmtree(Path(box.nursery).parent, ignore_errors=True)


def _wall(monotonic: float) -> float:
    """The wall-clock time (as file times and nbgrader's stamps use) of a monotonic reading."""
    return time.time() - (time.monotonic() - monotonic)


def _notebook_timings(shard: Path, subs: list, info, autograde_start: float) -> dict:
    """Per submission, from the cell timestamps nbgrader's executor records in the autograded
    notebook: kernel start (from the end of the previous notebook: nbgrader's own per-notebook
    work included), imports (the locked setup cells), the student's cells and the checks (the test
    cells). The first notebook's wait also holds nbgrader's start-up: it is returned apart, as
    ``"nbgrader start-up"`` under the key ``None``."""
    import datetime

    import nbformat

    from course_lib.grading import course as grading

    def stamp(text: str) -> float:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

    out: dict = {}
    previous_end = None
    for sub in sorted(subs, key=lambda s: s.student):  # nbgrader's order
        path = shard / "autograded" / sub.student / info.assignment / \
            grading.notebook_name(info.assignment)
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception:  # not graded by nbgrader (kernel died, corrupt output): no timings
            continue
        phases = {"kernel start": 0.0, "imports": 0.0, "student cells": 0.0, "checks": 0.0}
        first = last = None
        for cell in nb.cells:
            ex = cell.metadata.get("execution") or {}
            if "iopub.status.busy" not in ex or "iopub.status.idle" not in ex:
                continue
            begin, end = stamp(ex["iopub.status.busy"]), stamp(ex["iopub.status.idle"])
            first = begin if first is None else first
            last = end
            gid = cell.metadata.get("nbgrader", {}).get("grade_id")
            kind = ("checks" if gid in info.points else
                    "imports" if gid in info.cells and info.cells[gid]["locked"] else
                    "student cells")
            phases[kind] += end - begin
        if first is None:
            continue
        if previous_end is None:
            out[None] = {"nbgrader start-up": max(0.0, first - autograde_start)}
        else:
            phases["kernel start"] = max(0.0, first - previous_end)
        previous_end = last
        out[sub.student] = phases
    return out


# ----------------------------------------------------------------------------- the coordinator
class ResultCache:
    """``OUT/results/<student>.json``: one graded submission each, written as soon as it is
    graded, under a key of everything its grade depends on. A re-run after an interruption reads
    them back instead of grading again; a changed notebook, check or option misses the cache."""

    def __init__(self, folder: Path, context: dict) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.context = json.dumps(context, sort_keys=True)

    def key(self, notebook: bytes) -> str:
        return hashlib.sha256(self.context.encode() + b"\0" + notebook).hexdigest()

    def _path(self, student: str) -> Path:
        name = hashlib.sha256(student.encode()).hexdigest()[:12]
        return self.folder / f"{name}.json"

    def get(self, student: str, key: str) -> Graded | None:
        path = self._path(student)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if data.get("key") != key or data.get("student") != student:
            return None
        data.pop("key")
        names = {f.name for f in fields(Graded)}
        return Graded(**{k: v for k, v in data.items() if k in names})

    def put(self, key: str, graded: Graded) -> None:
        data = {f.name: getattr(graded, f.name) for f in fields(Graded) if f.name != "chunk"}
        path = self._path(graded.student)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, **data}))
        os.replace(tmp, path)  # never a half-written entry after an interruption


def _apply(sub, graded: Graded) -> None:
    sub.status, sub.nbgrader = graded.status, graded.nbgrader
    sub.recheck, sub.final = dict(graded.recheck), dict(graded.final)
    sub.problems += graded.problems


@dataclass
class Dispatch:
    """What :func:`grade_submissions` did, for the report and the benchmark."""
    graded: int = 0              # graded in this run
    resumed: int = 0             # taken from OUT/results (graded by an earlier run)
    failed: int = 0              # graded 0 because grading them failed (Failure)
    notes: list[str] = field(default_factory=list)
    workers: dict[str, int] = field(default_factory=dict)   # worker -> submissions graded
    timings: dict[str, dict[str, float]] = field(default_factory=dict)  # student -> phases
    stages: list[dict] = field(default_factory=list)        # per task: students, seconds


def grade_submissions(engine: Engine, subs: list, info, template: Path, out: Path,
                      cell_timeout: float, mem_mb: int, limits=None, hide: list[Path] = (),
                      chunk_size: int | None = None,
                      progress: Callable[[int], None] | None = None) -> Dispatch:
    """Grade every submission that has a notebook on ``engine``'s workers and record the results
    in ``subs`` (scores, status, problems; ``sub.feedback`` points to the HTML written under
    ``out/feedback``). ``template`` is a shard in which the assignment was generated
    (:func:`course_bundle`). ``limits`` (``sandbox.Limits``) runs student code in the sandbox,
    hiding the ``hide`` folders; ``None`` runs it without one (``--no-sandbox``). Raises
    :class:`EnvironmentMismatch` / :class:`ClusterError` before grading if the workers cannot be
    trusted or reached."""
    from course_lib.grading import course as grading

    a = info.assignment
    out = Path(out)
    report = Dispatch()
    engine.wait_for_workers(1)
    ours = engine.check_environment(a, sandboxed=limits is not None)
    resources, note = route(engine, a)
    if note:
        report.notes.append(note)
    job = ChunkJob(a, course_bundle(template, a), info, cell_timeout, mem_mb, ours, limits,
                   [str(Path(p).resolve()) for p in hide])
    cache = ResultCache(out / RESULTS, {"fingerprint": ours,
                                        "sources": job.bundle_hash(sources_only=True),
                                        "cell_timeout": cell_timeout, "mem_mb": mem_mb,
                                        "sandbox": repr(limits)})
    html_name = grading.notebook_name(a).replace(".ipynb", ".html")
    by_student = {s.student: s for s in subs}
    keys: dict[str, str] = {}
    todo = []

    def record(sub, graded: Graded) -> None:
        _apply(sub, graded)
        if graded.feedback_html is not None:
            sub.feedback = out / "feedback" / sub.student / a / html_name
            sub.feedback.parent.mkdir(parents=True, exist_ok=True)
            sub.feedback.write_text(graded.feedback_html, encoding="utf-8")
        report.timings[sub.student] = graded.timing
        if progress:
            progress(1)

    for sub in subs:
        if sub.notebook is None:
            continue
        data = Path(sub.notebook).read_bytes()
        keys[sub.student] = cache.key(data)
        cached = cache.get(sub.student, keys[sub.student])
        if cached is not None:
            record(sub, cached)
            report.resumed += 1
        else:
            todo.append(Work(sub.student, data, list(sub.problems)))
    if report.resumed:
        report.notes.append(f"{report.resumed} submissions were graded by an earlier run with "
                            "the same notebook, checks and options: not graded again")

    def done(item: Work, result) -> None:
        sub = by_student[item.student]
        if isinstance(result, Failure):
            report.failed += 1
            sub.status = "failed"
            sub.problems.append(result.reason)
            sub.final = {g: 0.0 for g in info.points}
            if progress:
                progress(1)
            return
        report.graded += 1
        report.workers[result.worker] = report.workers.get(result.worker, 0) + 1
        if result.chunk:
            report.stages.append(result.chunk["stages"] | {"students": result.chunk["students"],
                                                           "worker": result.worker})
            logs = out / "work" / "logs" / f"task{len(report.stages):04d}"
            logs.mkdir(parents=True, exist_ok=True)
            (logs / "students.txt").write_text("\n".join(result.chunk["students"]) + "\n")
            for name, text in result.chunk["logs"].items():
                (logs / name).write_text(text)
        cache.put(keys[item.student], result)
        record(sub, result)

    workers = max(1, len(engine.worker_info()))
    try:
        engine.map_chunks(grade_chunk, chunked(todo, workers, chunk_size), job,
                          resources=resources, key=lambda w: w.student, on_done=done)
    finally:
        try:  # the workers' copies of the course and sandbox (atexit does not run on SIGTERM)
            engine.client.run(_drop_templates)
        except Exception:  # a worker that is gone has nothing left to remove
            pass
    return report
