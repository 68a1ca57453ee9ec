"""The box's mount policy, as data: what student code sees, turned into bubblewrap's argv.

Inside, student code

* sees only the system folders (``/usr``, ``/etc``, ``/lib``..., read-only) and the Python that
  grades (its interpreter, its standard library and its installed packages, read-only), nothing
  else of the machine: not the course directory (solutions, gradebook, other students'
  submissions), not the pipeline's work folders or the submissions, not the repository course_lib
  was installed from, not any other copy of them elsewhere on the disk, not home folders, ``/run``
  or the real ``/tmp``; secret files such as ``/etc/shadow`` read as empty (an allowlist: ``--ro-bind
  / /`` plus masks left every unmasked copy of the solutions readable);
* imports course_lib from a read-only snapshot taken when grading started (so no submission can
  change the code that grades later ones);
* can write only to its own folder, a small private ``/tmp`` and ``/dev/shm`` (size-limited
  tmpfs: nothing reaches the disk, and the memory they hold counts against the notebook's cap);
* runs as an unprivileged user in new user, PID, IPC, UTS and network namespaces (no network, no
  loopback services) with every capability dropped and a cleared environment, under a system-call
  filter (:mod:`.seccomp`) and, where the machine has cgroups, whole-notebook caps on memory,
  tasks and CPU (:mod:`.cgroups`, applied by the :mod:`.supervisor`).

Order matters (:meth:`Sandbox.mounts`): the Python installation and the snapshot are mounted AFTER
the private ``/tmp`` and the masks, so that a virtual environment under ``/tmp`` or inside a
masked folder (a ``.venv`` in the course checkout) stays visible, and masks inside the Python
installation are laid again after it. Only the interpreter's own folders are mounted, never every
``sys.path`` entry (a dask worker's scratch space or a test's temporary folder would show).
"""
from __future__ import annotations

import json
import os
import shutil
import site
import sys
import sysconfig
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import course_lib
from course_lib.grading.inside.hygiene import copy_plain_files

# Files that must never be readable from inside, even though the folders holding them are (the
# sandbox's user maps to the instructor's, who may be root).
SECRET_FILES = ("/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-",
                "/etc/sudoers", "/etc/ssh/ssh_host_rsa_key", "/etc/ssh/ssh_host_ecdsa_key",
                "/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_dsa_key")
# The only parts of the machine a sandbox sees (read-only), besides the Python installation.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/sys")
# Environment the sandbox passes on (everything else is cleared: tokens, database URLs, ...).
PASSED_ENV = ("LANG", "LC_ALL", "NBGRADER_EXECUTION", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
              "CUDA_VISIBLE_DEVICES", "COURSE_GPU_GRADER", "PYTHONHASHSEED", "TZ")
NOBODY = 65534


class SandboxUnavailable(RuntimeError):
    """This machine cannot run the sandbox; the message says how to fix it."""


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def require_bwrap() -> str:
    """bwrap's path, or :class:`SandboxUnavailable` saying how to install it."""
    bwrap = bwrap_path()
    if bwrap is None:
        raise SandboxUnavailable(
            "the grading sandbox needs bubblewrap, which is not installed: run "
            "`sudo apt-get install bubblewrap` (Debian/Ubuntu) or `sudo dnf install bubblewrap`, "
            "then grade again. To grade WITHOUT a sandbox (student code then runs as you, with "
            "your files in reach) pass --no-sandbox.")
    return bwrap


def snapshot_course_lib(dest: Path) -> Path:
    """Copy the course_lib package that grades into ``dest/course_lib``; returns ``dest`` (the
    folder to put on PYTHONPATH). The copy is what every sandbox imports, read-only."""
    source = Path(course_lib.__file__).resolve().parent
    target = Path(dest) / "course_lib"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return Path(dest)


def source_checkouts() -> list[Path]:
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
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
            os.path.dirname(sys.executable), os.path.dirname(os.path.realpath(sys.executable))}
    dirs.update(p for p in sysconfig.get_paths().values() if p)
    dirs.update(site.getsitepackages())
    user_site = site.getusersitepackages() if site.ENABLE_USER_SITE else None
    if user_site and user_site in sys.path:
        dirs.add(user_site)
    real = sorted({os.path.realpath(d) for d in dirs if d and os.path.isdir(d)})
    real = [d for d in real if d not in ("/", "/tmp")]
    return [d for d in real if not any(d.startswith(o + "/") for o in real)]  # outermost only


def _under(path: str, folder: str) -> bool:
    folder = folder.rstrip("/") or "/"
    return path == folder or path.startswith(folder + "/") or folder == "/"


