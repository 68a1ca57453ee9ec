"""The grading pipeline's records: what flows from stage to stage, typed.

Nothing here runs anything: the stages (:mod:`.ingest`, :mod:`.shard`, :mod:`.scoring`,
:mod:`.gradebook`, :mod:`.outputs`, :mod:`.pipeline`) pass these along. A task sent to a dask
worker (:class:`Work` items and one :class:`TaskSpec`) and what comes back (:class:`Graded` or a
:class:`Failure`) are plain data: workers share no files with the coordinator.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from course_lib.grading.sandbox.policy import Limits


class Status(str, Enum):
    """A row's status in grades.csv (the instructor guide's table explains each)."""
    OK = "ok"                                   # nbgrader and the re-check graded it
    GRADED_BY_RECHECK = "graded-by-recheck"     # its kernel died or hung in nbgrader: re-check only
    MISSING = "missing"                         # no notebook submitted: 0
    CORRUPT = "corrupt"                         # not a readable notebook: 0
    REFUSED = "refused"                         # ingest would not read it (a link out, a FIFO,
                                                # too large, a bad zip member): 0, with why
    KILLED_WORKER = "killed-worker"             # grading it killed its worker twice: 0
    GRADER_ERROR = "grader-error"               # the grader failed: NO score; a re-run grades it

    @property
    def scored(self) -> bool:
        return self is not Status.GRADER_ERROR


class Incident(str, Enum):
    """What a submission's processes did that the grader saw (the sandbox's supervisor, the
    re-check): kept with its result, so that :mod:`.resume` can tell a stored result it must not
    trust. Tampering with one's own kernel (a scoring matter, handled by the re-check) is none."""
    KERNEL_STOPPED = "kernel-stopped"          # the sandbox stopped its kernel (a limit hit)
    PROCESSES = "processes"                    # it started processes
    WRITES = "writes"                          # it tried to change files outside its folder
    FORGED = "forged"                          # a forged reply on the re-check's channel
    KERNEL_DIED = "kernel-died"                # its re-check process died (a signal, os._exit)
    RECHECK_UNFINISHED = "recheck-unfinished"  # the re-check did not finish

    @property
    def hostile(self) -> bool:
        """Something that reaches beyond its own kernel (processes, files, the grader's channel,
        a limit that protects the machine): its classmates' results are suspect."""
        return self in (Incident.KERNEL_STOPPED, Incident.PROCESSES, Incident.WRITES,
                        Incident.FORGED)


@dataclass
class GradingOptions:
    """How a class is graded; the one place the time budgets are derived from."""
    cell_timeout: float = 60
    mem_mb: int = 4096
    sandboxed: bool = True
    limits: Limits | None = None   # the sandbox's limits (None without a sandbox)
    stop_after_same_errors: int = 3  # grader errors in a row, all alike, that stop the batch
    gpu_parts_on_cpu: bool = False   # grade GPU_TESTS on CPU when no worker has a GPU (else pending)

    # nbgrader's own work around a notebook (loading, writing the database, converting)
    NBGRADER_MARGIN_S = 120

    def notebook_budget_s(self, code_cells: int) -> float:
        """The most one notebook may take: each of its cells up to its timeout, and a start.
        Used for the kernel's wall clock and the re-check's job alike."""
        return self.cell_timeout * (code_cells + 2) + 60

    def for_assignment(self, code_cells: int) -> "GradingOptions":
        """These options with the sandbox's wall clock set for an assignment's notebooks."""
        if self.limits is None and self.sandboxed:
            self.limits = Limits(mem_mb=self.mem_mb)
        if self.limits is not None and not self.limits.wall_s:
            self.limits.wall_s = self.notebook_budget_s(code_cells)
        return self

    def cache_context(self) -> dict:
        return {"cell_timeout": self.cell_timeout, "mem_mb": self.mem_mb,
                "sandbox": repr(self.limits), "gpu_parts_on_cpu": self.gpu_parts_on_cpu}


