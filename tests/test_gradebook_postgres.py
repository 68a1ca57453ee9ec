"""A class graded into a real PostgreSQL gradebook (``--db postgresql://...``).

The fixture starts a throwaway PostgreSQL cluster with Debian's own ``initdb`` and ``pg_ctl`` (the
``postgresql`` package, which .ci/run installs) on a free port of 127.0.0.1, its unix sockets in
a private folder, and stops it at the end. The mixed class graded into it must export, with
``nbgrader export``, exactly the rows the SQLite run of the same class exports.
"""
from __future__ import annotations

import csv
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import CLASS_ASSIGNMENT
from course_lib import grading
from course_lib.grading import gradebook, pipeline


def _postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL server's bin folder (initdb, pg_ctl are not on PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_server_user() -> list[str]:
    """PostgreSQL refuses to run as root: run its commands as Debian's `postgres` user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("running as root, but there is no `postgres` user to run the server as "
                    "(apt-get install postgresql creates it)")
    return ["runuser", "-u", "postgres", "--"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL server; yields the URL of an empty database `gradebook`."""
    bindir = _postgres_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL's server is not installed (.ci/run must apt-get install "
                        "postgresql)")
        pytest.skip("PostgreSQL's server is not installed (apt-get install postgresql)")
    sudo = _as_server_user()
    # Outside pytest's own temporary folders: those are private to root, the server is not root.
    folder = Path(tempfile.mkdtemp(prefix="gradebook-pg-"))
    if sudo:
        shutil.chown(folder, "postgres")
    data, port = folder / "data", _free_port()

    def run(*args: str) -> None:
        proc = subprocess.run([*sudo, *args], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            log = folder / "server.log"
            pytest.fail(f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}\n"
                        f"{log.read_text() if log.is_file() else ''}")

    run(str(bindir / "initdb"), "-D", str(data), "-U", "grader", "--auth=trust", "-E", "UTF8",
        "--no-sync")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w",
        "-t", "60", "-o", f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off", "start")
    try:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={port} user=grader dbname=postgres",
                             autocommit=True) as conn:
            conn.execute("CREATE DATABASE gradebook")
        yield f"postgresql+psycopg://grader@127.0.0.1:{port}/gradebook"
    finally:
        subprocess.run([*sudo, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                        "stop"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def _export(course: Path, db_url: str, dest: Path) -> list[dict]:
    grading.run_nbgrader(["export", f"--db={db_url}", f"--to={dest}"], cwd=course)
    with open(dest, newline="") as f:
        return sorted(csv.DictReader(f), key=lambda row: (row["assignment"], row["student_id"]))


@pytest.mark.slow
def test_class_graded_into_postgres_exports_like_sqlite(postgres_url, mixed_class,
                                                        class_graded_embedded, tmp_path):
    course, submitted, expected = mixed_class
    from test_grading_pipeline import CELL_TIMEOUT, MEM_MB

    result = pipeline.grade_class(CLASS_ASSIGNMENT, submitted, course, workers=2,
                                     db_url=postgres_url, out=tmp_path / "out",
                                     cell_timeout=CELL_TIMEOUT, mem_mb=MEM_MB, quiet=True)
    assert {s.student: s.score for s in result.submissions} == expected
    rows = _export(course, postgres_url, tmp_path / "postgres.csv")
    reference = _export(course, f"sqlite:///{course / 'gradebook.db'}", tmp_path / "sqlite.csv")
    assert [r["student_id"] for r in rows] == sorted(expected)
    assert {r["student_id"]: float(r["score"]) for r in rows} == expected
    assert rows == reference
    # The server really holds them (not a local file the URL fell back to).
    import psycopg

    with psycopg.connect(postgres_url.replace("+psycopg", "")) as conn:
        (n,) = conn.execute("SELECT count(*) FROM submitted_assignment").fetchone()
    assert n == len(expected)


def test_an_unreachable_gradebook_fails_at_once_with_what_to_check():
    url = f"postgresql://grader:secret@127.0.0.1:{_free_port()}/gradebook"
    with pytest.raises(gradebook.GradebookUnavailable) as err:
        gradebook.check(url)
    message = str(err.value)
    assert "Connection refused" in message and "createdb" in message
    assert "secret" not in message, "the password must not be printed"
