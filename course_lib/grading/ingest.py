"""Ingest: find, validate and sanitize every submission; nothing found is dropped.

Layouts: nbgrader's ``submitted/<student>/<assignment>/<nb>.ipynb``, a ``<student>/<nb>.ipynb``
folder, or a zip of either or of flat LMS files ``<student>_<anything>.ipynb``. Renamed notebooks
are found, corrupt JSON and missing notebooks are recorded (scored 0 by :mod:`.scoring`),
nbgrader metadata the student edited (points, grade flags) is restored from the gradebook, and
every submitted name gets a distinct id.

Only regular files inside a student's own folder are read (:func:`read_notebook`): no symbolic
or hard link out of it is followed, a FIFO, device or socket is never opened, a notebook over
:data:`MAX_NOTEBOOK_BYTES` is refused from its size, and a linked student or assignment folder is
refused (:func:`refusal`). A refused submission is a row with status ``refused`` and the reason;
nothing about one submission (an odd name, a bad zip member) can fail or hang the batch.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import zipfile
from pathlib import Path
from typing import Callable

import nbformat

from course_lib.grading import identities
from course_lib.grading.course import notebook_name
from course_lib.grading.model import SourceInfo, Status, Submission

MAX_ZIP_BYTES = 2 * 2**30  # refuse zips that would unpack to more than this
# The largest notebook read (a course notebook with its figures is a few MiB).
MAX_NOTEBOOK_BYTES = 64 * 2**20


def _member_entry(parts: list[str]) -> str:
    """The submitted name a zip member belongs to: its first folder, or the ``<student>_`` prefix
    of a flat LMS file (the same rule as :func:`find_candidates`)."""
    if len(parts) > 1:
        return parts[0]
    return parts[0].split("_")[0] if parts else "unknown"


def safe_unzip(archive: Path, dest: Path) -> tuple[Path, dict[str, str]]:
    """Extract what is safe; returns ``(dest, refused)``: member -> why it was not extracted.

    A member with an absolute path, '..', a symbolic link, a name the disk refuses or a size over
    :data:`MAX_NOTEBOOK_BYTES` is left out and named in ``refused`` (ingest refuses the entry it
    belongs to, not the class). Only an unreadable zip or a zip bomb refuses the whole archive;
    macOS metadata is skipped."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{archive} is not a readable zip file: {exc}") from None
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    top = dest.resolve()
    refused: dict[str, str] = {}
    with zf:
        total = sum(i.file_size for i in zf.infolist())
        if total > MAX_ZIP_BYTES:
            raise ValueError(f"{archive} would unpack to {total / 2**30:.1f} GiB; refusing")
        for info in zf.infolist():
            name = info.filename
            if name.startswith("__MACOSX/") or info.is_dir():
                continue
            parts = name.replace("\\", "/").split("/")
            why = None
            if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
                why = "an absolute path"
            elif ".." in parts:
                why = "a path with '..' (it would be written outside the submission)"
            elif stat.S_ISLNK(info.external_attr >> 16):
                why = "a symbolic link"
            elif info.file_size > MAX_NOTEBOOK_BYTES and name.endswith(".ipynb"):
                why = f"a notebook of {info.file_size / 2**20:.0f} MiB (limit " \
                      f"{MAX_NOTEBOOK_BYTES // 2**20} MiB)"
            if why is None:
                target = (dest / name).resolve()
                if top not in target.parents:
                    why = "a path outside the submission"
            if why is None:
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out)
                except (OSError, zipfile.BadZipFile, ValueError) as exc:
                    detail = exc.strerror if isinstance(exc, OSError) else "bad data"
                    why = f"not extractable ({type(exc).__name__}: {detail})"
            if why is not None:
                refused[name] = why
    return dest, refused


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _is_real_dir(path: Path) -> bool:
    """A folder that is not a symbolic link (ingest never follows one)."""
    st = _lstat(path)
    return st is not None and stat.S_ISDIR(st.st_mode)


def _is_link(path: Path) -> bool:
    st = _lstat(path)
    return st is not None and stat.S_ISLNK(st.st_mode)


def _plain_entries(folder: Path) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(folder))
    except OSError:
        return []


def _only_wraps(folder: Path, assignment: str) -> bool:
    """Is this lone folder a wrapper of the submitted names (a zip's one top-level folder holding
    student folders or flat LMS files), not one student's own folder? A student's folder holds
    the assignment's folder (nbgrader's layout) or the assignment's notebook, maybe renamed: a
    notebook named after the assignment or without an LMS ``<student>_`` prefix."""
    if not _plain_entries(folder) or _lstat(folder / assignment) is not None:
        return False
    stem = Path(notebook_name(assignment)).stem
    return not [p for p in _notebooks(folder) if p.name.startswith(stem) or "_" not in p.name]


