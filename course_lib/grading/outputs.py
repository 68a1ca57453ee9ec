"""Outputs: grades.csv (one row per submitted name, always), report.html with plots,
problems.txt, and a plain feedback page where nbgrader could not write one.

A row the grader could not grade has an empty score (never a 0) and status ``grader-error``.
Every text a student can influence (problems, names, sources) is bounded in length here
(:func:`.feedback.clip_problems`) and HTML-escaped in the pages.
"""
from __future__ import annotations

import csv
import html
from pathlib import Path

from course_lib.grading.feedback import clip, clip_problems
from course_lib.grading.model import SourceInfo, Status, Submission

MAX_NAME_CHARS = 1000  # of a submitted name or a source path in the outputs


def _total(sub: Submission) -> str:
    return "" if sub.score is None else f"{sub.score:g}"


def _cell(sub: Submission, gid: str, info: SourceInfo) -> str:
    if gid in info.pending:
        return "pending"
    return "" if sub.score is None else f"{sub.final.get(gid, 0.0):g}"


def write_csv(path: Path, subs: list[Submission], info: SourceInfo) -> Path:
    tests = list(info.points)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["student", "submitted_as", "assignment", "status", "score",
                         "max_score", *tests, "manual_points_pending", "gpu_points_pending",
                         "nbgrader_score",
                         "from_earlier_run", "source", "problems"])
        for sub in sorted(subs, key=lambda s: s.student):
            nbg = "" if sub.nbgrader is None else f"{sum(sub.nbgrader.values()):g}"
            writer.writerow([sub.student, clip(sub.submitted_as or sub.student, MAX_NAME_CHARS),
                             info.assignment,
                             sub.status.value, _total(sub), f"{info.max_score:g}",
                             *(_cell(sub, t, info) for t in tests), f"{info.manual_max:g}",
                             f"{info.pending_max:g}", nbg,
                             "yes" if sub.resumed else "", clip(sub.origin, MAX_NAME_CHARS),
                             " | ".join(clip_problems(sub.problems))])
    return path


