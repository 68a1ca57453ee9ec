"""nbgrader, kept warm: one process per worker imports nbgrader once and, on request, autogrades
one student's notebook or writes one student's feedback in the worker's private shard course.

Why a process of its own: starting ``nbgrader`` costs seconds per command, more than grading a
small notebook, and a task of one notebook must not pay it; but nbgrader's execution of a notebook
can hang (a kernel that dies at the wrong moment), and a hung thread cannot be stopped. A process
can: :class:`NbgraderRunner` gives each request a deadline and, past it, kills the process (and
the kernel launcher with it) and starts a fresh one for the next request.

``python -m course_lib.grading.nbgrader_runner COURSE ASSIGNMENT CONFIG_JSON`` is the process:
JSON lines in on stdin (``{"op": "autograde" | "feedback", "student": ID}``), JSON lines out on
stdout (``{"ok": bool, "log": ...}``).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from course_lib.grading import feedback as safe_feedback
from course_lib.grading.course import nbgrader_env
from course_lib.grading.inside import wire

MAX_LOG_CHARS = 20_000  # of one request's log kept


def nbgrader_settings(cell_timeout: float) -> dict:
    """What the pipeline sets on top of the course's nbgrader_config.py (``Class.trait``: value;
    the sandbox adds its kernel settings)."""
    t = int(cell_timeout)
    return {"Execute.timeout": t, "ExecutePreprocessor.timeout": t,
            # Stop the kernel at the end by signal, not by a message on its control channel: a
            # notebook that wrote into its kernel's own sockets leaves that channel broken, and
            # jupyter_client's send on it blocks until something kills nbgrader
            # (tests/test_nbgrader_runner.py).
            "Execute.shutdown_kernel": "immediate",
            # A test cell the student deleted is put back from the gradebook and graded.
            "OverwriteCells.add_missing_cells": True,
            **safe_feedback.NBCONVERT_CONFIG}


def _warm_html_exporter():
    """nbconvert's HTMLExporter whose Jinja templates compile once per process.

    nbgrader builds a new exporter, and so a new Jinja environment, for every feedback page, and
    compiling the feedback template's files cost more than rendering them (profiled). The
    compiled code is kept in memory, keyed by template and checked against each template's
    source, so the pages are exactly the same (tests/test_nbgrader_runner.py)."""
    from jinja2 import BytecodeCache
    from nbconvert.exporters import HTMLExporter

    class MemoryBytecodeCache(BytecodeCache):
        def __init__(self) -> None:
            self.code: dict[str, bytes] = {}

        def load_bytecode(self, bucket) -> None:
            if bucket.key in self.code:
                bucket.bytecode_from_string(self.code[bucket.key])

        def dump_bytecode(self, bucket) -> None:
            self.code[bucket.key] = bucket.bytecode_to_string()

    compiled = MemoryBytecodeCache()

    class WarmHTMLExporter(HTMLExporter):
        def _create_environment(self):
            environment = super()._create_environment()
            environment.bytecode_cache = compiled
            return environment

    return WarmHTMLExporter


def compiled_schema_validate():
    """A drop-in ``jsonschema.validate`` that checks and compiles each schema once.

    nbgrader checks every cell's metadata with ``jsonschema.validate(metadata, schema)``, which
    first checks the schema itself against its meta-schema, on every call: two thirds of
    nbgrader's own CPU before a notebook's kernel starts (profiled). The runner process gives
    nbgrader this one instead; it raises the same error for the same metadata
    (tests/test_nbgrader_runner.py)."""
    import jsonschema

    compiled: dict[str, object] = {}

    def validate(instance, schema) -> None:
        key = json.dumps(schema, sort_keys=True)
        validator = compiled.get(key)
        if validator is None:
            cls = jsonschema.validators.validator_for(schema)
            cls.check_schema(schema)
            validator = compiled[key] = cls(schema)
        error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
        if error is not None:
            raise error

    return validate


def _serve(course: Path, assignment: str, overrides: dict) -> None:
    """The runner process's loop."""
    import types

    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory
    from nbgrader.nbgraderformat import common
    from traitlets.config import Config
    from traitlets.config.loader import PyFileConfigLoader

    common.jsonschema = types.SimpleNamespace(validate=compiled_schema_validate())
    os.chdir(course)
    config = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    config.CourseDirectory.root = str(course)
    for dotted, value in overrides.items():
        section, _, name = dotted.rpartition(".")
        config[section][name] = value
    feedback = Config(config)
    feedback.HTMLExporter.template_name = "feedback"
    feedback.GenerateFeedback.exporter_class = _warm_html_exporter()
    # The channel is a private, non-inheritable copy of stdout; fd 1 itself becomes the log, so
    # nothing nbgrader, a kernel launcher or a kernel prints can reach the channel.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        try:
            request = json.loads(line)
        except ValueError:
            continue
        student = request.get("student")
        config_for = feedback if request.get("op") == "feedback" else config
        api = NbGraderAPI(coursedir=CourseDirectory(config=config_for), config=config_for)
        if request.get("op") == "feedback":
            result = api.generate_feedback(assignment, student, force=True)
        else:
            result = api.autograde(assignment, student, force=True, create=True)
        log = (result.get("log") or "") + (result.get("error") or "")
        out.write(json.dumps({"ok": bool(result.get("success")),
                              "log": log[-MAX_LOG_CHARS:]}) + "\n")
        out.flush()


