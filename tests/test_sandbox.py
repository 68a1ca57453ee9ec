"""The grading sandbox (course_lib.grading.sandbox), run for real with bubblewrap.

Each test starts a real ``bwrap`` around a small Python program and checks what the program could
and could not do: the same door every student notebook goes through when a class is graded.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import course_lib
from course_lib.grading import pipeline, sandbox
from course_lib.grading.sandbox.check import check_available
from course_lib.grading.sandbox.policy import NOBODY

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    """A sandbox hiding a fake course (with a secret solution) and this repository."""
    tmp = tmp_path_factory.mktemp("sandbox")
    course = tmp / "course"
    (course / "solutions").mkdir(parents=True)
    (course / "solutions" / "answer.txt").write_text("the answer")
    limits = sandbox.Limits(mem_mb=3072, processes=16, wall_s=60)
    return sandbox.Sandbox.for_batch(tmp / "work", hide=[course], limits=limits), course


def _run(box: sandbox.Sandbox, code: str, env: dict | None = None):
    """Run ``code`` with the sandbox's Python in a fresh scratch folder; returns (report, output
    as JSON printed by the program on its last line, or None)."""
    scratch = box.new_scratch("test")
    out = scratch.parent / f"{scratch.name}.out"
    with open(out, "wb") as stdout:
        report = sandbox.run_sandboxed(
            box, [sys.executable, "-c", textwrap.dedent(code)], "test",
            writable={str(scratch): str(scratch)}, cwd=str(scratch), env=env, stdout=stdout,
            stderr=subprocess.STDOUT)
    lines = out.read_text().strip().splitlines()
    try:
        return report, json.loads(lines[-1]) if lines else None
    except ValueError:
        return report, {"raw": out.read_text()[-2000:]}


def _homes() -> list[str]:
    """Home folders a grader's secrets could lie in: root's and the caller's."""
    return sorted({"/root", os.path.realpath(os.path.expanduser("~"))})


def _python_entries(home: str) -> list[str]:
    """What the Python installation running these tests puts into ``home``: the first folder
    below it on the way to each of its folders (the interpreter's prefixes and site-packages),
    whatever the layout (a pyenv under /root, a venv in a home folder, the system's /usr)."""
    import site

    dirs = [sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable)),
            *site.getsitepackages()]
    return sorted({Path(os.path.realpath(d)).relative_to(home).parts[0] for d in dirs
                   if os.path.realpath(d).startswith(home.rstrip("/") + "/")})


def test_this_machine_can_sandbox():
    check_available()


@pytest.mark.slow
def test_sandbox_check_runs_the_real_interpreter_and_imports_inside():
    """`python -m course_lib.grading.sandbox check` starts the real box with this interpreter
    and imports torch, ipykernel, the modules that run inside and every assignment's checks."""
    proc = subprocess.run([sys.executable, "-m", "course_lib.grading.sandbox", "check"],
                          capture_output=True, text=True, timeout=300, cwd="/")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("yes:") and sys.executable in proc.stdout
    assert "torch" in proc.stdout and "course_lib.grading.inside.recheck" in proc.stdout


def test_missing_bwrap_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(sandbox.SandboxUnavailable, match="apt-get install bubblewrap"):
        check_available()