@dataclass
class SourceInfo:
    """What the gradebook knows about the assignment's notebook (the trusted version)."""
    assignment: str
    notebook: str
    order: list[str]                 # grade_ids of the release notebook, in order
    cells: dict[str, dict]           # grade_id -> {cell_type, locked, source}
    points: dict[str, float]         # autograded test cell grade_id -> max points
    solutions: set[str]
    manual: dict[str, float] = field(default_factory=dict)  # manually graded answers -> points
    # test cells left pending in this batch (GPU parts without a GPU worker): graded later
    pending: set[str] = field(default_factory=set)

    @property
    def max_score(self) -> float:
        """The autograded points of this batch (manually graded answers are graded later, in
        formgrader; pending test cells when a GPU worker grades them)."""
        return float(sum(p for g, p in self.points.items() if g not in self.pending))

    @property
    def pending_max(self) -> float:
        return float(sum(self.points[g] for g in self.pending))

    @property
    def manual_max(self) -> float:
        return float(sum(self.manual.values()))

    @property
    def code_cells(self) -> int:
        return sum(1 for c in self.cells.values() if c["cell_type"] == "code")


@dataclass
class Submission:
    """One submitted name, from ingest to the CSV. Its scores and status are set only by
    :mod:`.scoring` (through :meth:`record`)."""
    student: str
    origin: str
    notebook: Path | None = None          # sanitized notebook to grade; None: nothing gradable
    problems: list[str] = field(default_factory=list)
    submitted_as: str = ""                 # the name it came under (folder or LMS file prefix)
    unreadable: Status | None = None       # MISSING, CORRUPT or REFUSED, as ingest found it
    status: Status | None = None
    nbgrader: dict[str, float] | None = None
    recheck: dict[str, float] = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)
    feedback: Path | None = None
    resumed: bool = False                  # taken from an earlier run's results

    @property
    def score(self) -> float | None:
        """The autograded total; None for a row the grader could not grade."""
        if self.status is Status.GRADER_ERROR:
            return None
        return float(sum(self.final.values()))


@dataclass
class Work:
    """One submission as sent to a worker: its id and the notebook's bytes."""
    student: str
    notebook: bytes


@dataclass
class TaskSpec:
    """Everything a task needs besides the submissions, as data (sent to each worker once)."""
    assignment: str
    bundle: dict[str, bytes]   # the generated course: see shard.course_bundle
    info: SourceInfo
    options: GradingOptions
    fingerprint: dict[str, str]
    hide: list[str] = field(default_factory=list)  # coordinator folders to mask where they exist

    def bundle_hash(self, sources_only: bool = False) -> str:
        """Hash of the bundle; ``sources_only``: of what the grades depend on (the config and
        the assignment's sources), not of the files generated from them (stamped each run)."""
        digest = hashlib.sha256()
        for name in sorted(self.bundle):
            if sources_only and not (name == "nbgrader_config.py"
                                     or name.startswith("solutions/")):
                continue
            digest.update(name.encode() + b"\0" + self.bundle[name])
        return digest.hexdigest()[:16]


@dataclass
class Graded:
    """A graded submission as data: what the coordinator records and writes."""
    student: str
    status: Status
    nbgrader: dict[str, float] | None
    recheck: dict[str, float]
    final: dict[str, float]
    problems: list[str]         # found while grading
    feedback_html: str | None
    worker: str = ""
    timing: dict[str, float] = field(default_factory=dict)   # this submission's phases, s
    task: dict = field(default_factory=dict)  # first item of a task only: logs, stage seconds
    incidents: list[str] = field(default_factory=list)  # Incident values, sorted

    def to_json(self) -> dict:
        data = {k: v for k, v in self.__dict__.items() if k != "task"}
        data["status"] = self.status.value
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Graded":
        names = set(cls.__dataclass_fields__) - {"task"}
        values = {k: v for k, v in data.items() if k in names}
        values["status"] = Status(values["status"])
        return cls(**values)


@dataclass
class Failure:
    """What came back instead of a result for one item. ``grader``: the grader's failure (no
    score, a re-run grades it); otherwise the submission's own doing (it killed its workers)."""
    reason: str
    grader: bool = True
