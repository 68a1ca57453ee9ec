"""Exercise 10's checks: right answers pass (visible and hidden cases, nothing on stderr); the
mistakes a classmate makes fail with their own ``kind``; a typed accuracy is caught by retraining.
Training is kept to one tiny design (the sweep's grid is narrowed to it where a check retrains)."""
import contextlib
import io

import pytest
from torch import nn

import course_lib.checks.ex10_tradeoffs as checks
from course_lib import costs, tradeoffs
from course_lib.checks import CheckFailed
from course_lib.separable import DepthwiseSeparableConv2d
from exercise_helpers import case_sets


def student_net(alpha, full_conv=False, fixed_stem=False, rounding=False, last_stride=1):
    """A student's tiny_mobilenet; each argument plants one mistake."""
    width = (lambda c: round(c * alpha)) if rounding else (lambda c: int(c * alpha))
    stem = 16 if fixed_stem else width(16)
    layers = [nn.Conv2d(1, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU()]
    c = stem
    for out, stride in ((32, 2), (64, 2), (128, last_stride)):
        if full_conv:
            layers += [nn.Conv2d(c, width(out), 3, stride, 1, bias=False),
                       nn.BatchNorm2d(width(out)), nn.ReLU()]
        else:
            layers.append(DepthwiseSeparableConv2d(c, width(out), 3, stride))
        c = width(out)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))


def student_front(rows):
    def beats(o, r):
        return (o["ms"] <= r["ms"] and o["accuracy"] >= r["accuracy"]
                and (o["ms"], o["accuracy"]) != (r["ms"], r["accuracy"]))
    return sorted([r for r in rows if not any(beats(o, r) for o in rows)],
                  key=lambda r: (r["ms"], -r["accuracy"]))


def running_max_front(rows):   # right, another way: sweep by time, keep each new best
    front, best = [], None
    for row in sorted(rows, key=lambda r: (r["ms"], -r["accuracy"])):
        if best is None or row["accuracy"] > best["accuracy"] or (
                row["ms"], row["accuracy"]) == (best["ms"], best["accuracy"]):
            front.append(row)
            best = row
    return front


def kind_of(check, *args, **kwargs):
    with pytest.raises(CheckFailed) as info:
        with contextlib.redirect_stdout(io.StringIO()):
            check(*args, **kwargs)
    return getattr(info.value, "kind", None), str(info.value)


def test_right_network_and_front_pass_on_visible_and_hidden_cases():
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        for kwargs in case_sets("ex10_tradeoffs", "check_tiny_mobilenet"):
            checks.check_tiny_mobilenet(student_net, **kwargs)
        for kwargs in case_sets("ex10_tradeoffs", "check_pareto_front"):
            checks.check_pareto_front(student_front, **kwargs)
            checks.check_pareto_front(running_max_front, **kwargs)
    assert stderr.getvalue() == ""


@pytest.mark.parametrize("mistake,kind", [
    (dict(full_conv=True), "full_convolutions"), (dict(fixed_stem=True), "alpha_not_everywhere"),
    (dict(last_stride=2), "strides")])
def test_network_mistakes_are_named(mistake, kind):
    assert kind_of(checks.check_tiny_mobilenet, lambda a: student_net(a, **mistake))[0] == kind


def test_rounding_is_named_on_an_alpha_where_it_matters():
    got = kind_of(checks.check_tiny_mobilenet, lambda a: student_net(a, rounding=True),
                  alphas=(0.35,))
    assert got[0] == "rounding" and "int(channels * alpha)" in got[1]


@pytest.mark.parametrize("front,kind", [
    (lambda rows: sorted([r for r in rows if not any(
        o["ms"] < r["ms"] and o["accuracy"] > r["accuracy"] for o in rows)],
        key=lambda r: r["ms"]), "dominated_kept"),        # strict on both: ties survive
    (lambda rows: sorted([r for r in rows if not any(
        o is not r and o["ms"] <= r["ms"] and o["accuracy"] >= r["accuracy"] for o in rows)],
        key=lambda r: r["ms"]), "front_point_missing"),   # equal points knock each other out
    (lambda rows: student_front([{**r, "ms": -r["ms"]} for r in rows]) and sorted(
        [r for r in rows if not any(o["ms"] >= r["ms"] and o["accuracy"] >= r["accuracy"]
                                    and o != r for o in rows)], key=lambda r: r["ms"]),
     "direction"),
    (lambda rows: list(reversed(student_front(rows))), "order"),
    (lambda rows: rows.sort(key=lambda r: r["ms"]) or student_front(rows), "input_changed"),
])
def test_front_mistakes_are_named(front, kind):
    assert kind_of(checks.check_pareto_front, front)[0] == kind


