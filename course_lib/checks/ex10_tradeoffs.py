"""Checks for exercise 10, the accuracy-versus-latency lab.

Nothing here trusts a typed number: mult-adds are measured on course_lib's reference network
(FlopCounterMode), a claimed accuracy is reproduced by training the student's own network again
with the lab's fixed recipe and seeds (:func:`course_lib.tradeoffs.train_and_evaluate`), and the
pick is judged on the student's OWN timings (a re-run at grading time is noisier than the
interleaved measurement the notebook made, and may order close designs differently).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import torch
from torch import nn

from course_lib import costs, tradeoffs
from course_lib.checks import (as_number, call_student, describe_call, fail, fail_call, passed,
                               refusing, run_probe, student_outcome, value_only)

KEYS = ("alpha", "resolution", "accuracy", "macs", "ms", "ms_iqr")
# A retrained design must land within this many accuracy points of the table's (same recipe,
# same seeds: on one machine the result repeats exactly; other machines differ by rounding).
ACCURACY_NOISE = 0.02
# The latency budget: halfway between the fastest design's measured time and the full design's
# (alpha 1, 28x28), in the student's own table: the same on every machine, and never empty.
FULL_DESIGN = (1.0, 28)
VISIBLE_SEED = 1010
_BUILD_ADVICE = ("build the network yourself from course_lib's blocks (DepthwiseSeparableConv2d, "
                 "nn.Conv2d, ...): course_lib.tradeoffs.TinyMobileNet is what the check compares "
                 "against.")
_FRONT_ADVICE = ("write the Pareto front yourself: course_lib.tradeoffs.pareto_front is what the "
                 "check compares against.")


@functools.lru_cache(maxsize=64)
def reference_macs(alpha: float, resolution: int) -> int:
    """Mult-adds per image of course_lib's TinyMobileNet, as FlopCounterMode measures them."""
    return costs.measure_macs(tradeoffs.TinyMobileNet(alpha).eval(), (1, 1, resolution, resolution))


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _variant_params(alpha: float, full_conv: bool = False, fixed_ends: bool = False,
                    rounding: bool = False) -> int:
    """Parameters of the network built with one of the classic mistakes (for hints)."""
    width = (lambda c: max(1, round(c * alpha))) if rounding else (lambda c: int(c * alpha))
    c_in, total = (tradeoffs.STEM_CHANNELS if fixed_ends else width(tradeoffs.STEM_CHANNELS)), 0
    total += 9 * c_in + 2 * c_in                               # stem conv + BN
    for channels, _ in tradeoffs.BLOCKS:
        c_out = width(channels)
        total += (9 * c_in * c_out if full_conv else 9 * c_in + 2 * c_in + c_in * c_out)
        total += 2 * c_out
        c_in = c_out
    return total + c_in * tradeoffs.NUM_CLASSES + tradeoffs.NUM_CLASSES


def _tiny_facts(model: Any, resolutions: Sequence[int]) -> dict:
    """What :func:`check_tiny_mobilenet` compares, read from the student's model where it lives
    (in the re-check, in the student's process: :func:`run_probe`), as data."""
    if not isinstance(model, nn.Module):
        return {"type": type(model).__name__}
    model.eval()
    outputs = []
    for resolution in resolutions:
        with torch.no_grad():
            category, out = student_outcome(model, (torch.zeros(2, 1, resolution, resolution),),
                                            {})
        if category != "returned":
            outputs.append((category, (type(out).__name__, str(out)[:2000],
                                       getattr(out, "kind", "") or ""), None))
            break  # the check stops at the first failure
        plain = type(out) is torch.Tensor
        outputs.append((category, tuple(out.shape) if plain else None, type(out).__name__))
        if not plain or tuple(out.shape) != (2, tradeoffs.NUM_CLASSES):
            break
    facts = {"type": None, "outputs": outputs, "params": _params(model)}
    facts["macs"] = [costs.measure_macs(model, (1, 1, r, r)) for r in resolutions]
    return facts