class NbgraderRunner:
    """The worker's side: :meth:`run` one request with a deadline (use as a context manager)."""

    def __init__(self, course: Path, assignment: str, overrides: dict, env: dict,
                 log: Path | None = None) -> None:
        self.course, self.assignment = Path(course), assignment
        self.overrides, self.env, self.log = overrides, nbgrader_env(env), log
        self.proc = None
        self.reader = None

    def __enter__(self) -> "NbgraderRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        err = open(self.log, "a") if self.log else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "course_lib.grading.nbgrader_runner", str(self.course),
                 self.assignment, json.dumps(self.overrides)],
                cwd=self.course, env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=err, start_new_session=True)
        finally:
            if err is not subprocess.DEVNULL:
                err.close()
        self.reader = wire.LineReader(self.proc.stdout.fileno())

    def start_soon(self) -> None:
        """Start the process now (its imports then overlap the rest of the worker's start-up)."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self._kill()
            self.proc.stdout.close()
        self.proc = self.reader = None

    def _kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # nbgrader and its kernel launchers
        except OSError:
            pass
        self.proc.wait()

    def run(self, op: str, student: str, deadline_s: float) -> tuple[bool | None, str]:
        """(success, log) of one request; (None, why) when the runner died or ran past
        ``deadline_s`` (it is then stopped; the next request starts a fresh one). A stopped
        autograde has written its copy of the notebook and zeros in the gradebook BEFORE the
        notebook ran: they are no grade."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        started = time.monotonic()
        try:
            self.proc.stdin.write((json.dumps({"op": op, "student": student}) + "\n").encode())
            self.proc.stdin.flush()
            reply = self.reader.read(deadline_s)
        except TimeoutError:
            reply, why = None, f"nbgrader {op} ran past {deadline_s:g} s: stopped"
        except OSError:
            reply, why = None, f"nbgrader {op}: its process ended"
        else:
            why = f"nbgrader {op}: its process ended"
        if reply is None:
            self._kill()
            self.proc.stdout.close()
            self.proc = self.reader = None
            if self.log:
                with open(self.log, "a") as f:
                    f.write(f"\n[grading] {why} after {time.monotonic() - started:.0f} s\n")
            return None, why
        if self.log:
            with open(self.log, "a") as f:
                f.write(f"[grading] {op} {student}: {'ok' if reply.get('ok') else 'FAILED'}\n"
                        f"{reply.get('log', '')}\n")
        return bool(reply.get("ok")), str(reply.get("log", ""))


if __name__ == "__main__":
    _serve(Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]))
