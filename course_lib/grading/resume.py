"""Resume: ``OUT/results/<hash of student>.json``, one graded submission each, written as soon as
it is graded, under a key of everything its grade depends on (the notebook, the checks, the
assignment's sources, the grading options), with the run that graded it. A re-run reads them back
instead of grading again, but only a result nothing is suspect about (:func:`suspicion`); a
changed notebook, check or option misses the cache, and a row the grader could not grade is never
stored, so a re-run grades exactly those, the suspect ones and any asked for (``--regrade``).

Each run also keeps a ledger, ``OUT/results/runs/<run>.json``: the submissions of that run that
were *flagged* (a hostile :class:`~.model.Incident`, or grading it killed its worker twice),
written as they arrive, so that a later run knows which stored results shared a run with
them.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path

from course_lib.grading.model import Failure, Graded, Incident, Status

RESULTS = "results"
RUNS = "runs"


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def flags(result: Graded | Failure) -> list[str]:
    """Why ``result`` makes its classmates' results suspect (empty: it does not): its hostile
    incidents, or grading it killed its worker twice. A grader error is not a flag: that row is
    graded again itself, and the grader's failure is no student's attack."""
    if isinstance(result, Failure):
        return [] if result.grader else ["killed-worker"]
    return [i for i in result.incidents if Incident(i).hostile]


def suspicion(graded: Graded, run: str | None, classmates_flagged: dict[str, list[str]],
              points: float) -> str | None:
    """Why a stored result must be graded again, or None when it may be reused. Suspect is:

    * a result stored without its run (by a grader before this rule): never vetted;
    * its own status other than ``ok`` (its kernel died or hung in nbgrader);
    * any incident of its own (its processes, a stopped or dead kernel, an unfinished re-check,
      a forged reply);
    * a result short of full marks from a run in which a classmate was flagged (:func:`flags`):
      an attack on a classmate (or a machine it starved) can only take points away, so a full
      score is left alone and every other score is graded again.
    """
    if run is None:
        return "stored by an older grader, without its run"
    if graded.status is not Status.OK:
        return f"status {graded.status.value}"
    if graded.incidents:
        return f"incidents in its own grading ({', '.join(graded.incidents)})"
    others = {k for student, kinds in classmates_flagged.items() if student != graded.student
              for k in kinds}
    if others and sum(graded.final.values()) < points - 1e-9:
        return (f"short of full marks in a run where a classmate was flagged "
                f"({', '.join(sorted(others))})")
    return None


class ResultCache:
    def __init__(self, folder: Path, context: dict, run: str | None = None) -> None:
        self.folder = Path(folder)
        (self.folder / RUNS).mkdir(parents=True, exist_ok=True)
        self.context = json.dumps(context, sort_keys=True)
        self.run = run or new_run_id()
        self.flagged: dict[str, list[str]] = {}  # this run's flagged students -> why
        self.suspect: dict[str, str] = {}         # stored results refused by get() -> why

    def key(self, notebook: bytes) -> str:
        return hashlib.sha256(self.context.encode() + b"\0" + notebook).hexdigest()

    def _path(self, student: str) -> Path:
        name = hashlib.sha256(student.encode()).hexdigest()[:12]
        return self.folder / f"{name}.json"

    def _ledger(self, run: str) -> dict[str, list[str]]:
        try:
            return json.loads((self.folder / RUNS / f"{run}.json").read_text())["flagged"]
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def get(self, student: str, key: str, points: float | None = None) -> Graded | None:
        """The stored result of ``student`` for ``key`` if it may be reused, else None; a result
        stored but suspect (:func:`suspicion`) is noted in :attr:`suspect` with why. ``points``:
        full marks (None: unknown, so any flagged classmate makes it suspect)."""
        try:
            data = json.loads(self._path(student).read_text())
            if data.pop("key") != key or data.get("student") != student:
                return None
            run = data.pop("run", None)
            graded = Graded.from_json(data)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        why = suspicion(graded, run, self._ledger(run) if run else {},
                        float("inf") if points is None else points)
        if why:
            self.suspect[student] = why
            return None
        return graded

    def put(self, key: str, graded: Graded) -> None:
        if graded.status is Status.GRADER_ERROR:
            return
        self._write(self._path(graded.student),
                    {"key": key, "run": self.run, **graded.to_json()})

    def flag(self, student: str, result: Graded | Failure) -> None:
        """Note in this run's ledger that ``result`` makes its classmates suspect, if it does."""
        why = flags(result)
        if why:
            self.flagged[student] = why
            self._write(self.folder / RUNS / f"{self.run}.json", {"flagged": self.flagged})

    @staticmethod
    def _write(path: Path, data: dict) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)  # never a half-written entry after an interruption