@value_only
def check_tiny_mobilenet(tiny_mobilenet: Callable, alphas: Sequence[float] = (1.0, 0.5, 0.25),
                         resolutions: Sequence[int] = (28, 12)) -> None:
    """``tiny_mobilenet(alpha)`` against course_lib's TinyMobileNet: logits of shape (N, 10) at
    every resolution, the same number of parameters, the same mult-adds."""
    for alpha in alphas:
        call = f"tiny_mobilenet({alpha})"
        with refusing(_BUILD_ADVICE, references=[tradeoffs.TinyMobileNet]):
            model = call_student(tiny_mobilenet, alpha, name="tiny_mobilenet")
        facts = run_probe(_tiny_facts, model, tuple(resolutions), name=call)
        if facts["type"] is not None:
            fail(f"{call} should return an nn.Module, got {facts['type']}.", "type")
        for resolution, (category, shape, kind) in zip(resolutions, facts["outputs"]):
            x_shape = (2, 1, resolution, resolution)
            if category != "returned":
                label = f"{call} on a {resolution}x{resolution} batch"
                fail_call(label, describe_call(label, (torch.zeros(x_shape),)), category,
                           *shape)
            if shape != (2, tradeoffs.NUM_CLASSES):
                fail(f"{call} on an input of shape {x_shape}: expected logits "
                     f"of shape (2, 10), got {shape if shape is not None else kind}"
                     f". End with global average pooling, flatten, then nn.Linear.", "shape")
        got, expected = facts["params"], _params(tradeoffs.TinyMobileNet(alpha))
        if got != expected:
            hints = {
                _variant_params(alpha, full_conv=True): (
                    "full_convolutions", "that is the count of full 3x3 convolutions: each block "
                    "is depthwise (groups = its input channels) then pointwise."),
                _variant_params(alpha, fixed_ends=True): (
                    "alpha_not_everywhere", "the width multiplier thins EVERY layer, the stem "
                    "included."),
                _variant_params(alpha, rounding=True): (
                    "rounding", "MobileNet truncates: int(channels * alpha), not round()."),
            }
            kind, hint = hints.get(got, ("params", None))
            fail(f"{call} has {got:,} parameters, which is too "
                 f"{'many' if got > expected else 'few'}."
                 + (f" Hint: {hint}" if hint else " Check the channels and the layers of each "
                                                   "block against the table."), kind)
        for resolution, got_macs in zip(resolutions, facts["macs"]):
            want = reference_macs(alpha, resolution)
            if got_macs != want:
                fail(f"{call} has the right parameters but computes too "
                     f"{'much' if got_macs > want else 'little'} on a "
                     f"{resolution}x{resolution} image: check the strides (the stem "
                     f"and the blocks' strides of the table).", "strides")
    passed(f"tiny_mobilenet matches the reference network for alpha in {tuple(alphas)}.")


def _number(row: dict, key: str, where: str) -> float:
    """A Python, NumPy or one-element tensor number, as a float."""
    return as_number(row[key], f"{where}: {key}")


def _table(results: Any) -> dict[tuple[float, int], dict[str, float]]:
    """The student's results as {(alpha, resolution): row of plain numbers}, every design of the
    sweep exactly once."""
    if not isinstance(results, (list, tuple)) or not all(isinstance(r, dict) for r in results):
        fail(f"results should be a list of dicts (one per design), got "
                      f"{type(results).__name__}.", "type")
    table = {}
    for i, row in enumerate(results):
        missing = [k for k in KEYS if k not in row]
        if missing:
            fail(f"results[{i}] lacks {missing}; every row needs {list(KEYS)}.", "keys")
        where = f"results[{i}]"
        numbers = {k: _number(row, k, where) for k in KEYS}
        design = (numbers["alpha"], int(numbers["resolution"]))
        if design in table:
            fail(f"{where}: the design alpha={design[0]}, resolution={design[1]} "
                               f"appears twice.", "duplicate")
        table[design] = numbers
    grid = {(float(a), r) for a in tradeoffs.ALPHAS for r in tradeoffs.RESOLUTIONS}
    if set(table) != grid:
        missing, extra = sorted(grid - set(table)), sorted(set(table) - grid)
        fail(f"results should hold each design of the sweep once (alpha in "
                         f"{tradeoffs.ALPHAS} x resolution in {tradeoffs.RESOLUTIONS})"
              + (f"; missing {missing}" if missing else "") + (f"; not in the sweep {extra}"
                                                                if extra else "") + ".", "designs")
    return table


