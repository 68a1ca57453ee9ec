"""Resume: ``OUT/results/<hash of student>.json``, one graded submission each, written as soon as
it is graded, under a key of everything its grade depends on (the notebook, the checks, the
assignment's sources, the grading options). A re-run reads them back instead of grading again;
a changed notebook, check or option misses the cache, and a row the grader could not grade is
never stored, so a re-run grades exactly those.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from course_lib.grading.model import Graded, Status

RESULTS = "results"


class ResultCache:
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
        try:
            data = json.loads(self._path(student).read_text())
            if data.pop("key") != key or data.get("student") != student:
                return None
            return Graded.from_json(data)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, key: str, graded: Graded) -> None:
        if graded.status is Status.GRADER_ERROR:
            return
        path = self._path(graded.student)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, **graded.to_json()}))
        os.replace(tmp, path)  # never a half-written entry after an interruption
