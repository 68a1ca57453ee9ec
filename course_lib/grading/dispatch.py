"""Dispatch: where grading tasks run, on dask.distributed. It moves tasks; it knows nothing of scores.

:class:`Engine` starts an embedded ``LocalCluster`` by default (one single-threaded worker process
per ``--workers``), so a laptop needs nothing new; with ``scheduler="tcp://HOST:PORT"`` it sends
the same tasks to a cluster the instructor started (``dask scheduler`` on one host, ``dask worker
tcp://HOST:PORT`` on each grading host, or dask-jobqueue / dask-kubernetes; see
book/instructor_guide.md, "Grading on a cluster"). :meth:`Engine.map_chunks` runs a task function
over chunks of items:

* **no more tasks in flight than worker threads**, so a free worker always takes the next task
  and a slow one holds only itself (with tasks of one submission, no notebook waits behind
  another: :func:`chunked`);
* **failure is normal**: a task whose worker dies is retried on another worker by the scheduler;
  a chunk that fails again is split into one task per item, and an item whose task kills its
  worker twice comes back as a :class:`~.model.Failure` that is the submission's own doing; any
  other failure (no worker for too long, a lost result, an exception in the grader) is the
  grader's;
* **stop early**: ``should_stop`` (asked after each result) ends the batch, failing the rest;
* **GPU work on GPU workers**: :func:`route` sends an assignment whose checks module lists
  ``GPU_TESTS`` to workers started with ``--resources GPU=1``.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import time
from collections import deque
from pathlib import Path
from typing import Callable

from course_lib.grading.environment import (EnvironmentMismatch, differences, fingerprint,
                                            mismatch_message)
from course_lib.grading.model import Failure

# How often the scheduler may see a task's worker die before the task fails (KilledWorker):
# 1 = one retry elsewhere. A submission that kills two workers is graded 0.
ALLOWED_FAILURES = 1
ALLOWED_LOSSES = 2       # a finished task's result lost with its worker: graded again, twice
NO_WORKER_TIMEOUT_S = 600  # no worker able to take the tasks this long: the rest fail (rows say so)
POLL_S = 1               # how often the coordinator looks for new or vanished workers
# The resource name GPU workers declare (``dask worker ... --resources GPU=1``).
GPU = "GPU"


class ClusterError(RuntimeError):
    """The cluster cannot grade (no workers, unreachable scheduler); the message says what to do."""


# ----------------------------------------------------------------------------- GPU routing
def gpu_tests(assignment: str) -> tuple[str, ...]:
    """Test cells that need a GPU to be graded for real: ``GPU_TESTS`` in the assignment's checks
    module, read from its source (importing it would import torch in the coordinator)."""
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
                  f"--resources {GPU}=1)")


# ----------------------------------------------------------------------------- engine
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
            raise EnvironmentMismatch("\n".join(mismatch_message(w, d)
                                                for w, d in sorted(refused.items())))
        return ours

    # -- running
    def map_chunks(self, fn: Callable, chunks: list[list], *args,
                   resources: dict | None = None, key: Callable = repr,
                   on_done: Callable[[object, object], None] | None = None,
                   should_stop: Callable[[], str | None] | None = None) -> dict:
        """Run ``fn(chunk, *args) -> list of results`` (one per item) for every chunk.

        Returns ``key(item) -> result or Failure``. A chunk that fails (its workers died
        ``ALLOWED_FAILURES + 1`` times, or it raised) is split into single items; a single item
        that fails is a :class:`Failure` with the reason. ``on_done(item, result)`` is called in
        this thread as soon as each item's result arrives (to store it: resume).
        :class:`EnvironmentMismatch` raised on a worker stops everything. ``should_stop()``,
        asked after each result, returns a reason to end the batch: the items not yet graded fail
        with it. ``args`` travel with every task (not scattered once: scattered data dies with
        the workers that hold it, and a killer can take every worker down)."""
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

        def fail(item, reason: str, grader: bool = True) -> None:
            results[key(item)] = Failure(reason, grader)
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
                                   f"{self.no_worker_timeout:g} s (all died or left)")
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
                                   "(scheduler or client restarted?)")
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
                                   f"times (last on {exc.last_worker.address}); scored 0",
                         grader=False)
                else:
                    fail(chunk[0], f"grading failed on the worker ({_describe(exc)})")
            why = should_stop() if should_stop else None
            if why:
                self.log(f"stopping the batch: {why}")
                for chunk in [*pending.values(), *backlog]:
                    for item in chunk:
                        fail(item, f"not graded: the batch stopped early ({why})")
                for future in pending:
                    future.cancel()
                break
        return results


def _describe(exc: BaseException) -> str:
    from distributed.scheduler import KilledWorker

    if isinstance(exc, KilledWorker):
        return f"its worker died {exc.allowed_failures + 1} times"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1][:300] if text else ''}"


def chunked(items: list, workers: int, chunk_size: int | None = None) -> list[list]:
    """Items in tasks: one submission per task by default. A worker keeps its grading session
    warm between tasks (:mod:`.worker`), so a task costs little more than its notebook, and a
    slow notebook never holds a fast one behind it; ``chunk_size`` groups more per task (fewer
    round trips to the scheduler on a large cluster)."""
    size = max(1, chunk_size or 1)
    return [items[i:i + size] for i in range(0, len(items), size)]
