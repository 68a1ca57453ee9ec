"""course_lib's own source files, hashed: two copies (a worker's, the coordinator's, the one the
sandbox was checked with, the one left after a batch) are the same code when their hashes are.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import course_lib


def course_lib_hash() -> str:
    """Hash of every source file of course_lib (an edited working copy keeps its version number;
    a submission that rewrote them on disk would change every later grade)."""
    folder = Path(course_lib.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def checks_hash(assignment: str) -> str:
    """Hash of the checks the assignment is graded with, as this process imports them."""
    folder = Path(course_lib.__file__).parent / "checks"
    digest = hashlib.sha256()
    for name in ("__init__.py", "cases.py", f"{assignment}.py"):
        path = folder / name
        digest.update(name.encode())
        digest.update(path.read_bytes() if path.is_file() else b"")
    return digest.hexdigest()[:16]