@dataclass
class Limits:
    mem_mb: int = 4096          # address space per process (RLIMIT_AS)
    file_mb: int = 64           # largest file it may write (RLIMIT_FSIZE)
    processes: int = 64         # processes alive at once in the sandbox
    tmp_mb: int = 256           # size of its private /tmp
    wall_s: float | None = None  # the whole run (kernel or re-check server); None: no limit
    shm_mb: int = 256           # size of its private /dev/shm
    scratch_mb: int = 512       # size of the re-check's scratch folder (a tmpfs)
    # Whole-notebook caps (sandbox.cgroups), where this machine has cgroups: memory (all its
    # processes and its tmpfs folders together: mem_mb), tasks (processes and threads), CPUs.
    tasks: int = 512
    cpus: float | None = None   # a hard cap in CPUs; None: an equal share of the machine only
    # Issue 21's protections: the cgroup caps, the system-call filter, the namespaces of each
    # kernel and re-check child, and value-only checks (off: only to measure what they cost).
    caps: bool = True


@dataclass(frozen=True)
class Mount:
    """One line of the policy: ``kind`` is a bwrap option (``--ro-bind``, ``--bind``,
    ``--tmpfs``, ``--symlink``, ``--dev-bind``, ``--dev``, ``--proc``, ``--remount-ro``)."""
    kind: str
    source: str | None
    target: str
    size_bytes: int | None = None  # for --tmpfs

    def argv(self) -> list[str]:
        size = ["--size", str(self.size_bytes)] if self.size_bytes else []
        if self.source is None:
            return [*size, self.kind, self.target]
        return [self.kind, self.source, self.target]


