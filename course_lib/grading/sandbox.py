"""The one door through which student code runs: a bubblewrap (``bwrap``) sandbox.

Every execution of student code by the grading pipeline (the kernels ``nbgrader autograde`` starts,
and the re-check) goes through :class:`Sandbox`. Inside, student code:

* sees only the system folders (``/usr``, ``/etc``, ``/lib``..., read-only) and the Python
  installation (the interpreter, its packages: :func:`python_dirs`, not every ``sys.path`` entry,
  mounted after the private ``/tmp`` and the masks so that a venv under ``/tmp`` or inside a hidden
  checkout stays visible), nothing else of the machine: not the course directory (solutions,
  gradebook, other students' submissions), not the pipeline's work folders or the submissions, not
  the repository course_lib was installed from, not any other copy of them elsewhere on the disk,
  not home folders, ``/run`` (service sockets) or the real ``/tmp``; secret files such as
  ``/etc/shadow`` read as empty (an allowlist: the issue's ``--ro-bind / /`` plus masks left every
  unmasked copy of the solutions readable);
* imports course_lib from a read-only snapshot taken when grading started (so no submission can
  change the code that grades later ones);
* can write only to its own scratch folder (bound over the notebook's folder, so nothing it leaves
  there, a symlink included, is ever read by the pipeline) and to a small private ``/tmp``;
* runs as an unprivileged user in new user, PID, IPC, UTS and network namespaces (no network, no
  loopback services) with every capability dropped and a cleared environment;
* has its memory (``RLIMIT_AS``), file sizes (``RLIMIT_FSIZE``), number of processes (a watchdog:
  RLIMIT_NPROC is not enforced for a root-owned user namespace) and wall-clock time bounded; when
  it ends, its whole process tree ends with it (the PID namespace dies with its first process).

The kernel talks to nbgrader over IPC sockets in a bound folder (TCP cannot cross
``--unshare-net``). It is interrupted by SIGINT, which the supervising launcher forwards to the
kernel inside (bwrap, in a session of its own, never sees it; a message-mode interrupt would hang
nbclient for good on a kernel that is already dead). Recipe and gotchas:
shared/DESIGN.md and book/instructor_guide.md ("Broken and hostile notebooks").

A shard's kernels are normally forked by a warm nursery in one such sandbox
(:mod:`course_lib.grading.nursery`); :func:`launch_kernel` falls back to a sandbox per kernel.

``python -m course_lib.grading.sandbox kernel CONFIG -f CONNECTION_FILE`` is the kernelspec's
command (see :func:`install_kernelspec`); ``python -m course_lib.grading.sandbox check`` starts
the real sandbox with this interpreter and its mounts and imports what runs inside
(:func:`check_sandbox`), and says what to fix when it cannot.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import course_lib

# Files that must never be readable from inside, even though everything else is (the sandbox's
# user maps to the instructor's, who may be root).
SECRET_FILES = ("/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-",
                "/etc/sudoers", "/etc/ssh/ssh_host_rsa_key", "/etc/ssh/ssh_host_ecdsa_key",
                "/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_dsa_key")
# The only parts of the machine a sandbox sees (read-only), besides the Python installation: an
# allowlist, so that a copy of the course anywhere else on the disk (another checkout, a backup,
# a colleague's home) stays invisible.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/sys")
# Environment the sandbox passes on (everything else is cleared: tokens, database URLs, ...).
PASSED_ENV = ("LANG", "LC_ALL", "NBGRADER_EXECUTION", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
              "CUDA_VISIBLE_DEVICES", "COURSE_GPU_GRADER", "PYTHONHASHSEED", "TZ")
NOBODY = 65534


class SandboxUnavailable(RuntimeError):
    """This machine cannot run the sandbox; the message says how to fix it."""


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def check_available() -> None:
    """Raise :class:`SandboxUnavailable` with a fix when ``bwrap`` is missing or blocked."""
    bwrap = bwrap_path()
    if bwrap is None:
        raise SandboxUnavailable(
            "the grading sandbox needs bubblewrap, which is not installed: run "
            "`sudo apt-get install bubblewrap` (Debian/Ubuntu) or `sudo dnf install bubblewrap`, "
            "then grade again. To grade WITHOUT a sandbox (student code then runs as you, with "
            "your files in reach) pass --no-sandbox.")
    probe = subprocess.run([bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                            "--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY),
                            "--unshare-pid", "--unshare-net", "--cap-drop", "ALL", "true"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        why = (probe.stderr or probe.stdout).strip()
        hint = ("On Ubuntu 23.10 and later, AppArmor blocks unprivileged user namespaces: allow "
                "them for bwrap (e.g. `sudo sysctl kernel.apparmor_restrict_unprivileged_userns=0`,"
                " or an AppArmor profile for /usr/bin/bwrap with `userns,`). In a container, run "
                "it with user namespaces allowed (e.g. Docker's --security-opt "
                "seccomp=unconfined). Check `sysctl user.max_user_namespaces` is > 0.")
        raise SandboxUnavailable(f"bubblewrap is installed but cannot create a sandbox here "
                                 f"({why or f'exit code {probe.returncode}'}). {hint} To grade "
                                 "WITHOUT a sandbox pass --no-sandbox.")


def snapshot_course_lib(dest: Path) -> Path:
    """Copy the course_lib package that grades into ``dest/course_lib``; returns ``dest`` (the
    folder to put on PYTHONPATH). The copy is what every sandbox imports, read-only."""
    source = Path(course_lib.__file__).resolve().parent
    target = Path(dest) / "course_lib"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return Path(dest)


def _source_checkouts() -> list[Path]:
    """Repositories course_lib is imported from (an editable install, PYTHONPATH): they hold
    solutions/, so student code must not see them."""
    import importlib.util

    origins = {Path(course_lib.__file__).resolve()}
    for finder in sys.meta_path:  # an editable finder maps course_lib even when shadowed
        try:
            spec = finder.find_spec("course_lib", None)
        except Exception:  # finders of other packages may refuse odd calls
            continue
        if spec is not None and spec.origin:
            origins.add(Path(spec.origin).resolve())
    spec = importlib.util.find_spec("course_lib")
    if spec is not None and spec.origin:
        origins.add(Path(spec.origin).resolve())
    return sorted({o.parents[1] for o in origins if "site-packages" not in o.parts})


def python_dirs() -> list[str]:
    """The folders the interpreter and its packages live in, and nothing else: the prefixes (a
    venv's and the one it was made from), the interpreter's folder, sysconfig's install paths and
    the site-packages folders (the user's too, when it is on ``sys.path``). Other ``sys.path``
    entries are NOT included: a dask worker's local directory, pytest's temp folders, the working
    directory or a checkout on PYTHONPATH must not appear inside (course_lib comes from the
    snapshot). Outermost folders only."""
    import site
    import sysconfig

    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
            os.path.dirname(sys.executable), os.path.dirname(os.path.realpath(sys.executable))}
    dirs.update(p for p in sysconfig.get_paths().values() if p)
    dirs.update(site.getsitepackages())
    user_site = site.getusersitepackages() if site.ENABLE_USER_SITE else None
    if user_site and user_site in sys.path:
        dirs.add(user_site)
    real = sorted({os.path.realpath(d) for d in dirs if d and os.path.isdir(d)})
    return [d for d in real if not any(d.startswith(o + "/") for o in real)]  # outermost only


@dataclass
class Limits:
    mem_mb: int = 4096          # address space per process (RLIMIT_AS)
    file_mb: int = 64           # largest file it may write (RLIMIT_FSIZE)
    processes: int = 64         # processes alive at once in the sandbox
    tmp_mb: int = 256           # size of its private /tmp
    wall_s: float | None = None  # the whole run (kernel or re-check child); None: no limit


@dataclass
class Sandbox:
    """Where things are for one batch; serialisable for the kernel launcher (JSON)."""
    masked: list[str]                  # folders replaced by empty ones (course, work, sources)
    site: str                          # read-only course_lib snapshot, first on PYTHONPATH
    ipc_dir: str | None = None         # the kernels' IPC sockets (bound read-write)
    scratch_root: str | None = None    # where per-run scratch folders are made (outside view)
    limits: Limits = field(default_factory=Limits)
    events_dir: str | None = None      # launcher's reports (processes seen, wall time)
    nursery: str | None = None         # the warm-kernel broker's socket (nursery.Broker)

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_batch(cls, work: Path, hide: list[Path], limits: Limits | None = None) -> "Sandbox":
        """A sandbox for one grading batch whose private folders live under ``work``; ``hide``
        lists the folders student code must not see (course, submissions, repository, ...)."""
        work = Path(work).resolve()
        site = snapshot_course_lib(work / "site")
        (work / "empty").write_bytes(b"")  # what secret files read as, inside
        ipc = Path(tempfile.mkdtemp(prefix="cl-ipc-"))  # short: socket paths are limited to 107
        scratch = work / "scratch"
        events = work / "sandbox-events"
        scratch.mkdir(parents=True, exist_ok=True)
        events.mkdir(parents=True, exist_ok=True)
        masked = {str(Path(p).resolve()) for p in [*hide, work, *_source_checkouts()]}
        return cls(sorted(masked), str(site), str(ipc), str(scratch), limits or Limits(),
                   str(events))

    def for_shard(self) -> "Sandbox":
        """The same sandbox with IPC sockets of its own (one folder per shard course, so no
        kernel can reach another shard's kernel)."""
        return replace(self, ipc_dir=tempfile.mkdtemp(prefix="cl-ipc-"))

    def kernel_manager_args(self, name: str) -> list[str]:
        """nbgrader options that put its kernels on this sandbox's IPC sockets (and talk to them
        with :class:`SandboxKernelClient`)."""
        return ["--KernelManager.transport=ipc", f"--KernelManager.ip={self.ipc_dir}/{name}",
                f"--KernelManager.client_class={__name__}.SandboxKernelClient"]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Sandbox":
        data = json.loads(text)
        data["limits"] = Limits(**data["limits"])
        return cls(**data)

    # ------------------------------------------------------------------ the command
    def bwrap_argv(self, writable: dict[str, str], readonly: dict[str, str] | None = None,
                   env: dict[str, str] | None = None, cwd: str | None = None) -> list[str]:
        """bwrap's arguments. ``writable`` / ``readonly`` map host paths to sandbox paths."""
        bwrap = bwrap_path()
        if bwrap is None:
            check_available()
        argv = [bwrap]
        shown = []
        for d in SYSTEM_DIRS:
            if os.path.islink(d):  # merged /usr: /bin -> usr/bin
                argv += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                argv += ["--ro-bind", d, d]
                shown.append(d)
        argv += ["--dev", "/dev", "--proc", "/proc",
                 "--size", str(self.limits.tmp_mb * 2**20), "--tmpfs", "/tmp"]
        for d in self.masked:  # only matters where a shown folder holds the course
            if os.path.isdir(d) and any(_under(d, s) for s in shown):
                argv += ["--tmpfs", d]
        # The Python installation, read-only, AFTER the private /tmp and the masks: a venv under
        # /tmp (or inside a masked checkout, e.g. its .venv) would otherwise be hidden again and
        # the interpreter missing inside (bwrap: execvp ...: No such file or directory).
        python = [d for d in python_dirs() if not any(_under(d, s) for s in shown)
                  or any(_under(d, m) for m in self.masked)]
        for d in python:
            argv += ["--ro-bind", d, d]
        for d in self.masked:  # a masked folder inside the Python installation stays masked
            if os.path.isdir(d) and any(_under(d, p) and d != p for p in python):
                argv += ["--tmpfs", d]
        empty = os.path.join(os.path.dirname(self.site), "empty")
        for f in SECRET_FILES:
            if os.path.isfile(f):
                argv += ["--ro-bind", empty, f]
        argv += ["--ro-bind", self.site, self.site]
        for src, dst in (readonly or {}).items():
            argv += ["--ro-bind", src, dst]
        for src, dst in writable.items():
            argv += ["--bind", src, dst]
        for dev in sorted(Path("/dev").glob("nvidia*")):  # GPU graders: the devices, nothing else
            argv += ["--dev-bind", str(dev), str(dev)]
        argv += ["--remount-ro", "/"]  # the sandbox's own root: nothing to write there
        argv += ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY),
                 "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net",
                 "--unshare-cgroup-try", "--hostname", "sandbox", "--cap-drop", "ALL",
                 "--die-with-parent", "--new-session", "--clearenv"]
        full_env = {"PATH": f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin",
                    "HOME": "/tmp", "PYTHONPATH": self.site, "MPLBACKEND": "Agg",
                    "MPLCONFIGDIR": "/tmp/matplotlib", "PYTHONDONTWRITEBYTECODE": "1",
                    "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
        full_env.update({k: os.environ[k] for k in PASSED_ENV if k in os.environ})
        full_env.update(env or {})
        for k, v in full_env.items():
            argv += ["--setenv", k, v]
        if cwd:
            argv += ["--chdir", cwd]
        return argv

    def new_scratch(self, name: str, copy_from: Path | None = None) -> Path:
        """A fresh writable folder for one run (a copy of ``copy_from``'s files, no links)."""
        scratch = Path(tempfile.mkdtemp(prefix=f"{_safe(name)}-", dir=self.scratch_root))
        if copy_from is not None and Path(copy_from).is_dir():
            for item in Path(copy_from).iterdir():
                if item.is_file() and not item.is_symlink():
                    shutil.copy(item, scratch / item.name)
        os.chmod(scratch, 0o777)
        return scratch


@functools.lru_cache(maxsize=None)
def _kernel_client_class():
    from jupyter_client.asynchronous import AsyncKernelClient

    class SandboxKernelClient(AsyncKernelClient):
        """nbclient's kernel client without the heartbeat channel.

        Over IPC, a heartbeat socket re-created after the kernel died blocks its thread for good
        (a zmq send to a socket file that is gone), and nbclient then hangs joining it. The kernel
        manager's own check (is the launcher process alive?) is what nbclient uses anyway."""

        def start_channels(self, shell=True, iopub=True, stdin=True, hb=True, control=True):
            super().start_channels(shell=shell, iopub=iopub, stdin=stdin, hb=False,
                                   control=control)

    return SandboxKernelClient


def __getattr__(name: str):
    if name == "SandboxKernelClient":  # imported lazily: only the grader needs jupyter_client
        return _kernel_client_class()
    raise AttributeError(name)


def _under(path: str, folder: str) -> bool:
    folder = folder.rstrip("/") or "/"
    return path == folder or path.startswith(folder + "/") or folder == "/"


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:40] or "run"


# ---------------------------------------------------------------------- running a sandbox
def empty_folder(folder: Path) -> bool:
    """Delete what is in ``folder``, but never below a mount point: the sandbox's /tmp holds the
    folders bound into it (the IPC sockets, the kernels' folders) when their host paths lie
    under /tmp. Folders a kernel made unwritable are made writable first. Returns whether
    nothing is left but the mount points and the folders that lead to them."""
    try:
        device = os.lstat(folder).st_dev
    except OSError:
        return True
    dirs, clean = [], True
    for top, subdirs, files in os.walk(folder):
        try:
            os.chmod(top, 0o700)  # the owner (a kernel ran as the same user) may always
        except OSError:
            pass
        keep = []
        for d in subdirs:
            path = os.path.join(top, d)
            try:
                st = os.lstat(path)
                if os.path.islink(path):
                    os.unlink(path)
                elif st.st_dev == device:
                    keep.append(d)
                    dirs.append(path)
            except OSError:
                clean = False
        subdirs[:] = keep
        for f in files:
            try:
                os.unlink(os.path.join(top, f))
            except OSError:
                clean = False
    for path in reversed(dirs):  # deepest first; the ancestors of a mount point stay
        try:
            os.rmdir(path)
        except OSError:
            if not _leads_to_mount(path, device):
                clean = False
    return clean


def _leads_to_mount(path: str, device: int) -> bool:
    """Whether a folder is kept only because a mount point lies below it."""
    for top, subdirs, files in os.walk(path):
        if files:
            return False
        for d in list(subdirs):
            try:
                if os.lstat(os.path.join(top, d)).st_dev != device:
                    return True
            except OSError:
                return False
    return False


@dataclass
class RunReport:
    """What the supervisor saw of one sandboxed run."""
    name: str
    seconds: float
    max_processes: int      # processes the program started, at the busiest moment seen
    killed: str | None      # which limit it broke, if the supervisor killed it for that
    returncode: int | None
    audit: list[dict] = field(default_factory=list)  # spawned processes, writes outside


def _descendants(pid: int) -> list[int]:
    """PIDs below ``pid`` (via /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                kids = Path(f"/proc/{p}/task/{t}/children").read_text().split()
            except OSError:
                continue
            for k in kids:
                found.append(int(k))
                todo.append(int(k))
    return found


def _children(pid: int) -> list[int]:
    kids = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            kids += [int(k) for k in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
    except OSError:
        pass
    return kids


def _program_pid(bwrap_pid: int) -> int | None:
    """The host PID of the program bwrap runs (bwrap -> the namespace's init -> the program)."""
    for init in _children(bwrap_pid):
        for program in _children(init):
            return program
    return None


def _collect(fd: int, into: list[dict]) -> None:
    """Read the audit channel's JSON lines until it closes (bounded: a flood is cut)."""
    with os.fdopen(fd, "rb") as stream:
        for line in stream:
            if len(into) < 100:
                try:
                    event = json.loads(line)
                    into.append({"kind": str(event["kind"])[:20],
                                 "detail": str(event["detail"])[:300]})
                except (ValueError, KeyError, TypeError):
                    into.append({"kind": "garbage", "detail": "unreadable audit line"})


def run_sandboxed(box: "Sandbox", command: list[str], name: str, writable: dict[str, str],
                  readonly: dict[str, str] | None = None, cwd: str | None = None,
                  env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = (),
                  stdin=None, stdout=None, stderr=None, poll_s: float = 0.05,
                  forward_sigint: bool = False) -> RunReport:
    """Run ``command`` in ``box``, killing it (and so everything inside) when it exceeds its
    process count or wall time, or when this supervisor gets SIGTERM. ``forward_sigint``: pass
    SIGINT on to the program inside (a kernel's interrupt) instead of stopping it.

    bwrap runs in a session of its own, so the signals a kernel manager sends to this
    supervisor's process group reach the sandbox only through here."""
    import threading

    audit_read, audit_write = os.pipe()
    protected = [box.site, *box.masked, *(readonly or {}).values()]
    argv = box.bwrap_argv(writable, readonly,
                          env={**(env or {}), "COURSE_AUDIT_FD": str(audit_write),
                               "COURSE_AUDIT_PROTECTED": os.pathsep.join(
                                   p for p in protected if p not in writable.values())},
                          cwd=cwd)
    audit: list[dict] = []
    start = time.monotonic()
    try:
        proc = subprocess.Popen(argv + command, pass_fds=(*pass_fds, audit_write), stdin=stdin,
                                stdout=stdout, stderr=stderr, start_new_session=True)
    finally:
        os.close(audit_write)
    reader = threading.Thread(target=_collect, args=(audit_read, audit), daemon=True)
    reader.start()
    killed, peak, limits = None, 0, box.limits

    def stop(signum, frame):  # the kernel manager shutting its kernel down: not a problem
        if signum == signal.SIGINT and forward_sigint:
            program = _program_pid(proc.pid)
            if program is not None:
                try:
                    os.kill(program, signal.SIGINT)
                except OSError:
                    pass
            return
        proc.kill()

    in_main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)} if in_main else {}
    try:
        while proc.poll() is None:
            # bwrap -> its namespace's init -> the program: count what the program started.
            n = max(0, len(_descendants(proc.pid)) - 2)
            peak = max(peak, n)
            if n > limits.processes:
                killed = f"started more than {limits.processes} processes"
                proc.kill()
            elif limits.wall_s and time.monotonic() - start > limits.wall_s:
                killed = f"ran past its time budget of {limits.wall_s:g} s"
                proc.kill()
            time.sleep(poll_s)
        proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    reader.join(timeout=2)
    return RunReport(name, round(time.monotonic() - start, 2), peak, killed, proc.returncode,
                     audit)