def submissions_root(root: Path, assignment: str) -> Path:
    """The folder whose entries are the submitted names: ``root``, its ``submitted/``, or the
    one top-level folder a zip wraps them in."""
    if _is_real_dir(root / "submitted"):
        root = root / "submitted"
    entries = [p for p in _plain_entries(root) if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and _is_real_dir(entries[0]) and _only_wraps(entries[0], assignment):
        return submissions_root(entries[0], assignment)  # a zip with one top-level folder
    return root


def find_candidates(root: Path, assignment: str) -> dict[str, list[Path]]:
    """submitted name -> notebooks found for it, for the layouts in the module docstring.

    Nothing is followed through a symbolic link: a linked student or assignment folder is
    returned as itself (:func:`refusal` then says why it is refused); notebooks are every entry
    named ``*.ipynb`` whatever it is (a link, a FIFO...), for :func:`read_notebook` to judge."""
    root = submissions_root(root, assignment)
    entries = [p for p in _plain_entries(root) if not p.name.startswith((".", "__MACOSX"))]
    found: dict[str, list[Path]] = {}
    for entry in entries:
        if _is_real_dir(entry):
            inner = entry / assignment
            if _is_link(inner):  # a linked assignment folder: refused
                found.setdefault(entry.name, []).append(inner)
            else:
                found.setdefault(entry.name, []).extend(
                    _notebooks(inner if _is_real_dir(inner) else entry))
        elif entry.suffix == ".ipynb":  # LMS style: <student>_<anything>.ipynb
            found.setdefault(entry.name.split("_")[0], []).append(entry)
        elif _is_link(entry):
            found.setdefault(entry.name, []).append(entry)  # a linked student folder: refused
    return found


def _notebooks(folder: Path) -> list[Path]:
    return [p for p in _plain_entries(folder) if p.suffix == ".ipynb"]


def read_notebook(path: Path, student_folder: Path | None) -> bytes:
    """The bytes of a submitted notebook, read only if it is what it seems: a regular file, in
    the student's own folder, not linked to anything outside it, at most
    :data:`MAX_NOTEBOOK_BYTES`. ``student_folder``: None for a flat LMS file, which may not be a
    link at all. Raises :class:`Refused` saying why otherwise; a FIFO, device or socket is never
    opened, so nothing here can block."""
    st = _lstat(path)
    if st is None:
        raise Refused("the notebook vanished while it was read")
    if stat.S_ISLNK(st.st_mode):
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):
            raise Refused("the notebook is a broken symbolic link") from None
        if student_folder is None or student_folder.resolve() not in target.parents:
            raise Refused("the notebook is a symbolic link to a file outside the student's "
                          "folder: not read (submit the file itself)")
        path, st = target, _lstat(target)
        if st is None:
            raise Refused("the notebook's link target vanished while it was read")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a folder" if stat.S_ISDIR(st.st_mode) else
                "a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else
                "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
                "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise Refused(f"the notebook is {kind}, not a file: not opened")
    inside = 1 if student_folder is None else _links_inside(student_folder, st)
    if st.st_nlink > inside:
        raise Refused(f"the notebook is hard-linked to a file outside the student's folder "
                      f"({st.st_nlink} names): not read, it may be someone else's file (copy "
                      "it with `cp` if it is the student's own, then grade again)")
    if st.st_size > MAX_NOTEBOOK_BYTES:
        raise Refused(f"the notebook is {st.st_size / 2**20:.0f} MiB, over the "
                      f"{MAX_NOTEBOOK_BYTES // 2**20} MiB limit: not read")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    with os.fdopen(fd, "rb") as f:
        now = os.fstat(f.fileno())
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(now.st_mode):
            raise Refused("the notebook was replaced while it was read: not read")
        data = f.read(MAX_NOTEBOOK_BYTES + 1)
    if len(data) > MAX_NOTEBOOK_BYTES:
        raise Refused(f"the notebook grew over the {MAX_NOTEBOOK_BYTES // 2**20} MiB limit "
                      "while it was read: not read")
    return data


def _links_inside(folder: Path, st: os.stat_result) -> int:
    """How many names the file ``st`` has inside ``folder`` (hard links within a submission)."""
    count = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            other = _lstat(Path(dirpath) / name)
            count += other is not None and (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino)
    return count


def refusal(entry: Path, assignment: str) -> str | None:
    """Why a submitted name's folder itself is refused (a symbolic link), or None."""
    for folder in (entry, entry / assignment):
        if _is_link(folder):
            what = "student folder" if folder == entry else "assignment folder"
            return f"the {what} is a symbolic link: not followed (submit the files themselves)"
    return None


class Refused(Exception):
    """A submission ingest will not read; the message is the CSV's reason."""


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


