"""Can this machine run the box? ``python -m course_lib.grading.sandbox check`` and the pipeline's
first step ask the real thing: the real policy, the real interpreter, the real imports.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from course_lib.grading.sandbox.policy import (NOBODY, Limits, Sandbox, SandboxUnavailable,
                                               require_bwrap)
from course_lib.grading.sandbox.supervisor import run_sandboxed

# What every run in the box imports: the kernel, the nursery, the re-check and what they preload.
INSIDE_MODULES = ("torch", "ipykernel.kernelapp", "IPython", "nbformat", "nbgrader.utils",
                  "course_lib.grading.inside.kernel", "course_lib.grading.inside.nursery",
                  "course_lib.grading.inside.recheck", "course_lib.checks")

_USERNS_HINT = ("On Ubuntu 23.10 and later, AppArmor blocks unprivileged user namespaces: allow "
                "them for bwrap (e.g. `sudo sysctl kernel.apparmor_restrict_unprivileged_userns=0`,"
                " or an AppArmor profile for /usr/bin/bwrap with `userns,`). In a container, run "
                "it with user namespaces allowed (e.g. Docker's --security-opt "
                "seccomp=unconfined). Check `sysctl user.max_user_namespaces` is > 0.")


def check_available() -> None:
    """Raise :class:`SandboxUnavailable` with a fix when ``bwrap`` is missing or blocked (a quick
    probe of the namespaces; :func:`check_inside` tries the real thing)."""
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


def check_inside(modules: tuple[str, ...] = (), timeout: float = 300) -> str:
    """Start the real sandbox (the grading policy, this interpreter, the course_lib snapshot) and
    import what runs inside, plus ``modules`` (an assignment's checks). Returns a one-line
    summary; raises :class:`SandboxUnavailable` saying what failed and what to do."""
    check_available()
    with tempfile.TemporaryDirectory(prefix="sandbox-check-") as tmp:
        box = Sandbox.for_batch(Path(tmp) / "work", hide=[], limits=Limits(wall_s=timeout))
        out = Path(tmp) / "out.txt"
        names = [*INSIDE_MODULES, *modules]
        code = ("import importlib, sys\n"
                f"for name in {names!r}:\n"
                "    importlib.import_module(name)\n"
                "import course_lib\n"
                "print('imports ok from', sys.executable, 'course_lib', course_lib.__file__)\n")
        with open(out, "w") as stream:
            report = run_sandboxed(box, [sys.executable, "-c", code], "sandbox check",
                                   writable={}, stdout=stream, stderr=subprocess.STDOUT)
        text = out.read_text(errors="replace").strip()
    if report.returncode == 0 and "imports ok" in text:
        return (f"{require_bwrap()} runs this interpreter ({sys.executable}) in the grading "
                f"sandbox and imports {', '.join(names)} there")
    tail = " | ".join(text.splitlines()[-4:]) or f"exit code {report.returncode}"
    if "execvp" in text or "No such file" in text:
        fix = (f"the interpreter {sys.executable} or its packages are not visible inside the "
               "sandbox; install the course into a virtual environment outside the course "
               "folder, or report this layout as a bug")
    elif "ModuleNotFoundError" in text or "ImportError" in text:
        fix = ("a package the kernels need is missing from this environment: run `python -m pip "
               "install -r requirements.txt` with this interpreter")
    elif report.killed:
        fix = f"the check itself {report.killed}; is the machine overloaded?"
    else:
        fix = _USERNS_HINT
    raise SandboxUnavailable(f"the grading sandbox cannot run student code on this machine "
                             f"({tail}): {fix}. To grade WITHOUT a sandbox pass --no-sandbox.")