def write_report(out: Path, subs: list[Submission], info: SourceInfo,
                 batch_problems: list[str], seconds: float, notes: list[str] = ()) -> Path:
    """Plots (total score histogram, per-question distribution, hardest tests) and an HTML page."""
    import matplotlib
    matplotlib.use("Agg")  # a script, not a chapter: never open a window
    import matplotlib.pyplot as plt

    tests = [t for t in info.points if t not in info.pending]
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    scored = [s for s in subs if s.score is not None]
    totals = [s.score for s in scored]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(totals, bins=min(20, max(5, len(set(totals)))), range=(0, info.max_score),
            color="#4c72b0")
    ax.set(xlabel=f"score (max {info.max_score:g})", ylabel="students",
           title=f"{info.assignment}: total scores (n={len(scored)})")
    fig.tight_layout()
    fig.savefig(plots / "scores.png", dpi=110)
    plt.close(fig)

    fractions = [[s.final.get(t, 0.0) / info.points[t] for s in scored] for t in tests]
    fig, ax = plt.subplots(figsize=(1.2 * len(tests) + 2, 3.5))
    for i, values in enumerate(fractions):
        full = sum(v == 1 for v in values)
        zero = sum(v == 0 for v in values)
        part = len(values) - full - zero
        ax.bar(i, full, color="#55a868", label="full" if i == 0 else None)
        ax.bar(i, part, bottom=full, color="#dd8452", label="partial" if i == 0 else None)
        ax.bar(i, zero, bottom=full + part, color="#c44e52", label="zero" if i == 0 else None)
    ax.set_xticks(range(len(tests)), [f"{t}\n({info.points[t]:g} pt)" for t in tests],
                  fontsize=9.5)
    ax.set(ylabel="students", title="score per question")
    ax.legend(fontsize=9.5)
    fig.tight_layout()
    fig.savefig(plots / "per_question.png", dpi=110)
    plt.close(fig)

    means = sorted(((sum(v) / max(len(v), 1), t) for v, t in zip(fractions, tests)))
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(tests) + 1.2))
    ax.barh([t for _, t in means], [100 * m for m, _ in means], color="#8172b3")
    ax.invert_yaxis()
    ax.set(xlabel="mean score (% of points)", xlim=(0, 100), title="hardest tests first")
    fig.tight_layout()
    fig.savefig(plots / "hardest_tests.png", dpi=110)
    plt.close(fig)

    flagged = [s for s in subs if s.problems]
    items = "".join(f"<li><b>{html.escape(s.student)}</b> ({_total(s)}/{info.max_score:g}): "
                    + "; ".join(html.escape(p) for p in clip_problems(s.problems)) + "</li>"
                    for s in flagged)
    batch = "".join(f"<li>{html.escape(p)}</li>" for p in batch_problems)
    batch += "".join(f"<li>note: {html.escape(n)}</li>" for n in notes)
    page = out / "report.html"
    mean = sum(totals) / max(len(totals), 1)
    page.write_text(
        f"<html><head><meta charset='utf-8'><title>{info.assignment} report</title></head><body>"
        f"<h1>{info.assignment}: {len(subs)} submissions</h1>"
        f"<p>mean {mean:.2f} / {info.max_score:g} autograded points; graded in {seconds:.0f} s; "
        f"{len(flagged)} submissions with problems."
        + (f" {info.manual_max:g} more points per submission are manually graded answers: grade "
           "them in nbgrader's formgrader (they are left pending in the gradebook)."
           if info.manual else "")
        + (f" {info.pending_max:g} points ({html.escape(', '.join(sorted(info.pending)))}) need a "
           "GPU and no worker had one: they are PENDING (no score; run the command again with a "
           "GPU worker, or pass --gpu-parts-on-cpu to grade them on CPU)."
           if info.pending else "") + "</p>"
        f"<img src='plots/scores.png'><img src='plots/per_question.png'>"
        f"<img src='plots/hardest_tests.png'><h2>Batch problems</h2><ul>{batch or '<li>none</li>'}"
        f"</ul><h2>Problems by submission</h2><ul>{items or '<li>none</li>'}</ul></body></html>")
    return page


def fallback_feedback(sub: Submission, info: SourceInfo, dest: Path) -> Path:
    rows = "".join(f"<tr><td>{html.escape(g)}</td><td>{_cell(sub, g, info)}</td>"
                   f"<td>{p:g}</td></tr>" for g, p in info.points.items())
    problems = "".join(f"<li>{html.escape(p)}</li>" for p in clip_problems(sub.problems))
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(f"<html><body><h1>{html.escape(info.assignment)}: "
                    f"{html.escape(sub.student)}</h1><p>Score {_total(sub)} / "
                    f"{info.max_score:g}</p><table border=1><tr><th>test</th><th>score</th>"
                    f"<th>points</th></tr>{rows}</table><h2>Problems</h2><ul>{problems}</ul>"
                    "</body></html>")
    return dest


def problem_lines(subs: list[Submission], info: SourceInfo, batch_problems: list[str],
                  notes: list[str], seconds: float) -> list[str]:
    """problems.txt: a summary line, the batch's problems, then every row's problems."""
    errors = sum(s.status is Status.GRADER_ERROR for s in subs)
    lines = [f"{info.assignment}: {len(subs)} submissions, {sum(bool(s.problems) for s in subs)} "
             f"with problems, graded in {seconds:.1f} s"
             + (f"; {errors} NOT GRADED (grader errors: run the command again to grade them)"
                if errors else "")]
    lines += [f"BATCH: {p}" for p in batch_problems] + [f"NOTE: {n}" for n in notes]
    for sub in sorted(subs, key=lambda s: s.student):
        lines += [f"{sub.student} ({_total(sub) or 'not graded'}/{info.max_score:g}): {p}"
                  for p in clip_problems(sub.problems)]
    return lines
