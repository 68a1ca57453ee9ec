"""Benchmark the class-grading pipeline on N generated submissions of one assignment.

    python -m course_lib.grading.bench --n 200 --workers 3 [--assignment ex01_standard]
    python -m course_lib.grading.bench --n 40 --workers 1,2,3        # scaling, runs interleaved
    python -m course_lib.grading.bench --n 200 --scheduler tcp://HOST:8786   # an existing cluster

Generates a class in a temporary course (a seeded mix: complete solutions, blank releases, and
solutions with one part left undone), grades it with
:func:`course_lib.grading.pipeline.grade_class`, checks that complete solutions scored full
marks and blanks 0, and prints seconds per submission, split into the phases of grading one
notebook (kernel start, imports, student cells, checks: from nbgrader's cell timestamps; the rest
of nbgrader's autograde; the re-check, which runs beside the autograde, for the time it adds
after it; feedback) and the fixed cost of starting each worker's grading session (its sandbox,
warm kernels, re-check server and nbgrader). Phases are worker-seconds per submission: with W
workers busy in parallel, the wall time is about their sum / W. The re-check's whole time, most
of it hidden behind the autograde, is reported beside them.

Like every benchmark of the course it refuses to run on a busy machine (1-minute load average
above the cores, :func:`course_lib.bench.check_load`) unless ``--allow-busy``, which records the
warning in the results. ``--json PATH`` writes the figures (machine, load, date stamped).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import nbformat

from course_lib.bench import BusyMachineError, check_load, machine_load
from course_lib.grading import course as grading

# Phases of one notebook, then stages of a task, in the order the report prints them.
NOTEBOOK_PHASES = ("kernel start", "imports", "student cells", "checks", "autograde, other",
                   "recheck", "feedback")
FIXED_COSTS = ("session start-up",)
BESIDE = ("recheck, beside autograde",)  # runs during the phases above: not added to them


def describe_machine() -> str:
    import os
    import platform

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except OSError:
        mem = float("nan")
    return f"{os.cpu_count()} cores ({model}), {mem:.0f} GiB RAM"


def generate_class(course: Path, assignment: str, n: int, folder: Path,
                   seed: int = 0, sleepers: int = 0, sleep_s: float = 0.0) -> dict[str, str]:
    """Write ``n`` submissions in nbgrader's submitted/ layout; returns student -> kind.

    ``sleepers`` of them (the first ones: the worst place for a straggler) are complete solutions
    whose every answer cell first sleeps ``sleep_s`` seconds: slow but legal, full marks."""
    release = nbformat.read(grading.release_path(course, assignment), as_version=4)
    source = nbformat.read(course / "solutions" / assignment / grading.notebook_name(assignment),
                           as_version=4)
    answers = {c.metadata["nbgrader"]["grade_id"]: c.source for c in source.cells
               if c.metadata.get("nbgrader", {}).get("solution")}
    rng = random.Random(seed)
    kinds = {}
    for i in range(n):
        student = f"student{i:04d}"
        roll = rng.random()
        kind = "full" if roll < 0.4 else "blank" if roll < 0.6 else "one-part-missing"
        if i < sleepers:
            kind = "sleeper"
        skip = rng.choice(sorted(answers)) if kind == "one-part-missing" else None
        nb = nbformat.from_dict(json.loads(json.dumps(release)))
        if kind != "blank":
            for cell in nb.cells:
                gid = cell.metadata.get("nbgrader", {}).get("grade_id")
                if gid in answers and gid != skip:
                    cell.source = answers[gid]
                    if kind == "sleeper":
                        cell.source = f"import time\ntime.sleep({sleep_s:g})\n" + cell.source
        target = folder / student / assignment
        target.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, target / grading.notebook_name(assignment))
        kinds[student] = kind
    return kinds


def breakdown(dispatch, n: int) -> dict[str, float]:
    """Worker-seconds per submission for each phase, from what the grading tasks returned."""
    per = {name: 0.0 for name in (*NOTEBOOK_PHASES, *FIXED_COSTS)}
    for phases in dispatch.timings.values():
        for name in NOTEBOOK_PHASES:
            per[name] += phases.get(name, 0.0)
    for stage in dispatch.stages:
        for name in FIXED_COSTS:
            per[name] += stage.get(name, 0.0)
    return {name: round(value / max(n, 1), 3) for name, value in per.items()}


def overlapped(dispatch, n: int) -> dict[str, float]:
    """Worker-seconds per submission of what ran beside the phases (not part of their sum)."""
    per = {name: sum(t.get(name, 0.0) for t in dispatch.timings.values()) for name in BESIDE}
    return {name: round(value / max(n, 1), 3) for name, value in per.items()}


def run_once(course: Path, folder: Path, assignment: str, kinds: dict, workers: int,
             scheduler: str | None, cell_timeout: float, chunk_size: int | None,
             out: Path) -> dict:
    from course_lib.grading.pipeline import grade_class

    start = time.perf_counter()
    result = grade_class(assignment, folder, course, workers=workers, out=out,
                         cell_timeout=cell_timeout, scheduler=scheduler, chunk_size=chunk_size,
                         quiet=True)
    total = time.perf_counter() - start
    n = len(result.submissions)
    max_score = result.info.max_score
    wrong = [s.student for s in result.submissions
             if (kinds[s.student] in ("full", "sleeper") and s.score != max_score)
             or (kinds[s.student] == "blank" and s.score != 0)]
    phases = breakdown(result.dispatch, n)
    # The straggler bound: a class should take about the longest notebook or the work shared
    # by the workers, whichever is larger (the pipeline's own set-up comes on top).
    per_notebook = [sum(t.get(name, 0.0) for name in NOTEBOOK_PHASES)
                    for t in result.dispatch.timings.values()] or [0.0]
    work = sum(per_notebook) + sum(st.get("session start-up", 0.0)
                                   for st in result.dispatch.stages)
    bound = max(max(per_notebook), work / workers)
    return {"workers": workers, "scheduler": scheduler, "total_s": round(total, 1),
            "slowest_notebook_s": round(max(per_notebook), 1),
            "work_per_worker_s": round(work / workers, 1), "bound_s": round(bound, 1),
            "over_bound_s": round(total - bound, 1),
            "s_per_submission": round(total / n, 2), "wrong_scores": len(wrong),
            "worker_s_per_submission": phases,
            "worker_s_per_submission_total": round(sum(phases.values()), 2),
            "beside_s_per_submission": overlapped(result.dispatch, n),
            "tasks": len(result.dispatch.stages), "graded_by": result.dispatch.workers}


def _print_run(run: dict, n: int) -> None:
    phases = run["worker_s_per_submission"]
    biggest = max(phases, key=phases.get)
    where = run["scheduler"] or "embedded cluster"
    print(f"\n{n} submissions, {run['workers']} worker(s) ({where}): {run['total_s']:.1f} s, "
          f"{run['s_per_submission']:.2f} s per submission; {run['tasks']} tasks; "
          f"wrong scores: {run['wrong_scores']}")
    print("  worker-seconds per submission:")
    for name, value in phases.items():
        print(f"    {name:<18} {value:7.3f}{'   <- biggest' if name == biggest else ''}")
    print(f"    {'total':<18} {run['worker_s_per_submission_total']:7.3f}")
    for name, value in run["beside_s_per_submission"].items():
        print(f"    ({name}: {value:.3f})")
    print(f"  slowest notebook {run['slowest_notebook_s']:.0f} s, work per worker "
          f"{run['work_per_worker_s']:.0f} s: the class took {run['over_bound_s']:+.0f} s beyond "
          "the larger of the two")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="number of submissions")
    parser.add_argument("--workers", default="2",
                        help="workers, or a comma list (e.g. 1,2) to measure the scaling; the "
                             "settings are run interleaved, --repeat times each")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--scheduler", default=None,
                        help="grade on an existing dask cluster (tcp://HOST:PORT)")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="submissions per task (default 1)")
    parser.add_argument("--assignment", default="ex01_standard")
    parser.add_argument("--cell-timeout", type=float, default=60)
    parser.add_argument("--sleepers", type=int, default=0,
                        help="this many complete solutions whose every answer cell first sleeps "
                             "most of the cell timeout (a legal straggler; the first students)")
    parser.add_argument("--allow-busy", action="store_true",
                        help="measure even when the load average exceeds the cores (recorded)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    workers = [int(w) for w in str(args.workers).split(",")]
    load_before = machine_load()
    try:
        busy_warning = check_load(load_before, allow_busy=args.allow_busy)
    except BusyMachineError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2)
    if busy_warning:
        print(busy_warning, file=sys.stderr)
    runs = []
    with tempfile.TemporaryDirectory(prefix="grading_bench_") as tmp:
        tmp = Path(tmp)
        course = grading.new_course(tmp / "course", [args.assignment])
        kinds = generate_class(course, args.assignment, args.n, tmp / "submitted",
                               sleepers=args.sleepers, sleep_s=0.8 * args.cell_timeout)
        for r in range(args.repeat):
            for w in workers:  # interleaved: w1, w2, w1, w2, ...
                run = run_once(course, tmp / "submitted", args.assignment, kinds, w,
                               args.scheduler, args.cell_timeout, args.chunk_size,
                               tmp / f"out-{r}-{w}")
                _print_run(run, args.n)
                runs.append(run)
    load_after = machine_load()
    last = runs[-1]
    figures = {
        # The headline (the last run), in the keys book/instructor_guide.md reads.
        "assignment": args.assignment, "submissions": args.n, "workers": last["workers"],
        "sleepers": args.sleepers, "cell_timeout": args.cell_timeout,
        "total_s": last["total_s"], "s_per_submission": last["s_per_submission"],
        "wrong_scores": sum(r["wrong_scores"] for r in runs),
        "load_avg_start": round(load_before.averages[0], 1) if load_before.averages else None,
        "load_avg_end": round(load_after.averages[0], 1) if load_after.averages else None,
        "worker_s_per_submission": last["worker_s_per_submission"],
        "beside_s_per_submission": last["beside_s_per_submission"],
        "runs": runs,
        "machine": describe_machine(), "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_before": load_before.describe(), "load_after": load_after.describe(),
        "busy_warning": busy_warning,
    }
    by_workers: dict[int, list[float]] = {}
    for run in runs:
        by_workers.setdefault(run["workers"], []).append(run["total_s"])
    if len(by_workers) > 1:
        base = min(by_workers)
        best = {w: min(t) for w, t in by_workers.items()}
        figures["speedup"] = {str(w): round(best[base] / best[w], 2) for w in sorted(best)}
        print("\nscaling (best of each, vs " + f"{base} worker(s)): " +
              ", ".join(f"{w}: x{s}" for w, s in figures["speedup"].items()))
    # What more hosts would do: the same worker-seconds spread over more slots (a projection from
    # this run's per-submission work, not a measurement; the per-task start-up is included).
    slots = last["workers"]
    figures["projection_s"] = {
        f"{hosts} host(s) x {slots} worker(s)": round(
            args.n * last["worker_s_per_submission_total"] / (hosts * slots), 1)
        for hosts in (1, 2, 4)}
    print("projected wall time from the measured worker-seconds: " +
          ", ".join(f"{k}: {v:.0f} s" for k, v in figures["projection_s"].items()))
    print(f"machine: {figures['machine']}; {figures['load_before']} at the start, "
          f"{figures['load_after']} at the end")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return figures


if __name__ == "__main__":
    main()