def _owner(member: str, prefix: tuple[str, ...]) -> str:
    """The submitted name a refused zip member belongs to: its folder or ``<student>_`` prefix
    below the folder the submitted names are in (``prefix``, relative to the zip's root)."""
    parts = [p for p in member.replace("\\", "/").split("/") if p not in ("", ".")]
    if tuple(parts[:len(prefix)]) == prefix:
        parts = parts[len(prefix):]
    return _member_entry([p for p in parts if p != ".."])


def ingest(submissions: Path, info: SourceInfo, workdir: Path,
           identify: Callable[[list[str]], dict[str, str]] = identities.assign
           ) -> list[Submission]:
    """Find, validate and sanitize every submission; nothing found is dropped, nothing about one
    submission (a link, a FIFO, a huge file, an odd name, a bad zip member) fails the batch: it
    becomes that name's row, refused with the reason. ``identify``: submitted names -> student
    ids (the pipeline's reads and records them in the gradebook)."""
    submissions = Path(submissions)
    if not submissions.exists():
        raise FileNotFoundError(f"no submissions at {submissions}")
    root, bad_members = submissions, {}
    if submissions.is_file():
        root, bad_members = safe_unzip(submissions, workdir / "unzipped")
    candidates = find_candidates(root, info.assignment)
    prefix = submissions_root(root, info.assignment).relative_to(root).parts
    refused_members: dict[str, list[str]] = {}
    for member, why in bad_members.items():
        owner = _owner(member, prefix)
        refused_members.setdefault(owner, []).append(f"zip member {member[:120]!r}: {why}")
        candidates.setdefault(owner, [])
    ids = identify(list(candidates))
    result = []
    for name, paths in candidates.items():
        student = ids[name]
        sub = Submission(student, str(root), submitted_as=name)
        if student != name:
            sub.problems.append(f"submitted as {name[:120]!r}: graded as student id {student!r}")
        try:
            if name in refused_members:
                raise Refused("; ".join(refused_members[name]) + ": this entry is not graded "
                              "(fix the zip and grade again)")
            _ingest_one(sub, name, paths, root, info, workdir)
        except Refused as exc:
            sub.unreadable = Status.REFUSED
            sub.notebook = None
            sub.problems.append(f"refused: {exc}; scored 0")
        except Exception as exc:  # the grader's failure on this one name: not a zero
            sub.unreadable = Status.GRADER_ERROR
            sub.notebook = None
            sub.problems.append(f"grader error: ingest failed ({type(exc).__name__}: "
                                f"{str(exc)[:200]}); run the command again")
        result.append(sub)
    return result


def _ingest_one(sub: Submission, name: str, paths: list[Path], root: Path, info: SourceInfo,
                workdir: Path) -> None:
    """Choose, read, validate and sanitize one submitted name's notebook into ``sub``."""
    expected = notebook_name(info.assignment)
    home = root / name if _is_real_dir(root / name) else None  # None: a flat LMS file
    if home is not None or _lstat(root / name) is not None:
        why = refusal(root / name, info.assignment)
        if why:
            raise Refused(why)
    exact = [p for p in paths if p.name == expected]
    if exact:
        chosen = exact[-1]
    elif len(paths) == 1:
        chosen = paths[0]
        if not chosen.name.startswith(f"{name}_"):  # LMS names are <student>_...: fine
            sub.problems.append(f"notebook renamed to {chosen.name[:120]!r}; graded as "
                                f"{expected}")
    elif paths:
        named = [p for p in paths if info.assignment in p.name] or paths
        chosen = sorted(named)[-1]
        sub.problems.append(f"no {expected}; {len(paths)} notebooks found, graded "
                            f"{chosen.name[:120]!r}")
    else:
        sub.unreadable = Status.MISSING
        sub.problems.append(f"missing notebook: no .ipynb file submitted (expected {expected})")
        return
    sub.origin = str(chosen.relative_to(root))
    if len(exact) > 1:
        sub.problems.append(f"{len(exact)} copies of {expected}; graded {sub.origin[:200]}")
    data = read_notebook(chosen, home)
    try:
        nb = nbformat.reads(data.decode("utf-8"), as_version=4)
        nbformat.validate(nb)
    except Exception as exc:  # JSON or nbformat errors: nothing can be graded
        # The student's own file (ingest read no other): its error may quote it, briefly.
        sub.unreadable = Status.CORRUPT
        sub.problems.append(f"corrupt notebook ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); "
                            "scored 0")
        return
    sub.problems += sanitize(nb, info)
    # Named by a hash: a submitted name of any length or alphabet makes a valid file name.
    digest = hashlib.sha256(sub.student.encode()).hexdigest()[:20]
    sub.notebook = workdir / "sanitized" / f"{digest}.ipynb"
    sub.notebook.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, sub.notebook)
