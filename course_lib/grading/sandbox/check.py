"""Can this machine run the box? ``python -m course_lib.grading.sandbox check`` and the pipeline's
first step ask the real thing: the real policy, the real interpreter, the real imports.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from course_lib.grading.sandbox import cgroups, policy, seccomp
from course_lib.grading.sandbox.policy import (NOBODY, SYSTEM_DIRS, Limits, Sandbox,
                                               SandboxUnavailable, require_bwrap)
from course_lib.grading.sandbox.supervisor import run_sandboxed
from course_lib.grading.sources import course_lib_hash

# What every run in the box imports: the kernel, the nursery, the re-check and what they preload.
INSIDE_MODULES = ("torch", "ipykernel.kernelapp",
                  "course_lib.grading.inside.kernel", "course_lib.grading.inside.nursery",
                  "course_lib.grading.inside.recheck")

_USERNS_HINT = ("On Ubuntu 23.10 and later, AppArmor blocks unprivileged user namespaces: allow "
                "them for bwrap (e.g. `sudo sysctl kernel.apparmor_restrict_unprivileged_userns=0`,"
                " or an AppArmor profile for /usr/bin/bwrap with `userns,`). In a container, run "
                "it with user namespaces allowed (e.g. Docker's --security-opt "
                "seccomp=unconfined). Check `sysctl user.max_user_namespaces` is > 0.")


def check_available() -> None:
    """Raise :class:`SandboxUnavailable` with a fix when ``bwrap`` is missing or blocked (a quick
    probe of the namespaces; :func:`check_sandbox` tries the real thing)."""
    bwrap = require_bwrap()
    probe = subprocess.run([bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                            "--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY),
                            "--unshare-pid", "--unshare-net", "--cap-drop", "ALL", "true"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        why = (probe.stderr or probe.stdout).strip()
        raise SandboxUnavailable(f"bubblewrap is installed but cannot create a sandbox here "
                                 f"({why or f'exit code {probe.returncode}'}). {_USERNS_HINT} To "
                                 "grade WITHOUT a sandbox pass --no-sandbox.")


_PROBE = """
import importlib, json, pkgutil, sys, traceback
import course_lib.checks
found = {"python": sys.executable, "course_lib": course_lib.checks.__file__, "failed": {},
         "seccomp": [l.split()[1] for l in open("/proc/self/status") if l.startswith("Seccomp:")]}
names = %r + [f"course_lib.checks.{m.name}" for m in pkgutil.iter_modules(course_lib.checks.__path__)]
for name in names + ["nbgrader.utils"]:
    try:  # nbgrader's utils as the re-check loads them (recheck.nbgrader_utils)
        if name == "nbgrader.utils":
            from course_lib.grading.inside.recheck import nbgrader_utils
            nbgrader_utils()
        else:
            importlib.import_module(name)
    except BaseException as exc:
        found["failed"][name] = traceback.format_exception_only(type(exc), exc)[-1].strip()[:300]