def _retrained_predictions(tiny_mobilenet: Callable, alpha: float, resolution: int,
                           split_seed: int, batch_size: int = 512) -> torch.Tensor:
    """The student's half of :func:`_retrain`, run where the builder lives (in the re-check, in
    the student's process: :func:`run_probe`): the design trained with the lab's recipe
    (tradeoffs.train_and_evaluate), and the class it gives each test image, as
    course_lib.training.accuracy computes it."""
    def build(alpha):
        return call_student(tiny_mobilenet, alpha, name="tiny_mobilenet")

    split = tradeoffs.mnist_split(seed=split_seed)
    _, model = tradeoffs.train_and_evaluate(build, alpha, resolution, split)
    model.eval()
    x = tradeoffs.at_resolution(split.x_test, resolution)
    return torch.cat([model(x[i:i + batch_size]).argmax(1).cpu()
                      for i in range(0, len(x), batch_size)]).long()


def _retrain(tiny_mobilenet: Callable, design: tuple[float, int], claimed: float,
             split_seed: int, what: str) -> None:
    with refusing(_BUILD_ADVICE, references=[tradeoffs.TinyMobileNet]):
        predicted = run_probe(_retrained_predictions, tiny_mobilenet, design[0], design[1],
                              split_seed, name="tiny_mobilenet")
    labels = tradeoffs.mnist_split(seed=split_seed).y_test
    if type(predicted) is not torch.Tensor or predicted.shape != labels.shape:
        fail(f"{what}: the retrained design's predictions could not be read (got "
             f"{type(predicted).__name__}).")
    accuracy = (predicted == labels).sum().item() / max(len(labels), 1)
    if abs(accuracy - claimed) > ACCURACY_NOISE:
        fail(f"{what}: training alpha={design[0]}, resolution={design[1]} again with the lab's "
              f"recipe and seeds gives a {'higher' if accuracy > claimed else 'lower'} accuracy "
              f"than your table says (by more than the {ACCURACY_NOISE:.0%} noise allowance). "
              f"Use tradeoffs.train_and_evaluate as given, the test images only for scoring, "
              f"and put each design's own result in its row.", "accuracy_not_reproduced")


