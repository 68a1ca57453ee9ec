"""Student ids (course_lib.grading.identities) and their record in the gradebook: one id per
submitted name, never shared, bounded and safe as a folder name, kept by every later batch.

The pipeline's own test of these (two batches into one gradebook) is in
tests/test_grading_rerun.py."""
from __future__ import annotations

import re

import pytest

from course_lib.grading import gradebook, identities

SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _assert_safe(ids: dict[str, str]) -> None:
    for name, sid in ids.items():
        assert SAFE.fullmatch(sid) and len(sid) <= identities.MAX_ID_CHARS, (name, sid)
        assert not sid.endswith(".") and sid not in (".", "..")
    lowered = [i.lower() for i in ids.values()]
    assert len(set(lowered)) == len(lowered), f"two names share an id: {ids}"


def test_safe_names_are_their_own_id_and_others_get_a_bounded_suffixed_one():
    names = ["Jane Doe", "Jane  Doe", "Jane-Doe", "o'brien", "bob", "Zoë", "😀" * 5, "x" * 250,
             "é" * 300, ".hidden", "..", "a" * 64, "a" * 65, "trailing.", "日本語の名前"]
    ids = identities.assign(names)
    assert sorted(ids) == sorted(names)
    _assert_safe(ids)
    assert ids["bob"] == "bob" and ids["Jane-Doe"] == "Jane-Doe" and ids["a" * 64] == "a" * 64
    assert ids["Zoë"].startswith("Zoe-"), "accents are dropped, not the letter"
    assert ids["Jane Doe"].startswith("Jane-Doe-") and ids["Jane  Doe"].startswith("Jane-Doe-")
    assert ids == identities.assign(list(reversed(names))), "ids must not depend on order"
    assert ids == identities.assign(names), "ids must be stable"


def test_a_folder_named_like_a_classmates_suffixed_id_does_not_become_that_classmate():
    taken_id = identities.suffixed("Jane Doe")  # what Jane Doe gets on her own
    assert identities.assign(["Jane Doe"]) == {"Jane Doe": taken_id}
    # In one batch: the folder literally named so keeps its name, Jane Doe gets another id.
    ids = identities.assign(["Jane Doe", taken_id])
    assert ids[taken_id] == taken_id and ids["Jane Doe"] != taken_id
    _assert_safe(ids)
    # In a later batch, against the gradebook's record: Jane Doe keeps hers, the folder moves on.
    later = identities.assign(["Jane Doe", taken_id], known={"Jane Doe": taken_id},
                              taken={taken_id})
    assert later["Jane Doe"] == taken_id and later[taken_id] != taken_id
    _assert_safe(later)


def test_ids_are_checked_against_every_gradebook_id_case_insensitively():
    # "alice" is an existing gradebook student (nbgrader db student add): the folder "alice" is
    # her; "ALICE" and a name cleaning to a recorded id are somebody else.
    ids = identities.assign(["alice", "ALICE", "Bob"], known={"Bob Smith": "Bob"},
                            taken={"alice", "Bob"})
    assert ids["alice"] == "alice"
    assert ids["ALICE"].lower() != "alice" and ids["Bob"] != "Bob"
    _assert_safe({**ids, "recorded Bob Smith": "Bob"})


def test_the_gradebook_records_names_and_later_batches_reuse_them(tmp_path):
    db = gradebook.sqlite_url(tmp_path / "gradebook.db")
    first = gradebook.identify(db, ["Jane Doe", "bob", "Zoë"])
    assert gradebook.identify(db, ["Zoë"]) == {"Zoë": first["Zoë"]}
    literal = first["Jane Doe"]
    second = gradebook.identify(db, [literal, "Jane Doe", "Jane  Doe", "x" * 250])
    assert second["Jane Doe"] == literal, "a name keeps its id in every later batch"
    assert second[literal] != literal, "a folder named like a recorded id is somebody else"
    recorded = gradebook.recorded_identities(db)
    assert recorded == {**first, **second}, "every name is recorded in full with its id"
    assert len(set(recorded.values())) == len(recorded)
    _assert_safe(recorded)


def test_names_that_are_not_utf8_are_recorded(tmp_path):
    raw = b"caf\xe9".decode("utf-8", "surrogateescape")  # a Latin-1 folder name from a zip
    db = gradebook.sqlite_url(tmp_path / "gradebook.db")
    lookalike = "caf\\xe9"  # a name spelling out the escape
    ids = gradebook.identify(db, [raw, "café", lookalike])
    assert len(set(ids.values())) == 3
    assert gradebook.identify(db, [raw]) == {raw: ids[raw]}


@pytest.mark.parametrize("name", ["😀", "x" * 250, "../../etc", "a/b", "\x00nul", "CON"])
def test_every_id_is_a_safe_folder_name(name, tmp_path):
    (sid,) = identities.assign([name]).values()
    folder = tmp_path / sid
    folder.mkdir()
    assert folder.parent == tmp_path and len(sid.encode()) <= identities.MAX_ID_CHARS
