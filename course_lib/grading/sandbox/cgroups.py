"""Whole-notebook caps: one control group (a "cage") per kernel and per re-check job.

RLIMIT_AS caps each process; a cage caps everything a notebook runs, together: its memory (all
its processes, and what they write to ``/dev/shm`` and the box's other tmpfs folders, which the
kernel charges to the writer's group), its tasks (processes and threads: a fork bomb fails with
EAGAIN) and its CPU time (each cage has the same weight, so on a busy machine a notebook that
starts busy processes shares one notebook's part of the CPU among them; optionally a hard cap). When the memory cap is reached the kernel's OOM
killer ends a process of that cage, never one outside it.

Cages are made below the grader's own group (its limits still hold), with cgroup v2 where this
process's group can delegate the controllers, else with the v1 hierarchies (one folder per
controller). :func:`hierarchy` says what this machine allows (``sandbox check`` prints it); where
neither works, grading goes on without caps and says so. Standard library only.
"""
from __future__ import annotations

import functools
import os
import shlex
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from course_lib.grading.inside.hygiene import kill_until_gone

CONTROLLERS = ("memory", "pids", "cpu")
FREEZER = "freezer"  # cgroup v1 only: no cap, it stops a cage's processes so all die at once
FREEZE_WAIT_S = 1.0  # a process in uninterruptible sleep can delay freezing; then kill anyway
GROUP = "course-grading"  # the folder below the grader's own group that holds the cages
CGROUP_ENV = "COURSE_GRADING_CGROUP"  # cgroup v2: a folder for the cages, delegated to the grader
CPU_PERIOD_US = 100_000


@dataclass
class Hierarchy:
    """Where cages are made: ``version`` 2 (one folder) or 1 (a folder per controller), and the
    controllers that work; ``why`` says what is missing."""
    version: int | None
    bases: dict[str, Path] = field(default_factory=dict)  # controller -> the folder of cages
    why: str = ""

    @property
    def controllers(self) -> list[str]:
        return [c for c in (*CONTROLLERS, FREEZER) if c in self.bases]

    def describe(self) -> str:
        if not self.bases:
            return f"no whole-notebook caps on this machine ({self.why})"
        names = {"memory": "memory", "pids": "tasks", "cpu": "CPU",
                 FREEZER: "frozen before a kill"}
        text = (f"whole-notebook caps with cgroup v{self.version}: "
                f"{', '.join(names[c] for c in self.controllers)}")
        return text + (f" (not: {self.why})" if self.why else "")


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(root, mount point, fs type, super options) of each cgroup file system."""
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        left, _, right = line.partition(" - ")
        parts, rparts = left.split(), right.split()
        if len(parts) >= 5 and len(rparts) >= 3 and rparts[0] in ("cgroup", "cgroup2"):
            found.append((parts[3], parts[4], rparts[0], set(rparts[2].split(","))))
    return found


def _own_groups() -> dict[str, str]:
    """This process's group path per v1 controller, and "" -> its v2 path."""
    groups = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        for name in names.split(",") if names else [""]:
            groups[name] = path
    return groups


def _inside(mount_root: str, mount_point: str, path: str) -> Path | None:
    if mount_root != "/" and not (path + "/").startswith(mount_root.rstrip("/") + "/"):
        return None
    rel = path[len(mount_root.rstrip("/")):] if mount_root != "/" else path
    return Path(mount_point + rel)


def _make_base(parent: Path, name: str = GROUP) -> Path | None:
    base = parent / name
    try:
        base.mkdir(exist_ok=True)
        return base if os.access(base / "cgroup.procs", os.W_OK) else None
    except OSError:
        return None


def _delegate(folder: Path, wanted: list[str]) -> str:
    """Hand the controllers down below ``folder``; why not, or ""."""
    try:
        with open(folder / "cgroup.subtree_control", "w") as f:
            f.write(" ".join(f"+{c}" for c in wanted))
        return ""
    except OSError as exc:
        return f"cannot delegate {', '.join(wanted)} below {folder} ({exc.strerror})"


