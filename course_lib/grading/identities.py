"""Student ids: one per submitted name, never shared, bounded and safe as a folder name.

A name that is already a safe id (letters, digits, ``_``, ``-``, ``.``; at most
:data:`MAX_ID_CHARS`; not starting with ``.`` or ``-``) is its own id: nbgrader's layout, where the
folders are the gradebook's student ids. Any other name (spaces, accents, emoji, 250 characters)
gets its cleaned form, cut short, and a hash of the name itself: ``Jane Doe`` -> ``Jane-Doe-
3f5c0a9e1b2d``. Every id is checked against every id already taken (this batch's and the
gradebook's, compared case-insensitively: feedback folders land on case-insensitive disks too),
and a name whose id is taken gets another (a hash with a counter), so a folder named exactly like
a classmate's suffixed id never becomes that classmate. The gradebook records each name with its
id (:func:`.gradebook.identify`), and later batches reuse it: a name keeps its id forever.

Pure functions: :func:`assign` decides, :mod:`.gradebook` reads and records.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata

MAX_ID_CHARS = 64      # nbgrader's Student.id is VARCHAR(128); folder names allow 255 bytes
_STEM_CHARS = 40       # the cleaned part of a suffixed id; the suffix adds 13
_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def is_safe_id(name: str) -> bool:
    """Usable as it is: a gradebook id and a folder name on any file system."""
    return (len(name) <= MAX_ID_CHARS and _SAFE.fullmatch(name) is not None
            and not name.endswith("."))  # Windows drops a trailing dot


def cleaned(name: str) -> str:
    """The readable part of an id: accents dropped (``Zoë`` -> ``Zoe``), anything else unsafe
    turned into ``-``, cut to a bounded length; ``student`` when nothing is left (emoji)."""
    ascii_ = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    text = re.sub(r"[^A-Za-z0-9_.-]+", "-", ascii_).strip("-.")[:_STEM_CHARS].strip("-.")
    return text or "student"


def suffixed(name: str, attempt: int = 0) -> str:
    """The id of a name that is not a safe id itself (``attempt`` > 0: the next candidates)."""
    salt = f"{attempt}\0" if attempt else ""
    digest = hashlib.sha256((salt + name).encode("utf-8", "surrogatepass")).hexdigest()
    return f"{cleaned(name)}-{digest[:12]}"


def assign(names: list[str], known: dict[str, str] | None = None,
           taken: set[str] = frozenset()) -> dict[str, str]:
    """An id for every name in ``names``, distinct from each other and from ``taken``.

    ``known``: name -> id recorded by earlier batches (reused as they are); ``taken``: every id
    the gradebook holds (its students, recorded or not). A name that equals a gradebook student's
    id and is not recorded for another name is that student (nbgrader's own layout). The result
    does not depend on the order of ``names``."""
    known = dict(known or {})
    recorded = {i.lower() for i in known.values()}
    used = {i.lower() for i in taken} | recorded
    ids: dict[str, str] = {}
    fresh = []
    for name in sorted(set(names)):
        if name in known:
            ids[name] = known[name]
        elif is_safe_id(name) and name in taken and name.lower() not in recorded:
            ids[name] = name  # an existing gradebook student: the folder is its id
        else:
            fresh.append(name)
    # Names that are their own id claim it first, so that a folder named like a classmate's
    # suffixed id keeps its name and the classmate's id moves on (both stay stable once recorded).
    fresh.sort(key=lambda n: (not is_safe_id(n), n))
    for name in fresh:
        attempt, candidate = 0, name if is_safe_id(name) else suffixed(name)
        while candidate.lower() in used:
            attempt += 1
            candidate = suffixed(name, attempt)
        used.add(candidate.lower())
        ids[name] = candidate
    return ids


def stored_name(name: str) -> str:
    """The name as the gradebook stores it: a folder name that is not valid UTF-8 (a raw byte
    from an old archive) keeps its bytes as ``\\xNN`` escapes instead of failing the database;
    a backslash is doubled, so that no two names are stored alike."""
    return name.replace("\\", "\\\\").encode("utf-8", "surrogateescape").decode(
        "utf-8", "backslashreplace")


def name_digest(stored: str) -> str:
    """The key of a stored name (:func:`stored_name`) in the gradebook's table."""
    return hashlib.sha256(stored.encode("utf-8")).hexdigest()