def test_grade_class_refuses_without_bwrap_and_says_how(monkeypatch, tmp_path, capsys):
    (tmp_path / "submitted").mkdir()
    monkeypatch.setenv("PATH", "/nonexistent")
    code = pipeline.main(["ex01_standard", str(tmp_path / "submitted"), "--course", str(REPO),
                             "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "apt-get install bubblewrap" in err and "--no-sandbox" in err
    assert not (tmp_path / "out").exists(), "nothing may run before the sandbox is confirmed"


def test_student_code_sees_no_course_no_repository_no_secrets(box, monkeypatch, tmp_path):
    b, course = box
    monkeypatch.setenv("GRADER_SECRET", "db-password")
    (tmp_path / "backup" / "solutions").mkdir(parents=True)  # a copy the sandbox was not told of
    report, seen = _run(b, f"""
        import json, os, course_lib
        def readable(path):
            try:
                with open(path) as f:
                    return f.read(100)
            except OSError as e:
                return type(e).__name__
        print(json.dumps({{
            "solution": readable({str(course / 'solutions' / 'answer.txt')!r}),
            "course": os.path.isdir({str(course)!r}) and os.listdir({str(course)!r}),
            "repo_solutions": os.path.exists({str(REPO / 'solutions')!r}),
            "other_copy": os.path.exists({str(tmp_path / 'backup' / 'solutions')!r}),
            "shadow": readable("/etc/shadow"),
            "course_lib": course_lib.__file__,
            "uid": os.getuid(),
            "env_secret": os.environ.get("GRADER_SECRET"),
            "homes": {{h: sorted(os.listdir(h)) if os.path.isdir(h) else None
                       for h in {_homes()!r}}},
        }}))
    """)
    assert seen is not None and "raw" not in seen, seen
    assert seen["solution"] == "FileNotFoundError" and not seen["course"]
    assert seen["repo_solutions"] is False and seen["other_copy"] is False
    assert seen["shadow"] == ""
    assert seen["course_lib"].startswith(b.site), "course_lib must come from the snapshot"
    assert seen["uid"] == NOBODY
    assert seen["env_secret"] is None
    for home, listing in seen["homes"].items():  # only the way to the Python installation
        assert (listing or []) == _python_entries(home), (home, listing)
    assert report.returncode == 0


def test_student_code_cannot_write_outside_its_folder(box):
    b, _ = box
    target = Path(b.site) / "course_lib" / "checks" / "__init__.py"
    before = target.read_bytes()
    report, seen = _run(b, f"""
        import json, os
        from course_lib.grading.inside.kernel import install_audit  # as the grading kernel does
        protected = tuple(os.environ["COURSE_AUDIT_PROTECTED"].split(os.pathsep))
        install_audit(int(os.environ["COURSE_AUDIT_FD"]), (os.getcwd(), "/tmp"), protected)()
        results = {{}}
        for path in [{str(target)!r}, {course_lib.__file__!r}, "/usr/local/evil", "/etc/passwd"]:
            try:
                with open(path, "a") as f:
                    f.write("# tampered")
                results[path] = "written"
            except OSError as e:
                results[path] = type(e).__name__
        with open("mine.txt", "w") as f:
            f.write("ok")
        with open("/tmp/scratch.txt", "w") as f:
            f.write("ok")
        results["own"] = open("mine.txt").read()
        print(json.dumps(results))
    """)
    assert seen is not None and "raw" not in seen, seen
    assert seen.pop("own") == "ok"
    assert all(v != "written" for v in seen.values()), seen
    assert target.read_bytes() == before
    assert Path(course_lib.__file__).read_text().endswith("# tampered") is False
    writes = [e["detail"] for e in report.audit if e["kind"] == "write"]
    assert any("/etc/passwd" in w for w in writes), report.audit
    assert any(str(target) in w for w in writes), "a write to the read-only snapshot is reported"


def test_no_network_not_even_loopback(box):
    b, _ = box
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    try:
        _, seen = _run(b, f"""
            import json, socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=3)
                result = "connected"
            except OSError as e:
                result = type(e).__name__
            print(json.dumps({{"loopback": result}}))
        """)
    finally:
        server.close()
    assert seen["loopback"] != "connected" and not accepted


def test_processes_are_limited_and_end_with_the_sandbox(box):
    b, _ = box
    report, _ = _run(b, """
        import subprocess, time
        procs = [subprocess.Popen(["sleep", "60"]) for _ in range(40)]
        time.sleep(30)
        print("{}")
    """)
    assert report.killed and "processes" in report.killed
    assert report.seconds < 25
    # A duration no other process on the machine uses, so `ps` finds only this test's sleeper.
    unique = f"600.{os.getpid()}{time.monotonic_ns() % 10**6}"
    report, seen = _run(b, """
        import json, os, subprocess
        from course_lib.grading.inside.kernel import install_audit
        install_audit(int(os.environ["COURSE_AUDIT_FD"]), (os.getcwd(), "/tmp"))()
        p = subprocess.Popen(["sleep", "UNIQUE"], start_new_session=True)
        print(json.dumps({"pid": p.pid}))
    """.replace("UNIQUE", unique))
    assert report.returncode == 0 and report.killed is None
    assert any(e["kind"] == "spawn" for e in report.audit)
    assert not [line for line in subprocess.run(["ps", "-eo", "args"], capture_output=True,
                                                text=True).stdout.splitlines()
                if line.strip() == f"sleep {unique}"], "a process outlived its sandbox"


def test_wall_time_budget(tmp_path):
    b = sandbox.Sandbox.for_batch(tmp_path / "work", hide=[],
                                  limits=sandbox.Limits(wall_s=3))
    report, _ = _run(b, "import time\ntime.sleep(30)")
    assert report.killed and "time budget" in report.killed and report.seconds < 15


@pytest.mark.slow
def test_no_sandbox_is_explicit_loud_and_marked(tmp_path, capsys):
    """--no-sandbox grades (here: an empty class), warns on stderr and marks every output."""
    (tmp_path / "submitted").mkdir()
    out = tmp_path / "out"
    from course_lib import grading

    course = grading.new_course(tmp_path / "course", ["ex01_standard"], root=REPO)
    code = pipeline.main(["ex01_standard", str(tmp_path / "submitted"), "--course",
                             str(course), "--out", str(out), "--no-sandbox"])
    assert code == 0
    assert "WARNING" in capsys.readouterr().err
    assert "WITHOUT the sandbox" in (out / "problems.txt").read_text()
    assert "WITHOUT the sandbox" in (out / "report.html").read_text()