def _v2(own: Path) -> tuple[dict[str, Path], str]:
    """Cages below a v2 group: the folder named by ``COURSE_GRADING_CGROUP`` (made for the
    grader, holding none of its processes), else below the grader's own group (possible only
    where that group holds no process, the root's case), else beside it (where its parent is
    writable and already hands the controllers down, as systemd's slices do for root)."""
    try:
        available = set((own / "cgroup.controllers").read_text().split())
    except OSError as exc:
        return {}, f"cgroup v2: {exc.strerror}"
    wanted = [c for c in CONTROLLERS if c in available]
    if not wanted:
        return {}, "cgroup v2 has no memory, pids or cpu controller here"
    chosen = os.environ.get(CGROUP_ENV)
    places = [(Path(chosen).parent, Path(chosen).name)] if chosen else \
        [(own, GROUP), (own.parent, f"{GROUP}-{os.getuid()}")]
    reasons = []
    for parent, name in places:
        if not chosen and parent == own.parent and \
                not set(wanted) <= set(_read(parent / "cgroup.subtree_control").split()):
            reasons.append(f"{parent} does not hand down {', '.join(wanted)}")
            continue
        if parent == own and not chosen:
            why = _delegate(own, wanted)  # fails (EBUSY) in a group that holds processes
            if why:
                reasons.append(why)
                continue
        base = _make_base(parent, name)
        if base is None:
            reasons.append(f"cannot create groups in {parent}")
            continue
        why = _delegate(base, wanted)
        if why:
            reasons.append(why)
            continue
        return {c: base for c in wanted}, ""
    return {}, ("cgroup v2: " + "; ".join(reasons) + f" (run the grader as root, or set "
                f"{CGROUP_ENV} to a group delegated to it: instructor guide, section 4)")


@functools.lru_cache(maxsize=None)
def hierarchy() -> Hierarchy:
    """What this machine allows (asked once per process)."""
    try:
        groups = _own_groups()
    except OSError:
        return Hierarchy(None, why="no /proc/self/cgroup")
    mounts = _mounts()
    reasons = []
    for root, point, kind, _ in mounts:
        if kind == "cgroup2" and "" in groups:
            own = _inside(root, point, groups[""])
            if own is not None:
                bases, why = _v2(own)
                if bases:
                    return Hierarchy(2, bases, "")
                reasons.append(why)
    bases = {}
    for controller in (*CONTROLLERS, FREEZER):
        for root, point, kind, options in mounts:
            if kind == "cgroup" and controller in options and controller in groups:
                own = _inside(root, point, groups[controller])
                base = _make_base(own) if own is not None else None
                if base is not None:
                    bases[controller] = base
                    break
    if bases:
        missing = [c for c in (*CONTROLLERS, FREEZER) if c not in bases]
        return Hierarchy(1, bases, f"no writable v1 {', '.join(missing)} hierarchy"
                         if missing else "")
    reasons.append("no writable cgroup v1 memory, pids or cpu hierarchy (run the grader as "
                   "root, or give it a delegated cgroup)")
    return Hierarchy(None, why="; ".join(r for r in reasons if r))


