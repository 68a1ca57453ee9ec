"""What the sandbox costs per submission: the same class graded with and without it, interleaved.

    python -m course_lib.grading.sandbox_bench --n 10 --rounds 3 [--json book/data/sandbox_cost.json]

Each round grades the same generated class (:func:`course_lib.grading.bench.generate_class`) once
sandboxed and once with ``--no-sandbox`` (or, with ``--baseline no_caps``, once in the sandbox
without issue 21's protections, ``Limits(caps=False)``: the whole-notebook caps, the system-call
filter, the namespaces of each kernel and re-check child, and value-only checks; what those cost),
alternating which goes first, so that drifts in the machine's load hit both alike. It prints seconds per submission for each, and the ratio of the
medians, with the machine, its load average and the date. A run made while the load average
exceeds the number of cores is refused unless ``--allow-busy`` (then the output is flagged).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from course_lib.grading import course as grading
from course_lib.grading.bench import describe_machine, generate_class
from course_lib.grading.pipeline import grade_class
from course_lib.grading.sandbox.policy import Limits


def busy() -> tuple[bool, float]:
    """(is the machine busier than its cores?, 1-minute load average)."""
    load = os.getloadavg()[0]
    return load > (os.cpu_count() or 1), load


def measure(n: int, rounds: int, assignment: str, workers: int,
            cell_timeout: float, baseline: str = "no_sandbox") -> dict:
    timings: dict[str, list[float]] = {"sandbox": [], baseline: []}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="sandbox_bench_") as tmp:
        tmp = Path(tmp)
        course = grading.new_course(tmp / "course", [assignment])
        generate_class(course, assignment, n, tmp / "submitted")
        for r in range(rounds):
            order = ["sandbox", baseline] if r % 2 == 0 else [baseline, "sandbox"]
            for mode in order:
                start = time.perf_counter()
                # A fresh output folder each time: a run never resumes another's results.
                grade_class(assignment, tmp / "submitted", course, workers=workers,
                            out=tmp / "out" / f"{r}-{mode}", cell_timeout=cell_timeout, quiet=True,
                            use_sandbox=mode != "no_sandbox",
                            limits=Limits(caps=False) if mode == "no_caps" else None)
                timings[mode].append((time.perf_counter() - start) / n)
                loads.append(os.getloadavg()[0])
    med = {mode: statistics.median(v) for mode, v in timings.items()}
    return {"assignment": assignment, "submissions": n, "rounds": rounds, "workers": workers,
            "s_per_submission": {m: [round(x, 3) for x in v] for m, v in timings.items()},
            "median_s_per_submission": {m: round(v, 3) for m, v in med.items()},
            f"sandbox_over_{baseline}": round(med["sandbox"] / med[baseline], 3),
            "machine": describe_machine(), "date": time.strftime("%Y-%m-%d"),
            "load_avg": [round(x, 1) for x in loads]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10, help="submissions per class")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--assignment", default="ex01_standard")
    parser.add_argument("--cell-timeout", type=float, default=60)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--baseline", choices=("no_sandbox", "no_caps"), default="no_sandbox",
                        help="compare the sandbox with no sandbox, or with the sandbox without "
                             "issue 21's protections (caps, filter, namespaces, value-only "
                             "checks)")
    parser.add_argument("--allow-busy", action="store_true",
                        help="measure even when the load average exceeds the cores (flagged)")
    args = parser.parse_args(argv)
    if args.n < 1 or args.rounds < 1:
        parser.error("--n and --rounds must be >= 1")
    too_busy, load = busy()
    if too_busy and not args.allow_busy:
        parser.exit(2, f"refusing to measure: load average {load:.1f} exceeds the "
                       f"{os.cpu_count()} cores (other work would skew the figures); wait, "
                       "or pass --allow-busy to measure anyway (the output is flagged)\n")
    base = args.baseline
    figures = measure(args.n, args.rounds, args.assignment, args.workers, args.cell_timeout,
                      base)
    figures["busy"] = max(figures["load_avg"]) > (os.cpu_count() or 1)
    med, ratio = figures["median_s_per_submission"], figures[f"sandbox_over_{base}"]
    print(f"{args.n} submissions of {args.assignment}, {args.rounds} interleaved rounds, "
          f"{args.workers} worker(s), {figures['machine']}, {figures['date']}:\n"
          f"  sandbox    {med['sandbox']:.2f} s per submission\n"
          f"  {base.replace('_', ' '):10} {med[base]:.2f} s per submission\n"
          f"  ratio      {ratio:.3f} ({100 * (ratio - 1):+.1f} %)\n"
          f"  load average during the run: {figures['load_avg']}"
          + ("  (BUSY: figures skewed)" if figures["busy"] else ""))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return figures


if __name__ == "__main__":
    main()
