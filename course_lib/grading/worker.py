"""What runs on a dask worker: one grading task, in the worker's warm session for the batch.

:func:`grade_task` is the task: it checks that this worker's environment is the coordinator's,
finds (or starts) this worker's :class:`~.shard.GradingSession` for the batch, and grades its
submissions one by one, returning :class:`~.model.Graded` records as data. Nothing is written
outside the worker's temporary folder. :func:`drop_sessions` ends the sessions (the coordinator
calls it on every worker at the end of a batch; atexit does not run when a worker is killed).
"""
from __future__ import annotations

import atexit
import os
import tempfile
import threading
import time

from course_lib.grading.environment import (EnvironmentMismatch, differences, fingerprint,
                                            mismatch_message)
from course_lib.grading.model import Graded, Status, TaskSpec, Work
from course_lib.grading.shard import GradingSession

# Per worker thread: the session of the current batch (a new batch replaces it).
_SESSIONS: dict[int, tuple[tuple, GradingSession]] = {}
_LOCK = threading.Lock()


def drop_sessions() -> None:
    with _LOCK:
        sessions = [session for _, session in _SESSIONS.values()]
        _SESSIONS.clear()
    for session in sessions:
        session.close()


atexit.register(drop_sessions)


def worker_address() -> str:
    try:
        from distributed import get_worker
        return get_worker().address
    except (ImportError, ValueError):
        return f"local process {os.getpid()}"


def _session(spec: TaskSpec) -> tuple[GradingSession, float]:
    """This thread's session for ``spec`` (started if new), and the seconds starting it took."""
    key = (spec.bundle_hash(), spec.assignment, repr(spec.options), tuple(spec.hide))
    me = threading.get_ident()
    with _LOCK:
        current = _SESSIONS.get(me)
    if current is not None and current[0] == key:
        return current[1], 0.0
    if current is not None:
        current[1].close()
    started = time.monotonic()
    session = GradingSession(spec, tempfile.mkdtemp(prefix="grading-worker-"))
    with _LOCK:
        _SESSIONS[me] = (key, session)
    return session, time.monotonic() - started


def grade_task(items: list[Work], spec: TaskSpec) -> list[Graded]:
    """A dask task: grade ``items`` in this worker's session; results as data."""
    worker = worker_address()
    diffs = differences(spec.fingerprint, fingerprint(spec.assignment, spec.options.sandboxed))
    if diffs:
        raise EnvironmentMismatch(mismatch_message(worker, diffs))
    session, startup = _session(spec)
    results = [session.grade(item, worker) for item in items]
    # The session's logs come back with its first task and with any task whose notebook the
    # grader could not grade normally (what the instructor needs to look at).
    troubled = any(r.status in (Status.GRADER_ERROR, Status.GRADED_BY_RECHECK) for r in results)
    results[0].task = {"students": [i.student for i in items],
                       "stages": {"session start-up": round(startup, 3)},
                       "logs": session.logs() if startup or troubled else {}}
    return results