@value_only
def check_results(results: Any, tiny_mobilenet: Callable, split_seed: int = 0,
                  seed: int = VISIBLE_SEED) -> None:
    """The sweep's table: every design once; mult-adds as FlopCounterMode measures them per
    image; times and spreads positive; the most accurate design and one drawn with ``seed``
    retrained with the recipe reproduce their accuracies within :data:`ACCURACY_NOISE`."""
    table = _table(results)
    for (alpha, resolution), row in table.items():
        where = f"the row of alpha={alpha}, resolution={resolution}"
        if not 0.0 <= row["accuracy"] <= 1.0:
            fail(f"{where}: accuracy should be a fraction between 0 and 1"
                  + (" (a percentage divided by 100)." if row["accuracy"] > 1.0 else "."), "percent" if 1.0 < row["accuracy"] <= 100.0 else "accuracy")
        macs = reference_macs(alpha, resolution)
        if row["macs"] != macs:
            at_28 = reference_macs(alpha, 28)
            hints = {2 * macs: ("flops", "that is FLOPs (FlopCounterMode counts 2 per "
                                         "multiply-add); count MACs."),
                     at_28: ("resolution_ignored", "that is the cost at 28x28: measure each "
                                                   "design at its own resolution.")}
            if row["macs"] % macs == 0 and row["macs"] > macs and row["macs"] not in hints:
                hints[row["macs"]] = ("batch", "mult-adds are per image: measure with an input "
                                               "of shape (1, 1, resolution, resolution).")
            kind, hint = hints.get(row["macs"], ("macs", None))
            fail(f"{where}: macs is too {'high' if row['macs'] > macs else 'low'}."
                  + (f" Hint: {hint}" if hint else " Use costs.measure_macs on the model."), kind)
        if row["ms"] <= 0 or row["ms_iqr"] < 0:
            fail(f"{where}: ms must be > 0 and ms_iqr >= 0 (the median and the "
                            f"interquartile range of your interleaved timing).", "timing")
    designs = sorted(table)
    best = max(designs, key=lambda d: table[d]["accuracy"])
    drawn = designs[int(torch.randint(len(designs), (1,),
                                      generator=torch.Generator().manual_seed(seed)))]
    for design in dict.fromkeys((best, drawn)):
        _retrain(tiny_mobilenet, design, table[design]["accuracy"], split_seed, "results")
    passed(f"results holds the {len(table)} designs with measured mult-adds; the accuracies "
           f"retrained here repeat.")


def _reference_front(rows: list[dict]) -> list[int]:
    """Indices of the non-dominated rows, fastest first (independent of course_lib's)."""
    keep = []
    for i, row in enumerate(rows):
        dominated = any(o["ms"] <= row["ms"] and o["accuracy"] >= row["accuracy"]
                        and (o["ms"] < row["ms"] or o["accuracy"] > row["accuracy"])
                        for o in rows)
        if not dominated:
            keep.append(i)
    return sorted(keep, key=lambda i: (rows[i]["ms"], -rows[i]["accuracy"]))


def _random_tables(seed: int, count: int) -> list[list[dict]]:
    g = torch.Generator().manual_seed(seed)
    tables = []
    for t in range(count):
        n = int(torch.randint(5, 12, (1,), generator=g))
        ms = (torch.rand(n, generator=g) * 20 + 1).round(decimals=1)
        acc = (torch.rand(n, generator=g) * 0.5 + 0.5).round(decimals=2)
        if t % 2:  # ties: a repeated time, a repeated accuracy, and a repeated point that is
            # on the front (a copy of the fastest row, the most accurate among equally fast)
            ms[1], acc[3] = ms[0], acc[2]
            fastest = min(range(n), key=lambda i: (float(ms[i]), -float(acc[i])))
            copy = 4 if fastest != 4 else 3
            ms[copy], acc[copy] = ms[fastest], acc[fastest]
        tables.append([{"alpha": float(i), "resolution": 28, "accuracy": round(float(a), 2),
                        "macs": 1000 + i, "ms": round(float(m), 1), "ms_iqr": 0.1}
                       for i, (m, a) in enumerate(zip(ms, acc))])
    return tables