@dataclass
class Sandbox:
    """Where things are for one batch; serialisable for the kernel launcher (JSON)."""
    masked: list[str]                  # folders replaced by empty ones (course, work, sources)
    site: str                          # read-only course_lib snapshot, first on PYTHONPATH
    ipc_dir: str | None = None         # the kernels' IPC sockets (bound read-write)
    scratch_root: str | None = None    # where per-run scratch folders are made (outside view)
    limits: Limits = field(default_factory=Limits)
    events_dir: str | None = None      # launcher's reports (processes seen, wall time)
    nursery: str | None = None         # the warm-kernel broker's socket (sandbox.broker)
    python: list[str] = field(default_factory=lambda: python_dirs())  # the interpreter's

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_batch(cls, work: Path, hide: list[Path], limits: Limits | None = None) -> "Sandbox":
        """A sandbox for one grading batch whose private folders live under ``work``; ``hide``
        lists the folders student code must not see (course, submissions, repository, ...)."""
        work = Path(work).resolve()
        site_dir = snapshot_course_lib(work / "site")
        (work / "empty").write_bytes(b"")  # what secret files read as, inside
        ipc = Path(tempfile.mkdtemp(prefix="cl-ipc-"))  # short: socket paths are limited to 107
        scratch = work / "scratch"
        events = work / "sandbox-events"
        scratch.mkdir(parents=True, exist_ok=True)
        events.mkdir(parents=True, exist_ok=True)
        masked = {str(Path(p).resolve()) for p in [*hide, work, *source_checkouts()]}
        return cls(sorted(masked), str(site_dir), str(ipc), str(scratch), limits or Limits(),
                   str(events))

    def for_shard(self) -> "Sandbox":
        """The same sandbox with IPC sockets of its own (one folder per shard course, so no
        kernel can reach another shard's kernel)."""
        return replace(self, ipc_dir=tempfile.mkdtemp(prefix="cl-ipc-"))

    def kernel_manager_args(self, name: str) -> list[str]:
        """nbgrader options that put its kernels on this sandbox's IPC sockets (and talk to them
        with :class:`~course_lib.grading.sandbox.kernelspec.SandboxKernelClient`)."""
        return [f"--{k}={v}" for k, v in self.kernel_manager_config(name).items()]

    def kernel_manager_config(self, name: str) -> dict[str, str]:
        return {"KernelManager.transport": "ipc", "KernelManager.ip": f"{self.ipc_dir}/{name}",
                "KernelManager.client_class": "course_lib.grading.sandbox.SandboxKernelClient"}

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Sandbox":
        data = json.loads(text)
        data["limits"] = Limits(**data["limits"])
        return cls(**data)

    # ------------------------------------------------------------------ the policy
    def mounts(self, writable: dict[str, str], readonly: dict[str, str] | None = None,
               tmpfs: dict[str, int] | None = None) -> list[Mount]:
        """The mount policy for one run, in bwrap's order. ``writable`` / ``readonly`` map host
        paths to sandbox paths; ``tmpfs`` maps sandbox paths to the size (MiB) of a private
        writable folder there."""
        plan: list[Mount] = []
        shown: list[str] = []
        for d in SYSTEM_DIRS:
            if os.path.islink(d):  # merged /usr: /bin -> usr/bin
                plan.append(Mount("--symlink", os.readlink(d), d))
            elif os.path.isdir(d):
                plan.append(Mount("--ro-bind", d, d))
                shown.append(d)
        plan += [Mount("--dev", None, "/dev"), Mount("--proc", None, "/proc"),
                 Mount("--tmpfs", None, "/tmp", self.limits.tmp_mb * 2**20),
                 Mount("--tmpfs", None, "/dev/shm", self.limits.shm_mb * 2**20)]
        masks = [d for d in self.masked if os.path.isdir(d)]
        plan += [Mount("--tmpfs", None, d) for d in masks if any(_under(d, s) for s in shown)]
        # After /tmp and the masks: a venv under /tmp or in a masked checkout stays visible.
        python = [d for d in self.python if os.path.isdir(d) and (
            not any(_under(d, s) for s in shown) or any(_under(d, m) for m in masks))]
        plan += [Mount("--ro-bind", d, d) for d in python]
        plan += [Mount("--tmpfs", None, d) for d in masks  # a masked folder inside the Python
                 if any(_under(d, p) and d != p for p in python)]
        empty = os.path.join(os.path.dirname(self.site), "empty")
        plan += [Mount("--ro-bind", empty, f) for f in SECRET_FILES if os.path.isfile(f)]
        plan.append(Mount("--ro-bind", self.site, self.site))
        plan += [Mount("--ro-bind", src, dst) for src, dst in (readonly or {}).items()]
        plan += [Mount("--bind", src, dst) for src, dst in writable.items()]
        plan += [Mount("--tmpfs", None, dst, mb * 2**20) for dst, mb in (tmpfs or {}).items()]
        # GPU graders: the devices, nothing else.
        plan += [Mount("--dev-bind", str(dev), str(dev)) for dev in sorted(Path("/dev").glob("nvidia*"))]
        plan.append(Mount("--remount-ro", None, "/"))  # the sandbox's own root: nothing to write
        return plan

    def environment(self, env: dict[str, str] | None = None) -> dict[str, str]:
        full_env = {"PATH": f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin",
                    "HOME": "/tmp", "PYTHONPATH": self.site, "MPLBACKEND": "Agg",
                    "MPLCONFIGDIR": "/tmp/matplotlib", "PYTHONDONTWRITEBYTECODE": "1",
                    "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
        full_env.update({k: os.environ[k] for k in PASSED_ENV if k in os.environ})
        full_env.update(env or {})
        return full_env

    def bwrap_argv(self, writable: dict[str, str], readonly: dict[str, str] | None = None,
                   env: dict[str, str] | None = None, cwd: str | None = None,
                   seccomp_fd: int | None = None, tmpfs: dict[str, int] | None = None
                   ) -> list[str]:
        """bwrap's arguments for :meth:`mounts`, the namespaces and the environment;
        ``seccomp_fd``: the system-call filter (:mod:`.seccomp`) for everything inside;
        ``tmpfs``: writable folders made as size-limited tmpfs (path -> MiB), not on the disk."""
        argv = [require_bwrap()]
        for mount in self.mounts(writable, readonly, tmpfs):
            argv += mount.argv()
        if seccomp_fd is not None:
            argv += ["--seccomp", str(seccomp_fd)]
        argv += ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY),
                 "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net",
                 "--unshare-cgroup-try", "--hostname", "sandbox", "--cap-drop", "ALL",
                 "--die-with-parent", "--new-session", "--clearenv"]
        for k, v in self.environment(env).items():
            argv += ["--setenv", k, v]
        if cwd:
            argv += ["--chdir", cwd]
        return argv

    def new_scratch(self, name: str, copy_from: Path | None = None) -> Path:
        """A fresh writable folder for one run (a copy of ``copy_from``'s files, no links)."""
        scratch = Path(tempfile.mkdtemp(prefix=f"{safe_name(name)}-", dir=self.scratch_root))
        if copy_from is not None and Path(copy_from).is_dir():
            copy_plain_files(Path(copy_from), scratch)
        os.chmod(scratch, 0o777)
        return scratch


def safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:40] or "run"
