"""Ingest: find, validate and sanitize every submission; nothing found is dropped.

Layouts: nbgrader's ``submitted/<student>/<assignment>/<nb>.ipynb``, a ``<student>/<nb>.ipynb``
folder, or a zip of either or of flat LMS files ``<student>_<anything>.ipynb``. Renamed notebooks
are found, corrupt JSON and missing notebooks are recorded (scored 0 by :mod:`.scoring`),
nbgrader metadata the student edited (points, grade flags) is restored from the gradebook, and
every submitted name gets a distinct id.
"""
from __future__ import annotations

import hashlib
import re
import shutil
import zipfile
from pathlib import Path
from typing import Callable

import nbformat

from course_lib.grading import identities
from course_lib.grading.course import notebook_name
from course_lib.grading.model import SourceInfo, Status, Submission

MAX_ZIP_BYTES = 2 * 2**30  # refuse zips that would unpack to more than this


def safe_unzip(archive: Path, dest: Path) -> Path:
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


def find_candidates(root: Path, assignment: str) -> dict[str, list[Path]]:
    """submitted name -> notebooks found for it, for the layouts in the module docstring."""
    if (root / "submitted").is_dir():
        root = root / "submitted"
    entries = [p for p in root.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and entries[0].is_dir() and not any(entries[0].glob("*/*.ipynb")) \
            and not (entries[0] / assignment).is_dir() and any(entries[0].glob("*")):
        return find_candidates(entries[0], assignment)  # a zip with one top-level folder
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


def sanitize(nb, info: SourceInfo) -> list[str]:
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


def ingest(submissions: Path, info: SourceInfo, workdir: Path,
           identify: Callable[[list[str]], dict[str, str]] = identities.assign
           ) -> list[Submission]:
    """Find, validate and sanitize every submission; nothing found is dropped. ``identify``:
    submitted names -> student ids (the pipeline's reads and records them in the gradebook)."""
    submissions = Path(submissions)
    if not submissions.exists():
        raise FileNotFoundError(f"no submissions at {submissions}")
    root = submissions
    if submissions.is_file():
        root = safe_unzip(submissions, workdir / "unzipped")
    expected = notebook_name(info.assignment)
    result = []
    candidates = find_candidates(root, info.assignment)
    ids = identify(list(candidates))
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
            sub.unreadable = Status.MISSING
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
            sub.unreadable = Status.CORRUPT
            sub.problems.append(f"corrupt notebook ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); "
                                "scored 0")
            result.append(sub)
            continue
        sub.problems += sanitize(nb, info)
        sub.notebook = workdir / "sanitized" / f"{student}.ipynb"
        sub.notebook.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, sub.notebook)
        result.append(sub)
    return result