def table(accuracy=0.5, **override):
    """A results table for the whole sweep with measured mult-adds (no training)."""
    rows = []
    for alpha in tradeoffs.ALPHAS:
        for resolution in tradeoffs.RESOLUTIONS:
            macs = checks.reference_macs(alpha, resolution)
            rows.append({"alpha": alpha, "resolution": resolution, "accuracy": accuracy,
                         "macs": macs, "ms": alpha * resolution / 10, "ms_iqr": 0.1})
    for row in rows:
        row.update(override)
    return rows


def test_table_mistakes_are_named_before_any_training():
    rows = table()
    assert kind_of(checks.check_results, rows[:-1], student_net)[0] == "designs"
    assert kind_of(checks.check_results, rows + rows[:1], student_net)[0] == "duplicate"
    assert kind_of(checks.check_results, table(accuracy=87.0), student_net)[0] == "percent"
    flops = [dict(r, macs=2 * r["macs"]) for r in rows]
    assert kind_of(checks.check_results, flops, student_net)[0] == "flops"
    at_28 = [dict(r, macs=checks.reference_macs(r["alpha"], 28)) for r in rows]
    assert kind_of(checks.check_results, at_28, student_net)[0] == "resolution_ignored"
    batch = [dict(r, macs=256 * r["macs"]) for r in rows]
    assert kind_of(checks.check_results, batch, student_net)[0] == "batch"
    no_iqr = [{k: v for k, v in r.items() if k != "ms_iqr"} for r in rows]
    assert kind_of(checks.check_results, no_iqr, student_net)[0] == "keys"


def test_budget_is_halfway_and_never_empty():
    rows = table()
    assert checks.latency_budget(rows) == pytest.approx(0.3 + 0.5 * (2.8 - 0.3))
    for row in rows:   # the full design measured fastest of all (noise): the budget is its time
        row["ms"] = 5.0 if (row["alpha"], row["resolution"]) != (1.0, 28) else 1.0
    assert checks.latency_budget(rows) == 1.0


def test_pick_is_judged_on_the_students_own_timings():
    rows = table()   # times alpha * resolution / 10: fastest 0.3, full design 2.8, budget 1.55
    rows[0]["accuracy"] = 0.9                          # (0.25, 12): 0.3 ms, within
    over = next(r for r in rows if (r["alpha"], r["resolution"]) == (0.5, 28))   # 1.4 ms
    assert kind_of(checks.check_pick, (1.0, 28), rows, student_net)[0] == "over_budget"
    assert kind_of(checks.check_pick, (0.5, 28), rows, student_net)[0] == "not_best_within_budget"
    over["accuracy"] = 0.95
    assert kind_of(checks.check_pick, (0.25, 12), rows, student_net)[0] == "not_best_within_budget"
    assert kind_of(checks.check_pick, (0.3, 12), rows, student_net)[0] == "not_in_table"


@pytest.fixture
def one_design(monkeypatch):
    """The sweep narrowed to its cheapest design, which is then also the full design."""
    monkeypatch.setattr(tradeoffs, "ALPHAS", (0.25,))
    monkeypatch.setattr(tradeoffs, "RESOLUTIONS", (12,))
    monkeypatch.setattr(checks, "FULL_DESIGN", (0.25, 12))
    accuracy, _ = tradeoffs.train_and_evaluate(student_net, 0.25, 12, tradeoffs.mnist_split())
    macs = costs.measure_macs(tradeoffs.TinyMobileNet(0.25).eval(), (1, 1, 12, 12))
    return {"alpha": 0.25, "resolution": 12, "accuracy": accuracy, "macs": macs, "ms": 1.0,
            "ms_iqr": 0.2}


def test_real_accuracies_repeat_and_typed_ones_do_not(one_design):
    with contextlib.redirect_stdout(io.StringIO()):
        checks.check_results([one_design], student_net)
        checks.check_pick((0.25, 12), [one_design], student_net)
    typed = dict(one_design, accuracy=one_design["accuracy"] + 0.05)
    kind, message = kind_of(checks.check_results, [typed], student_net)
    assert kind == "accuracy_not_reproduced" and "lower accuracy" in message
    assert f"{one_design['accuracy']:.3f}"[1:] not in message   # the retrained value stays hidden


def test_hidden_cases_are_not_released():
    """The integrity test's rule (tests/test_checks_integrity.py) applied to this exercise."""
    import test_checks_integrity as integrity
    from exercise_helpers import REPO
    files = list((REPO / "course_lib").rglob("*.py")) + list((REPO / "exercises").rglob("*.ipynb"))
    text = "\n".join(p.read_text() for p in files).replace(" ", "").replace("\\n", "")
    integrity.test_hidden_cases_appear_nowhere_in_course_lib_or_exercises("ex10_tradeoffs", text)


def test_numpy_numbers_are_accepted_and_nonsense_is_named():
    import numpy as np
    rows = [dict(r, macs=np.int64(r["macs"]), accuracy=np.float32(0.5)) for r in table()]
    assert checks.latency_budget(rows) > 0           # read like plain numbers
    kind, message = kind_of(checks.check_results, [dict(r, ms="fast") for r in table()],
                            student_net)
    assert "ms" in message and "expected a number" in message