# ---------------------------------------------------------------------- sandbox check
# What must import inside the box for grading to work: PyTorch, the kernel (ipykernel), the
# modules that run in there, and every assignment's checks (imported by the re-check server).
INSIDE_MODULES = ("torch", "ipykernel.kernelapp", "course_lib.grading.kernel",
                  "course_lib.grading.nursery", "course_lib.grading.recheck")
_PROBE = """
import importlib, json, pkgutil, sys, traceback
import course_lib.checks
found = {"course_lib": course_lib.checks.__file__, "failed": {}}
checks = pkgutil.iter_modules(course_lib.checks.__path__)
names = %r + [f"course_lib.checks.{m.name}" for m in checks]
for name in names:
    try:
        importlib.import_module(name)
    except BaseException as exc:
        found["failed"][name] = traceback.format_exception_only(type(exc), exc)[-1].strip()[:300]
print("PROBE " + json.dumps(found))
"""


def check_sandbox(hide: list[Path] = ()) -> str:
    """Start the REAL sandbox, with this interpreter and the mounts grading uses, and import the
    modules that run inside it (:data:`INSIDE_MODULES` and every assignment's checks). Returns
    a summary; raises :class:`SandboxUnavailable` saying what to fix when anything fails."""
    check_available()
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
        mounts = ", ".join(python_dirs())
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
    return (f"{bwrap_path()} runs {sys.executable} in the grading sandbox (mounted: {mounts}) and "
            f"imports {', '.join(INSIDE_MODULES)} and the checks of every assignment there")