def _write(path: Path, value: str) -> bool:
    try:
        with open(path, "w") as f:
            f.write(value)
        return True
    except OSError:
        return False


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _counts(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


class Cage:
    """One notebook's group: :meth:`create` it with its caps, put processes in (:meth:`argv` for
    a program about to start, :meth:`add` for one running), then :meth:`close` it (kills what is
    left in it). :meth:`hits` says which caps the notebook ran into."""

    def __init__(self, tree: Hierarchy, folders: dict[str, Path]) -> None:
        self.tree, self.folders = tree, folders

    @classmethod
    def create(cls, name: str, mem_mb: int | None, tasks: int | None, cpus: float | None
               ) -> "Cage | None":
        """A new cage, or None where this machine has no usable cgroups."""
        tree = hierarchy()
        if not tree.bases:
            return None
        leaf = f"{''.join(ch if ch.isalnum() else '-' for ch in name)[:30]}-{uuid.uuid4().hex[:8]}"
        folders = {}
        for controller in tree.controllers:
            folder = tree.bases[controller] / leaf
            try:
                folder.mkdir(parents=True, exist_ok=True)  # the base goes when it empties
            except OSError:
                continue
            folders[controller] = folder
        cage = cls(tree, folders)
        cage._limit(mem_mb, tasks, cpus)
        return cage if folders else None

    def _limit(self, mem_mb, tasks, cpus) -> None:
        v2 = self.tree.version == 2
        if mem_mb and "memory" in self.folders:
            f, limit = self.folders["memory"], str(int(mem_mb) * 2**20)
            if v2:
                _write(f / "memory.max", limit)
                _write(f / "memory.swap.max", "0")
            else:
                _write(f / "memory.limit_in_bytes", limit)
                _write(f / "memory.memsw.limit_in_bytes", limit)  # where swap is accounted
        if tasks and "pids" in self.folders:
            _write(self.folders["pids"] / "pids.max", str(int(tasks)))
        if "cpu" in self.folders:  # every cage the same weight: an equal share when busy
            _write(self.folders["cpu"] / ("cpu.weight" if v2 else "cpu.shares"),
                   "100" if v2 else "1024")
        if cpus and "cpu" in self.folders:
            quota = str(int(cpus * CPU_PERIOD_US))
            if v2:
                _write(self.folders["cpu"] / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            else:
                _write(self.folders["cpu"] / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                _write(self.folders["cpu"] / "cpu.cfs_quota_us", quota)

    def _procs_files(self) -> list[Path]:
        return sorted({f / "cgroup.procs" for f in self.folders.values()})

    def argv(self) -> list[str]:
        """A prefix for a command line: the shell joins this cage, then runs the command (so
        nothing the command starts runs outside it, not even for a moment)."""
        joins = " && ".join(f"echo $$ > {shlex.quote(str(p))}" for p in self._procs_files())
        return ["/bin/sh", "-c", f'{joins} && exec "$@"', "cage"]

    def add(self, pid: int) -> bool:
        """Move a running process (all its threads) into this cage."""
        return all([_write(p, str(pid)) for p in self._procs_files()])

    def pids(self) -> list[int]:
        found = set()
        for p in self._procs_files():
            found.update(int(x) for x in _read(p).split())
        return sorted(found)

    def hits(self) -> list[str]:
        """The caps this cage's processes ran into: "memory", "tasks"."""
        hit = []
        if "memory" in self.folders:
            f = self.folders["memory"]
            events = f / ("memory.events" if self.tree.version == 2 else "memory.oom_control")
            if _counts(_read(events)).get("oom_kill"):  # reaching the cap and reclaiming is not
                hit.append("memory")
        if "pids" in self.folders and _counts(_read(self.folders["pids"] / "pids.events")).get("max"):
            hit.append("tasks")
        return hit

    def peak_mb(self) -> float | None:
        """The most memory the cage held at once (MiB), where the kernel says."""
        if "memory" not in self.folders:
            return None
        f = self.folders["memory"]
        text = _read(f / ("memory.peak" if self.tree.version == 2 else "memory.max_usage_in_bytes"))
        return round(int(text) / 2**20, 1) if text.strip().isdigit() else None

    def kill_all(self, rounds: int = 200) -> bool:
        """Kill everything in the cage; whether it emptied. cgroup v2's ``cgroup.kill`` kills the
        group at once. On v1 the freezer first stops every process in it, so that none can fork
        or exit (and come back under a new PID) while its siblings are killed; the killed
        processes die when the group thaws. Then a SIGKILL loop (``rounds``) catches anything
        left (a process that forks between two looks is caught in a later round): all there is
        where neither works."""
        kill_file = self.folders.get("memory", next(iter(self.folders.values()))) / "cgroup.kill"
        if self.tree.version == 2 and kill_file.exists():
            _write(kill_file, "1")
        elif self._freeze():
            for pid in self.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            _write(self.folders[FREEZER] / "freezer.state", "THAWED")
            deadline = time.monotonic() + FREEZE_WAIT_S
            while self.pids() and time.monotonic() < deadline:  # dying: milliseconds
                time.sleep(0.005)
        return kill_until_gone(self.pids, rounds)

    def _freeze(self) -> bool:
        """Freeze the v1 cage; whether every process in it stopped (the kernel freezes them
        one by one: the state reads FREEZING until the last has)."""
        folder = self.folders.get(FREEZER)
        if folder is None or not _write(folder / "freezer.state", "FROZEN"):
            return False
        deadline = time.monotonic() + FREEZE_WAIT_S
        while _read(folder / "freezer.state").strip() != "FROZEN":
            if time.monotonic() > deadline:  # thawed again, or a SIGKILL would never land
                _write(folder / "freezer.state", "THAWED")
                return False
            time.sleep(0.002)
        return True

    def close(self) -> None:
        """Kill what is left and remove the cage (its folders go once the last process is
        reaped; a few tries)."""
        self.kill_all()
        for _ in range(50):
            for folder in list(self.folders.values()):
                try:
                    folder.rmdir()
                except FileNotFoundError:
                    pass
                except OSError:
                    continue
            if not any(f.exists() for f in self.folders.values()):
                break
            time.sleep(0.02)
        for folder in self.folders.values() if self.tree.version == 1 else ():
            try:  # leave no empty folder in the grader's groups (v2's keeps its delegation)
                folder.parent.rmdir()
            except OSError:  # other cages live there
                pass
