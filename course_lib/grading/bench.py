"""Benchmark the class-grading pipeline on N generated submissions of one assignment.

    python -m course_lib.grading.bench --n 200 --workers 2 [--assignment ex01_standard]

Generates a class in a temporary course (a seeded mix: complete solutions, blank releases, and
solutions with one part left undone), grades it with :func:`course_lib.grade_class.grade_class`,
checks that complete solutions scored full marks and blanks 0, and prints seconds per submission,
the total, and the machine it ran on. ``--json PATH`` also writes the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import nbformat

from course_lib.grading import course as grading
from course_lib.grading.grade_class import grade_class


def _machine() -> str:
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
                   seed: int = 0) -> dict[str, str]:
    """Write ``n`` submissions in nbgrader's submitted/ layout; returns student -> kind."""
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
        skip = rng.choice(sorted(answers)) if kind == "one-part-missing" else None
        nb = nbformat.from_dict(json.loads(json.dumps(release)))
        if kind != "blank":
            for cell in nb.cells:
                gid = cell.metadata.get("nbgrader", {}).get("grade_id")
                if gid in answers and gid != skip:
                    cell.source = answers[gid]
        target = folder / student / assignment
        target.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, target / grading.notebook_name(assignment))
        kinds[student] = kind
    return kinds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="number of submissions")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--assignment", default="ex01_standard")
    parser.add_argument("--cell-timeout", type=float, default=60)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    with tempfile.TemporaryDirectory(prefix="grading_bench_") as tmp:
        tmp = Path(tmp)
        course = grading.new_course(tmp / "course", [args.assignment])
        kinds = generate_class(course, args.assignment, args.n, tmp / "submitted")
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        result = grade_class(args.assignment, tmp / "submitted", course, workers=args.workers,
                             cell_timeout=args.cell_timeout)
        total = time.perf_counter() - start
        max_score = result.info.max_score
        wrong = [s.student for s in result.submissions
                 if (kinds[s.student] == "full" and s.score != max_score)
                 or (kinds[s.student] == "blank" and s.score != 0)]
    figures = {
        "assignment": args.assignment, "submissions": args.n, "workers": args.workers,
        "total_s": round(total, 1), "s_per_submission": round(total / args.n, 2),
        "machine": _machine(), "date": time.strftime("%Y-%m-%d"),
        "wrong_scores": len(wrong),
        # Other work on the machine slows grading: record how busy it was (1-minute load).
        "load_avg_start": round(load_before, 1), "load_avg_end": round(os.getloadavg()[0], 1),
    }
    print(f"\n{args.n} submissions of {args.assignment} with {args.workers} worker(s) on "
          f"{figures['machine']}:\n  total {total:.1f} s, {total / args.n:.2f} s per submission "
          f"(autograde + re-check + feedback + export)\n  complete solutions scored "
          f"{max_score:g}/{max_score:g} and blanks 0: "
          f"{'yes' if not wrong else f'NO ({len(wrong)} wrong)'}\n  machine load average "
          f"{figures['load_avg_start']} at the start, {figures['load_avg_end']} at the end")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return figures


if __name__ == "__main__":
    main()