print("PROBE " + json.dumps(found))
"""


# The checks that passed in this process, by what they depend on: grading several assignments
# from one process (a script, a notebook) starts the box and imports torch there once, not once
# per class (seconds of CPU each).
_PASSED: dict[tuple, str] = {}


def check_sandbox(hide: list[Path] = ()) -> str:
    """Start the REAL sandbox, with this interpreter and the mounts grading uses, and import the
    modules that run inside it (:data:`INSIDE_MODULES` and every assignment's checks). Returns
    a summary; raises :class:`SandboxUnavailable` saying what to fix when anything fails. A check
    that passed is not repeated in this process while bwrap, the interpreter, its folders, the
    masks, the modules and course_lib's sources stay the same."""
    check_available()
    key = (require_bwrap(), sys.executable, tuple(map(str, hide)), tuple(policy.python_dirs()),
           INSIDE_MODULES, course_lib_hash())
    if key not in _PASSED:
        _PASSED[key] = _check_in_the_box(hide)
    return _PASSED[key]


def _check_in_the_box(hide: list[Path]) -> str:
    with tempfile.TemporaryDirectory(prefix="cl-sandbox-check-") as tmp:
        box = Sandbox.for_batch(Path(tmp) / "work", hide=list(hide), limits=Limits(wall_s=300))
        scratch = box.new_scratch("check")
        log = Path(tmp) / "probe.out"
        probe = [sys.executable, "-c", _PROBE % (list(INSIDE_MODULES),)]
        try:
            with open(log, "wb") as out:
                report = run_sandboxed(box, probe, "check", writable={str(scratch): str(scratch)},
                                       cwd=str(scratch), stdout=out, stderr=subprocess.STDOUT)
        finally:
            shutil.rmtree(box.ipc_dir, ignore_errors=True)
        text = log.read_text(errors="replace")
        mounts = ", ".join(box.python)
        found = None
        for line in text.splitlines():
            if line.startswith("PROBE "):
                found = json.loads(line[len("PROBE "):])
        if found is None:
            tail = "\n    ".join(text.strip().splitlines()[-8:]) or "(no output)"
            where = ""
            if "execvp" in text or "No such file" in text:
                where = (f" The interpreter {sys.executable} is not visible inside: the sandbox "
                         f"mounts only the system folders ({', '.join(SYSTEM_DIRS)}) and the "
                         f"Python installation ({mounts}); install the interpreter in one of "
                         "them or in an ordinary venv (python3 -m venv), not behind a link "
                         "into a folder the grader hides (the course, the submissions, the "
                         "output folder).")
            elif report.killed:
                where = f" The sandbox was stopped: it {report.killed}."
            raise SandboxUnavailable(
                f"the grading sandbox started but could not run {sys.executable} (exit code "
                f"{report.returncode}):\n    {tail}\n{where}".rstrip())
        if found["failed"]:
            lines = "\n    ".join(f"{k}: {v}" for k, v in found["failed"].items())
            raise SandboxUnavailable(
                f"inside the grading sandbox, {sys.executable} cannot import what grading "
                f"needs:\n    {lines}\nThe sandbox shows only the system folders and the "
                f"Python installation ({mounts}), plus a copy of course_lib. Install the "
                f"missing packages into this interpreter (`{sys.executable} -m pip install -r "
                "requirements.txt`), not into a folder added with PYTHONPATH or a .pth file "
                "outside these folders, and run this check again.")
        if not found["course_lib"].startswith(box.site):
            raise SandboxUnavailable(
                f"inside the sandbox course_lib was imported from {found['course_lib']}, not from "
                f"the grader's read-only snapshot under {box.site}: remove that copy from the "
                "interpreter's site-packages (`pip uninstall course_lib` there, then install it "
                "again with `pip install -e .` or the wheel).")
        if seccomp.supported() and found["seccomp"] != ["2"]:
            raise SandboxUnavailable(
                "the grading sandbox started without its system-call filter (bwrap --seccomp): "
                f"/proc/self/status says Seccomp: {found['seccomp']}; install bubblewrap >= 0.3")
        nested = _nested_namespaces(box, scratch)
    return (f"{require_bwrap()} runs {sys.executable} in the grading sandbox (mounted: {mounts}) "
            f"and imports {', '.join(INSIDE_MODULES)} and the checks of every assignment there."
            f"\nLimits enforced on this machine: {enforced_limits(Limits())}"
            + ("\nEach submission's kernel and re-check run in a PID namespace of their own "
               "(they can signal nothing outside it; one kill ends all they started)." if nested
               else "\nNOT isolated: this kernel refuses nested user namespaces in the box, so "
               "each submission's kernel and re-check run in the box's PID namespace (they could "
               "signal the nursery or the re-check's server: a stopped server is noticed in "
               "seconds and replaced, a stopped nursery ends only that kernel's sandbox)."))


# What the re-check's zygote and the nursery do for each child (inside/isolation.py), tried in a
# box started the way they are (the filter loaded by the program, not by bwrap).
_NESTED = """
import os
from course_lib.grading.inside import isolation
pid = os.fork()
if pid == 0:
    os._exit(0 if isolation.enter_namespaces() else 1)
print("NESTED", os.waitpid(pid, 0)[1] == 0)
"""


def _nested_namespaces(box: Sandbox, scratch: Path) -> bool:
    """Whether a process in the box may give its children a PID namespace of their own."""
    out = scratch.parent / f"{scratch.name}.nested"
    with open(out, "wb") as stdout:
        run_sandboxed(box, [sys.executable, "-c", _NESTED], "check-nested",
                      writable={str(scratch): str(scratch)}, cwd=str(scratch), stdout=stdout,
                      stderr=subprocess.STDOUT, filter_inside=True)
    return "NESTED True" in out.read_text(errors="replace")


def enforced_limits(limits: Limits) -> str:
    """Which of the box's limits this machine enforces, in one paragraph (for ``sandbox check``
    and the report): the per-process ones always, the whole-notebook caps where it has cgroups,
    the system-call filter where its architecture is supported."""
    lim = limits
    parts = [f"per process: {lim.mem_mb} MiB of address space, files of at most {lim.file_mb} MiB",
             f"{lim.processes} processes at once (watchdog)",
             f"private tmpfs: /tmp {lim.tmp_mb} MiB, /dev/shm {lim.shm_mb} MiB, the re-check's "
             f"scratch {lim.scratch_mb} MiB"]
    if not lim.caps:
        parts.append("whole-notebook caps and the system-call filter turned OFF")
        return "; ".join(parts)
    tree = cgroups.hierarchy()
    if tree.bases:
        caps = {"memory": f"{lim.mem_mb} MiB of memory (all processes and shared memory)",
                "pids": f"{lim.tasks} tasks",
                "cpu": "an equal share of the CPU" + (f", at most {lim.cpus:g} CPU" if lim.cpus
                                                      else ""),
                cgroups.FREEZER: "all its processes frozen, then killed together, at its end"}
        parts.append(f"per notebook (cgroup v{tree.version}): "
                     + ", ".join(caps[c] for c in tree.controllers))
        if tree.why:
            parts.append(f"not capped: {tree.why}")
    else:
        parts.append(f"NO whole-notebook caps: {tree.why}")
    if seccomp.supported():
        parts.append(f"system-call filter: {len(seccomp.DENIED)} calls denied (ptrace, mount, "
                     "unshare, setns, keyctl, bpf, perf_event_open, userfaultfd, io_uring, IPC ...)")
    else:
        parts.append(f"NO system-call filter: none for the {seccomp.machine()} architecture "
                     "(x86_64 and aarch64 only)")
    return "; ".join(parts)
