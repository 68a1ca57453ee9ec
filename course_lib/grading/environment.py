"""Is a worker's grading environment the coordinator's? What must be equal on every host for a
submission to get the same grade everywhere, and how a difference is told to the instructor.
"""
from __future__ import annotations

import importlib.metadata
import platform

import course_lib
from course_lib.grading.sources import checks_hash, course_lib_hash


class EnvironmentMismatch(RuntimeError):
    """A worker's environment differs from the coordinator's: its grades could differ."""


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def fingerprint(assignment: str, sandboxed: bool = True) -> dict[str, str]:
    """What must be equal on every host. Versions are read from package metadata (importing torch
    here would cost seconds per worker). ``sandboxed``: also whether bubblewrap works here (a
    worker that cannot sandbox is refused)."""
    from course_lib.grading.sandbox.check import check_available
    from course_lib.grading.sandbox.policy import SandboxUnavailable

    found = {
        "python": platform.python_version(),
        "course_lib": f"{course_lib.__version__} (source {course_lib_hash()[:16]})",
        "nbgrader": _version("nbgrader"),
        # The release, not the build: a GPU host's CUDA build (2.13.0+cu128) grades like the
        # coordinator's CPU build (2.13.0+cpu); the GPU-only checks are what differs, by design.
        "torch": _version("torch").split("+")[0],
        "ipykernel": _version("ipykernel"),
        f"checks of {assignment}": checks_hash(assignment),
    }
    if sandboxed:
        try:
            check_available()
            found["sandbox"] = "bubblewrap works"
        except SandboxUnavailable as exc:
            found["sandbox"] = str(exc)
    return found


def differences(ours: dict[str, str], theirs: dict[str, str]) -> list[str]:
    return [f"{key}: {theirs.get(key, 'missing')} on the worker, {value} on the coordinator"
            for key, value in ours.items() if theirs.get(key) != value]


def mismatch_message(worker: str, diffs: list[str]) -> str:
    return (f"worker {worker} does not have the coordinator's grading environment, so its grades "
            f"could differ; refusing to grade on it:\n  " + "\n  ".join(diffs) +
            "\nInstall the same requirements.txt and the same course_lib on every worker (pip "
            "install -r requirements.txt in a checkout of the same commit), restart its `dask "
            "worker`, or stop that worker.")