# ---------------------------------------------------------------------- the kernel launcher
def install_kernelspec(folder: Path, sandbox: Sandbox | None, mem_mb: int) -> Path:
    """Write ``folder/kernels/python3/kernel.json``: the limited kernel, sandboxed unless
    ``sandbox`` is None. Returns ``folder`` (put it first on JUPYTER_PATH)."""
    spec_dir = Path(folder) / "kernels" / "python3"
    spec_dir.mkdir(parents=True, exist_ok=True)
    if sandbox is None:
        argv = [sys.executable, "-m", "course_lib.grading.kernel", "--mem-mb", str(int(mem_mb)),
                "-f", "{connection_file}"]
        name = f"Python 3 (grading, {mem_mb} MiB limit, NO sandbox)"
    else:
        config = spec_dir / "sandbox.json"
        config.write_text(sandbox.to_json())
        argv = [sys.executable, "-m", "course_lib.grading.sandbox", "kernel", str(config),
                "-f", "{connection_file}"]
        name = f"Python 3 (grading sandbox, {mem_mb} MiB limit)"
    # Interrupts by signal: the launcher passes SIGINT on to the kernel inside. (Message-mode
    # interrupts hang nbclient for good when the kernel is already dead: a blocking zmq send.)
    spec = {"argv": argv, "display_name": name, "language": "python",
            "interrupt_mode": "signal", "metadata": {"debugger": False}}
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    return Path(folder)