@value_only
def check_pareto_front(pareto_front: Callable, seed: int = VISIBLE_SEED + 1,
                       count: int = 6) -> None:
    """``pareto_front(rows)`` on ``count`` random tables (ties included) against a brute-force
    front: exactly the non-dominated rows, fastest first, the input left as it was."""
    tables = _random_tables(seed, count)
    answers = []
    for table in tables:
        copy = [dict(row) for row in table]
        with refusing(_FRONT_ADVICE, references=[tradeoffs.pareto_front]):
            answers.append(call_student(pareto_front, copy, name="pareto_front"))
        if copy != table:
            fail("pareto_front changed the rows it was given: return a new "
                                   "list and leave the table as it was.", "input_changed")
    for number, (table, got) in enumerate(zip(tables, answers)):
        call = f"pareto_front(table {number + 1} of {len(table)} rows)"
        if not isinstance(got, (list, tuple)) or not all(isinstance(r, dict) for r in got):
            fail(f"{call}: expected a list of rows (dicts), got {type(got).__name__}.", "type")
        expected = [table[i] for i in _reference_front(table)]
        got_ids = [table.index(r) if r in table else None for r in got]
        if None in got_ids:
            fail(f"{call}: return rows of the table as they are (dicts with their "
                          f"keys), not new ones.", "rows")
        dominated = [i for i in got_ids if table[i] not in expected]
        if dominated:
            better = next(o for o in table if o["ms"] <= table[dominated[0]]["ms"]
                          and o["accuracy"] >= table[dominated[0]]["accuracy"] and o is not
                          table[dominated[0]] and o != table[dominated[0]])
            inverted = all(table[i] in [table[j] for j in _reference_front(
                [{**r, "ms": -r["ms"]} for r in table])] for i in got_ids)
            if inverted:
                fail(f"{call}: your front keeps the SLOWEST designs: a design is "
                                   f"better when its time is lower and its accuracy higher.", "direction")
            fail(f"{call}: it keeps the row with ms={table[dominated[0]]['ms']}"
                                    f", accuracy={table[dominated[0]]['accuracy']}, but the row "
                                    f"with ms={better['ms']}, accuracy={better['accuracy']} is as "
                                    f"fast or faster and as accurate or more.", "dominated_kept")
        missing = [r for r in expected if r not in [table[i] for i in got_ids]]
        if missing:
            fail(f"{call}: it leaves out the row with "
                                         f"ms={missing[0]['ms']}, accuracy="
                                         f"{missing[0]['accuracy']}, which no other row beats "
                                         f"on both (ties beat nothing: a row dominates another "
                                         f"only when it is better in at least one).", "front_point_missing")
        if len(got_ids) != len(expected):
            fail(f"{call}: it lists a row more than once.", "duplicate")
        if [table[i] for i in got_ids] != expected:
            fail(f"{call}: the right rows, in the wrong order: fastest first (for "
                           f"equal times, the more accurate first).", "order")
    passed(f"pareto_front is right on {len(tables)} tables, ties included.")


def latency_budget(results: Any) -> float:
    """The lab's budget, from the student's own table: halfway between the fastest design's
    measured time and the full design's (alpha 1, 28x28). It means the same on every machine,
    and at least the fastest design always meets it."""
    table = _table(results)
    fastest = min(row["ms"] for row in table.values())
    return fastest + 0.5 * (table[FULL_DESIGN]["ms"] - fastest)


@value_only
def check_pick(pick: Any, results: Any, tiny_mobilenet: Callable, split_seed: int = 0) -> None:
    """``pick = (alpha, resolution)``: in the student's table, within the budget on the student's
    own timings, the most accurate such design there; then retrained, its accuracy repeats."""
    table = _table(results)
    budget = latency_budget(results)
    if not isinstance(pick, (tuple, list)) or len(pick) != 2:
        fail(f"pick should be a pair (alpha, resolution), got {pick!r}.", "type")
    design = (float(pick[0]), int(pick[1]))
    if design not in table:
        fail(f"pick {tuple(pick)} is not a design of your results table.", "not_in_table")
    row = table[design]
    if row["ms"] > budget:
        fail(f"pick {tuple(pick)}: your own measurement of it is over the latency "
                             f"budget (halfway between your fastest design's time and the full "
                             f"design's).", "over_budget")
    within = [d for d in table if table[d]["ms"] <= budget]
    best = max(within, key=lambda d: (table[d]["accuracy"], -table[d]["ms"]))
    if table[best]["accuracy"] > row["accuracy"]:
        fail(f"pick {tuple(pick)}: in your own table, alpha={best[0]}, "
                                        f"resolution={best[1]} is also within the budget and is "
                                        f"more accurate.", "not_best_within_budget")
    _retrain(tiny_mobilenet, design, row["accuracy"], split_seed, f"pick {tuple(pick)}")
    passed(f"pick {tuple(pick)} is the most accurate design within the budget on your own "
           f"measurements, and its accuracy repeats when retrained.")