def _die_with_parent() -> None:
    """SIGTERM this launcher when the process that started it (nbgrader) dies, so that a killed
    grading run leaves no kernel behind (bwrap itself dies with the launcher)."""
    import ctypes

    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def launch_kernel(config: Path, connection_file: str, kernel_args: list[str] = ()) -> int:
    """The kernelspec's command (runs outside the sandbox, as the grader): start the kernel in a
    sandbox whose only writable folder is a scratch copy of the notebook's folder."""
    _die_with_parent()
    box = Sandbox.from_json(Path(config).read_text())
    cwd = os.getcwd()  # nbgrader starts the kernel in the notebook's folder
    if box.nursery:  # a warm kernel forked in the shard's sandbox, where there is one
        from course_lib.grading import nursery

        returncode = nursery.launch(box.nursery, connection_file, cwd, list(kernel_args))
        if returncode is not None:
            return returncode
    name = "/".join(Path(cwd).parts[-2:])
    scratch = box.new_scratch(Path(cwd).parent.name, copy_from=Path(cwd))
    lim = box.limits
    command = [sys.executable, "-m", "course_lib.grading.kernel", "--mem-mb", str(lim.mem_mb),
               "--file-mb", str(lim.file_mb), "-f", "/tmp/connection.json", *kernel_args]
    report = run_sandboxed(box, command, name,
                           writable={str(scratch): cwd, box.ipc_dir: box.ipc_dir},
                           readonly={connection_file: "/tmp/connection.json"}, cwd=cwd,
                           forward_sigint=True)
    if box.events_dir:
        events = Path(box.events_dir) / f"kernel-{Path(cwd).parent.name}.json"
        with open(events, "a") as f:  # one line per kernel start of this student
            f.write(json.dumps(asdict(report)) + "\n")
    shutil.rmtree(scratch, ignore_errors=True)  # never follows the links a student left
    return report.returncode or 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The grading sandbox (bubblewrap).")
    sub = parser.add_subparsers(dest="command", required=True)
    k = sub.add_parser("kernel", help="start a sandboxed kernel (a kernelspec's command)")
    k.add_argument("config", type=Path)
    k.add_argument("-f", dest="connection_file", required=True)
    sub.add_parser("check", help="start the real sandbox with this interpreter and say whether "
                   "grading can run in it (and what to fix when it cannot)")
    args, extra = parser.parse_known_args(argv)
    if args.command == "kernel":  # extra: the kernel's own options (nbclient adds some)
        return launch_kernel(args.config, args.connection_file, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        summary = check_sandbox()
    except SandboxUnavailable as exc:
        print(f"NO: {exc}")
        return 1
    print(f"yes: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
