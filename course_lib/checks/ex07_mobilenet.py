"""Checks for exercise 7, MobileNetV1 and timing ("FLOPs are not latency").

Grading is fair on any machine: the timing function is tested on a CPU against workloads with a
known answer (sleeps, a slow warm-up, outliers, exact call counts) and against a simulated
asynchronous GPU (a fake ``torch.cuda`` whose work only finishes when synchronized), so a missing
synchronize is caught without a GPU. Part 4's timings must be values the student's own ``time_ms``
returned (:func:`recorded`). The GPU part passes with a note where the grader has no GPU; on a GPU
grader it runs the student's ``time_ms`` on the GPU and compares it, and any ``gpu_ms`` given, with
the grader's own measurement (:func:`check_gpu_measurements`).

Every check is value-only (the re-check runs it in its server): the workloads are built beside
the student's timer, where it lives (the probe :func:`_timed`), and only what the timer returned
and how often it called them come back; the verdicts, the reference timings and the hidden
durations' thresholds stay with the check.
"""
from __future__ import annotations

import contextlib
import functools
import math
import time
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from course_lib import bench, costs
from course_lib.checks import (as_number, call_student, course_references, describe_call,
                               expect_close, fail, fail_call, how_wrong, passed, plain_number,
                               quiet, refusing, run_probe, student_outcome, value_only)
from course_lib.mobilenet import ConvMobileNet, MobileNetV1, layer_specs, total_macs
from course_lib.timing import benchmark

# FlopCounterMode's first use imports torch's compile stack lazily (seconds, once): pay for it when
# the setup cell imports this module, not inside the first graded cell.
with quiet():
    costs.measure_macs(nn.Conv2d(1, 1, 1), (1, 1, 1, 1))

# Test cells graded for real only on a GPU: the class-grading pipeline sends this assignment to
# workers that declare a GPU resource (course_lib.grading.dispatch.gpu_tests).
GPU_TESTS = ("part6-tests",)

# (alpha, num_classes, in_channels) for part 1
VISIBLE_CASES = [(1.0, 1000, 3), (0.5, 10, 1)]


# --- part 1: the network ----------------------------------------------------------------------

@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run a check's own compute on one thread (restored afterwards): on a small shared machine,
    oversubscribed threads make PyTorch many times slower, and checks must stay well inside
    nbgrader's per-cell timeout."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def _student_macs(model: nn.Module, channels: int, resolution: int) -> int:
    """Measured MACs of one image (a forward pass under FlopCounterMode, in eval mode)."""
    with quiet(), torch.no_grad():
        return costs.measure_macs(model.eval(), (1, channels, resolution, resolution))


@value_only
def check_mobilenet(build: Callable,
                    cases: Sequence[tuple[float, int, int]] = VISIBLE_CASES) -> None:
    """``build(alpha, num_classes, in_channels)`` must equal course_lib's MobileNetV1: the same
    convolutions (channels, kernel, stride, groups), the same parameter count and mult-adds.
    Cases are (alpha, num_classes, in_channels). course_lib's MobileNet classes refuse while the
    student's code runs, and the result may not contain them."""
    with _one_thread():
        _check_mobilenet(build, cases)


def _model_facts(model: Any, x: torch.Tensor, channels: int, classes: int) -> dict:
    """What :func:`check_mobilenet` compares, read from the student's model where it lives (in
    the re-check, in the student's process: :func:`run_probe`), as data."""
    from course_lib import mobilenet as course_mobilenet

    if not isinstance(model, nn.Module):
        return {"type": type(model).__name__}
    facts = {"type": None,
             "borrowed": sorted({type(m).__name__ for m in model.modules()
                                 if type(m).__module__ == course_mobilenet.__name__}),
             "convs": [(c.in_channels, c.out_channels, tuple(c.kernel_size), tuple(c.stride),
                        c.groups, 0 if c.bias is None else c.bias.numel())
                       for c in _convs(model)],
             "bn": sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()),
             "params": costs.count_params(model), "forward": None, "macs": None}
    if facts["borrowed"]:
        return facts
    model.eval()
    with _one_thread():
        category, out = student_outcome(model, (x,), {})
        if category == "returned":
            facts["forward"] = ("returned", out)
            facts["macs"] = _student_macs(model, channels, 64)
        else:  # reported after the layers, as the check always did
            facts["forward"] = (category, (type(out).__name__, str(out)[:2000],
                                           getattr(out, "kind", "") or ""))
    return facts


def _check_mobilenet(build: Callable, cases: Sequence[tuple[float, int, int]]) -> None:
    advice = ("mobilenet_v1 must build the network itself from nn layers and "
              "DepthwiseSeparableConv2d, not return course_lib's MobileNetV1 / ConvMobileNet.")
    references = course_references("mobilenet")
    for alpha, classes, channels in cases:
        args = (alpha, classes, channels)
        call = describe_call("mobilenet_v1", args)
        # Everything the student's code does first: build, run, measure.
        x = torch.randn(2, channels, 32, 32, generator=torch.Generator().manual_seed(0))
        with refusing(advice, references=references):
            model = call_student(build, *args, name="mobilenet_v1")
            facts = run_probe(_model_facts, model, x, channels, classes, name=call)
        if facts["type"] is not None:
            fail(f"{call} should return an nn.Module, got {facts['type']}.")
        if facts["borrowed"]:
            fail(f"{call} returned a model containing course_lib's "
                 f"{', '.join(facts['borrowed'])}: {advice}")
        # Then the reference.
        reference = MobileNetV1(alpha, classes, channels)
        theirs = facts["convs"]
        ours = [(c.in_channels, c.out_channels, tuple(c.kernel_size), tuple(c.stride), c.groups)
                for c in _convs(reference)]
        if len(theirs) != len(ours):
            fail(f"{call}: found {len(theirs)} Conv2d layers, "
                 f"{'too many' if len(theirs) > len(ours) else 'too few'} (one full 3x3 conv, "
                 f"then 13 blocks of a 3x3 depthwise and a 1x1 pointwise conv).")
        for i, (t, want) in enumerate(zip(theirs, ours)):
            what = (f"{call}: conv layer #{i} (in_channels, out_channels, kernel, stride, groups)")
            got = tuple(t[:5])
            if got != want:
                hint = ""
                if got[1] != want[1] and alpha != 1:
                    hint = (f" Hint: with alpha={alpha} every layer has int(channels * alpha) "
                            "channels - the five 512-channel blocks and the first conv too.")
                elif got[3] != want[3] and i == len(ours) - 2:
                    hint = (" Hint: the last depthwise layer has stride 1 (the paper's Table 1 "
                            "misprints it as 2; the network must end at 7x7 for a 224 input).")
                elif got[4] != want[4]:
                    hint = " Hint: a depthwise conv has groups = its number of channels."
                fail(f"{what} is {got}, expected {want}.{hint}")
        category, out = facts["forward"]
        if category != "returned":
            fail_call(f"the model from {call}", describe_call(f"the model from {call}", (x,)),
                       category, *out)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, classes):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            fail(f"{call} on a (2, {channels}, 32, 32) input returned {shape}, expected logits of "
                 f"shape (2, {classes}).")
        if facts["bn"] != len(ours):
            fail(f"{call}: found {facts['bn']} BatchNorm2d layers, one per convolution is needed: "
                 f"BatchNorm (and ReLU) follow every convolution.")
        expected = costs.count_params(reference)
        got = facts["params"]
        if got != expected:
            hint = ""
            conv_bias = sum(t[5] for t in theirs)
            if conv_bias and got - conv_bias == expected:
                hint = " Hint: a conv followed by BatchNorm needs no bias (bias=False)."
            fail(f"{call}: {got:,} parameters, {how_wrong(got, expected)}.{hint}")
        want = sum(spec.macs for spec in layer_specs(alpha, 64, classes, in_channels=channels))
        got_macs = facts["macs"]
        if got_macs != want:
            fail(f"{call}: {got_macs:,} mult-adds at 64x64, {how_wrong(got_macs, want)}. Check "
                 f"the strides and the global average pool.")
    passed(f"mobilenet_v1 matches the reference architecture for alpha, num_classes, in_channels "
           f"= {[c for c in cases]}.")


@value_only
def check_paper_costs(macs_m: Any, conv_macs_ratio: Any) -> None:
    """``macs_m``: {alpha: million mult-adds at 224} for alpha 1, .75, .5, .25 (paper Table 6);
    ``conv_macs_ratio``: ConvMobileNet's mult-adds / MobileNetV1's at alpha 1, 224 (Table 4)."""
    alphas = (1.0, 0.75, 0.5, 0.25)
    if not isinstance(macs_m, dict):
        fail(f"macs_m should be a dict {{alpha: million mult-adds}}, got {type(macs_m).__name__}.")
    missing = [a for a in alphas if a not in macs_m]
    if missing:
        fail(f"macs_m is missing the alpha value(s) {missing}; keys should be {list(alphas)}.")
    answers = {alpha: as_number(macs_m[alpha], f"macs_m[{alpha}]") for alpha in alphas}
    ratio_answer = as_number(conv_macs_ratio, "conv_macs_ratio")
    for alpha in alphas:
        exact = total_macs(alpha, 224) / 1e6
        expect_close(answers[alpha], exact, f"macs_m[{alpha}] (million mult-adds at 224x224)",
                     rel=5e-4, hints={
                         2 * exact: "that is twice the mult-adds: FlopCounterMode counts FLOPs (2 "
                                    "per multiply-add); costs.measure_macs already halves them.",
                         exact * 1e6: "give millions (divide by 1e6)."})
    ratio = total_macs(1.0, 224, full_conv=True) / total_macs(1.0, 224)
    expect_close(ratio_answer, ratio, "conv_macs_ratio", rel=1e-2, hints={
        1 / ratio: "upside down: divide ConvMobileNet's mult-adds by MobileNetV1's."})
    passed(f"Table 6 mult-adds {[round(answers[a]) for a in alphas]} M and the "
           f"{ratio:.1f}x ratio of Table 4 match the paper.")


def _workload(durations: Callable[[int], float]) -> tuple[Callable[[], None], list[float]]:
    """A function whose n-th call sleeps ``durations(n)`` milliseconds, and the list of the
    milliseconds its calls slept (a plain function: nothing on it says what it will do)."""
    slept: list[float] = []

    def fn() -> None:
        ms = durations(len(slept))
        time.sleep(ms / 1e3)
        slept.append(ms)

    return fn, slept


class _FakeGPU:
    """A simulated asynchronous device: work is queued and returns at once; it is done only at
    ``busy_until``. synchronize() waits for it; events are stamped when the queue reaches them."""

    def __init__(self) -> None:
        self.busy_until = time.perf_counter()
        self.synchronized = 0

    def launch(self, ms: float) -> None:
        self.busy_until = max(time.perf_counter(), self.busy_until) + ms / 1e3

    def wait(self, until: float) -> None:
        delay = until - time.perf_counter()
        if delay > 0:
            time.sleep(delay)

    def synchronize(self, *args: Any, **kwargs: Any) -> None:
        self.synchronized += 1
        self.wait(self.busy_until)


@contextlib.contextmanager
def _fake_cuda(gpu: _FakeGPU) -> Iterator[None]:
    """Replace torch.cuda's timing API by the simulation for the duration of a check."""

    class Event:
        def __init__(self, enable_timing: bool = False, *args: Any, **kwargs: Any):
            self.enable_timing, self.stamp = enable_timing, None

        def record(self, *args: Any, **kwargs: Any) -> None:
            self.stamp = max(time.perf_counter(), gpu.busy_until)

        def query(self) -> bool:
            return self.stamp is not None and time.perf_counter() >= self.stamp

        def synchronize(self) -> None:
            if self.stamp is not None:
                gpu.wait(self.stamp)

        def elapsed_time(self, end: "Event") -> float:
            if not (self.enable_timing and end.enable_timing):
                raise RuntimeError("Both events must be created with enable_timing=True")
            if self.stamp is None or end.stamp is None:
                raise RuntimeError("Both events must be recorded before calling elapsed_time()")
            if not (self.query() and end.query()):
                raise RuntimeError("CUDA error: device not ready (synchronize before reading "
                                   "the events)")
            return (end.stamp - self.stamp) * 1e3

    class Stream:
        def synchronize(self) -> None:
            gpu.synchronize()

    patches = {"synchronize": gpu.synchronize, "Event": Event, "is_available": lambda: True,
               "current_stream": lambda *a, **k: Stream(),
               "default_stream": lambda *a, **k: Stream()}
    saved = {name: getattr(torch.cuda, name) for name in patches}
    for name, value in patches.items():
        setattr(torch.cuda, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(torch.cuda, name, value)


# The workloads of check_time_ms: milliseconds of the n-th call, given the case's ``ms``.
WORKLOADS: dict[str, Callable[[float, int], float]] = {
    "steady": lambda ms, n: ms,
    "slow warm-up": lambda ms, n: 60.0 if n < 3 else 4.0,   # the first 3 calls pay for set-up
    "outliers": lambda ms, n: 40.0 if n % 4 == 1 else 3.0,  # every 4th call a hiccup
}


def _timed(time_ms: Any, workload: str, ms: float, warmup: int, repeats: int,
           device: str) -> dict:
    """Probe (run where ``time_ms`` lives: :func:`run_probe`): build the workload beside the
    timer, time it with the student's ``time_ms``, and report as data what it returned (a plain
    number, or the name of its type), how its call ended, and how often it called the workload.
    ``workload`` "gpu" launches ``ms`` of work on a simulated asynchronous CUDA device; a name
    of :data:`GPU_NETWORKS` is that network's inference in part 6's setting, on the GPU."""
    time_ms = getattr(time_ms, "__wrapped__", time_ms)   # the student's own, not the recorder
    gpu, slept, context = None, None, contextlib.nullcontext()
    if workload in GPU_NETWORKS:  # part 6, on a real GPU
        model, x = _gpu_setting(workload)
        fn, context = (lambda: model(x)), _gpu_inference()
    elif workload == "gpu":
        gpu = _FakeGPU()
        fn, context = (lambda: gpu.launch(float(ms))), _fake_cuda(gpu)
    else:
        fn, slept = _workload(functools.partial(WORKLOADS[workload], float(ms)))
    with context:
        started = time.perf_counter()
        category, result = student_outcome(time_ms, (fn,), {"warmup": warmup,
                                                            "repeats": repeats, "device": device})
        elapsed = (time.perf_counter() - started) * 1e3
        if gpu is not None:
            gpu.synchronize()
    # How long the call of time_ms took is the evidence that the work was done: a count or a
    # number the student's code could write, a clock it cannot turn back.
    out = {"category": category, "calls": len(slept) if slept is not None else None,
           "elapsed_ms": elapsed}
    if category != "returned":
        return {**out, "error": type(result).__name__, "text": str(result)[:2000],
                "kind": getattr(result, "kind", "") if category == "check-failed" else ""}
    number = plain_number(result)
    if isinstance(number, (int, float)) and not isinstance(number, bool):
        return {**out, "number": float(number)}
    return {**out, "number": None, "type": type(result).__name__}


def _time(time_ms: Callable, workload: str, ms: float, warmup: int, repeats: int, device: str,
          label: str) -> tuple[float, int | None, float]:
    """The student's ``time_ms`` on one workload: (its number, the workload's calls, the
    milliseconds the call of ``time_ms`` lasted). On a sleeping workload the call must have
    lasted as long as the calls counted sleep, whatever the student's code wrote."""
    call = f"time_ms({label}, warmup={warmup}, repeats={repeats}, device={device!r})"
    out = run_probe(_timed, time_ms, workload, ms, warmup, repeats, device, name="time_ms")
    if out["category"] != "returned":
        fail_call("time_ms", call, out["category"], out["error"], out["text"], out["kind"])
    if out["number"] is None:
        fail(f"{call}: expected a number of milliseconds, got {out['type']}.")
    calls, elapsed = out["calls"], out["elapsed_ms"]
    if workload in WORKLOADS and elapsed < 0.9 * sum(WORKLOADS[workload](ms, n)
                                                     for n in range(calls)):
        fail(f"{call} returned after {elapsed:.3g} ms, sooner than the {calls} calls of fn it "
             "made can take: time real calls of fn(), with a clock.")
    return out["number"], calls, elapsed


@value_only
def check_time_ms(time_ms: Callable, ms: float = 8.0, gpu_ms: float = 10.0) -> None:
    """``time_ms(fn, warmup, repeats, device)`` returns the median milliseconds of one call of
    ``fn()``, after exactly ``warmup`` untimed calls and ``repeats`` timed ones, synchronizing on
    CUDA. ``ms`` and ``gpu_ms`` set the durations of the simulated CPU and GPU workloads, which
    are built beside the timer (:func:`_timed`); the verdicts are made here."""
    if not callable(time_ms):
        fail(f"time_ms should be a function, but it is a {type(time_ms).__name__}.", "type")
    d, g = float(ms), float(gpu_ms)
    # 1. a steady workload: d ms per call, in milliseconds, with the calls it was asked for
    for warmup, repeats in ((2, 5), (0, 3), (4, 3)):
        got, calls, _ = _time(time_ms, "steady", d, warmup, repeats, "cpu",
                              f"<sleeps {d:g} ms>")
        if math.isclose(got, d / 1e3, rel_tol=0.5):
            fail(f"time_ms(<sleeps {d:g} ms>) returned {got:.4g}: that is seconds; return "
                 "milliseconds (multiply by 1000).")
        if not 0.9 * d <= got <= 3 * d + 10:
            fail(f"time_ms(<a function that sleeps {d:g} ms per call>) returned {got:.3g} ms, "
                 f"which is {'too high' if got > d else 'too low'}: return the milliseconds of "
                 f"ONE call.")
        if calls != warmup + repeats:
            fail(f"time_ms(fn, warmup={warmup}, repeats={repeats}) called fn {calls} times; "
                 f"use the arguments: {warmup} untimed warm-up calls, then {repeats} timed calls "
                 f"({warmup + repeats} in all).")
    # 2. a slow warm-up: the first `warmup` calls take 60 ms, later ones 4 ms
    got, _, _ = _time(time_ms, "slow warm-up", d, 3, 5, "cpu", "<first 3 calls slow>")
    if got > 20:
        fail(f"time_ms(<a function whose first 3 calls take 60 ms, then 4 ms>, warmup=3) returned "
             f"{got:.3g} ms, which is too high: run the warm-up calls first and do not time "
             "them (first calls pay for caches, lazy initialisation, autotuning, compilation).")
    # 3. outliers: every 4th call takes 40 ms, the others 3 ms -> the median is not the mean
    got, _, _ = _time(time_ms, "outliers", d, 1, 8, "cpu", "<3 ms with 40 ms outliers>")
    if got > 8:
        fail(f"time_ms(<3 ms per call with a 40 ms outlier every 4th call>) returned {got:.3g} "
             "ms, which is too high: report the median of the timed calls, not the mean (one "
             "hiccup of the operating system should not move the result).")
    # 4. an asynchronous device: launches return at once, the work finishes later
    got, _, elapsed = _time(time_ms, "gpu", g, 2, 5, "cuda", f"<launches {g:g} ms of GPU work>")
    if got < 0.5 * g:
        fail(f"on CUDA, time_ms(<launches {g:g} ms of GPU work>, device='cuda') returned "
             f"{got:.3g} ms, which is too low: a kernel launch returns before the kernel runs, so "
             "you timed the launch. Call torch.cuda.synchronize() before starting and before "
             "stopping the clock (or record torch.cuda.Event(enable_timing=True) pairs and "
             "synchronize before reading them).")
    if elapsed < 0.9 * 5 * g:  # its 5 timed launches must have run before it stopped its clock
        fail(f"on CUDA, time_ms(<launches {g:g} ms of GPU work>, warmup=2, repeats=5) returned "
             f"after {elapsed:.3g} ms, before the GPU work it timed could have finished: launch "
             "the work with fn() and synchronize before stopping the clock.")
    if got > 3 * g + 10:
        fail(f"on CUDA, time_ms(<launches {g:g} ms of GPU work>, warmup=2, repeats=5) returned "
             f"{got:.3g} ms, which is too high: synchronize after the warm-up so queued warm-up "
             "work is not billed to the first timed call, and divide per call.")
    passed("time_ms: milliseconds, warm-up excluded, median, the calls asked for, synchronized on "
           "(simulated) CUDA.")


# --- part 4: measurements on this machine ----------------------------------------------------

class _Recorded:
    """The student's ``time_ms`` with a record of what each call returned: part 4's numbers must
    be values it actually produced in this session, not typed in."""

    def __init__(self, time_ms: Callable):
        self.__wrapped__ = time_ms
        self.results: list[float] = []
        functools.update_wrapper(self, time_ms)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = self.__wrapped__(*args, **kwargs)
        try:
            self.results.append(float(plain_number(result)))
        except (TypeError, ValueError):
            pass
        return result


def recorded(time_ms: Any) -> Any:
    """Wrap the student's ``time_ms`` (part 4's locked setup cell does it) so part 4's
    check can tell measured numbers from typed-in ones. Anything not callable is returned as it
    is (the part 3 test then reports it)."""
    if not callable(time_ms) or isinstance(time_ms, _Recorded):
        return time_ms
    return _Recorded(time_ms)


def _returned_so_far(time_ms: Any) -> list[float] | None:
    """Probe: the numbers the recorder has seen ``time_ms`` return (its latest thousand), or
    None when ``time_ms`` is not the recorder."""
    if not isinstance(time_ms, _Recorded):
        return None
    return [float(v) for v in time_ms.results[-1000:]]


@value_only
def check_cpu_measurements(mobilenet_ms: Any, conv_mobilenet_ms: Any, measured_speedup: Any,
                           macs_ratio: Any, batch: int, resolution: int,
                           time_ms: Any = None) -> None:
    """Numbers the student measured: returned by their own ``time_ms`` in this session (when the
    recorder of :func:`recorded` is passed), plausible against a reference timing, self-consistent,
    and the MAC ratio exact."""
    a = as_number(mobilenet_ms, "mobilenet_ms")
    b = as_number(conv_mobilenet_ms, "conv_mobilenet_ms")
    s = as_number(measured_speedup, "measured_speedup")
    r = as_number(macs_ratio, "macs_ratio")
    if a <= 0 or b <= 0:
        fail(f"times must be positive milliseconds, got mobilenet_ms={a}, conv_mobilenet_ms={b}.")
    returned = run_probe(_returned_so_far, time_ms, name="time_ms") if time_ms is not None \
        else None
    if returned is not None:
        for name, value in (("mobilenet_ms", a), ("conv_mobilenet_ms", b)):
            if not any(math.isclose(value, v, rel_tol=1e-9) for v in returned):
                fail(f"{name} = {value:.4g} is not a number your time_ms returned in this session: "
                     f"measure it with time_ms(...) in the cell above (typed-in timings do not "
                     f"count; re-run the notebook from the top).")
    if math.isclose(s, a / b, rel_tol=1e-2) and not math.isclose(a, b, rel_tol=1e-2):
        fail(f"measured_speedup = {s:.3g} is upside down: how many times longer ConvMobileNet "
             "takes, conv_mobilenet_ms / mobilenet_ms.")
    if not math.isclose(s, b / a, rel_tol=1e-2):
        fail(f"measured_speedup = {s:.3g} but conv_mobilenet_ms / mobilenet_ms = {b / a:.3g}.")
    with torch.device("meta"), quiet():
        x = torch.empty(1, 3, resolution, resolution)
        want = costs.measure_macs(ConvMobileNet().eval(), x) / costs.measure_macs(
            MobileNetV1().eval(), x)
    expect_close(r, want, f"macs_ratio (ConvMobileNet's mult-adds / MobileNetV1's at "
                          f"{resolution}x{resolution})", rel=5e-3,
                 hints={1 / want: "upside down: ConvMobileNet's mult-adds divided by "
                                  "MobileNetV1's."})
    # plausibility: a quick reference timing of the faster network, within a wide factor (the
    # grader's machine may be busy)
    with quiet(), _one_thread():
        model = MobileNetV1().eval()
        x = torch.randn(batch, 3, resolution, resolution)
        with torch.no_grad():
            ref = benchmark(model, x, warmup=1, repeats=3).median_ms
    if not ref / 50 <= a <= ref * 50:
        fail(f"mobilenet_ms = {a:.3g} ms is implausible: a reference timing of the same model "
             f"and input here took {ref:.3g} ms. Time model(x) itself, in milliseconds.")
    passed(f"measured: MobileNetV1 {a:.1f} ms, ConvMobileNet {b:.1f} ms -> {s:.2f}x faster for "
           f"{r:.2f}x fewer mult-adds.")


@value_only
def check_intensity(ai_depthwise: Any, ai_pointwise: Any) -> None:
    """FLOP/byte of a 3x3 depthwise and a 1x1 pointwise layer, 512 channels, 14x14, batch 1,
    fp32, minimal traffic (input, weights and output each moved once)."""
    answers = (as_number(ai_depthwise, "ai_depthwise"), as_number(ai_pointwise, "ai_pointwise"))
    for name, got, kind in (("ai_depthwise", answers[0], "depthwise"),
                            ("ai_pointwise", answers[1], "pointwise")):
        w = bench.layer_workload(kind, 512, 14, 1, 4)
        expect_close(got, w.intensity, f"{name} (FLOP/byte)", rel=1e-2, hints={
            w.intensity / 2: "count FLOPs (2 per multiply-add), not MACs.",
            w.intensity * 4: "count bytes: each fp32 number is 4 bytes.",
            w.flops / (4 * 2 * 512 * 14 * 14): "the weights are read from memory too."})
    passed("arithmetic intensities match: the depthwise layer does far fewer FLOPs per byte.")


# --- part 6: on a GPU only ---------------------------------------------------------------------

GPU_SETTING = dict(batch=64, resolution=224)   # bf16 autocast, channels_last, inference
# The student's time_ms, run on the grader's GPU, must agree with the grader's timing this well
# (same GPU, same work); the student's own gpu_ms may come from another GPU, so it gets a wider
# band per value, and the ratio of the two networks (which depends less on the GPU) the tight one.
GPU_TOLERANCE = 3.0
GPU_VALUE_TOLERANCE = 10.0


GPU_NETWORKS = {"MobileNetV1": MobileNetV1, "ConvMobileNet": ConvMobileNet}


def _gpu_setting(name: str) -> tuple[nn.Module, torch.Tensor]:
    """Part 6's network ``name`` and its input, on the GPU in channels_last."""
    with quiet():
        model = GPU_NETWORKS[name]().cuda().eval().to(memory_format=torch.channels_last)
        x = torch.randn(GPU_SETTING["batch"], 3, GPU_SETTING["resolution"],
                        GPU_SETTING["resolution"], device="cuda").contiguous(
            memory_format=torch.channels_last)
    return model, x


@contextlib.contextmanager
def _gpu_inference() -> Iterator[None]:
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        yield


def _measure_on_gpu(time_ms: Callable) -> dict[str, tuple[float, float]]:
    """For each network: (the student's time_ms on this GPU, the grader's own timing), both of
    the part's setting (CUDA events, warm-up, median: course_lib.timing.benchmark). The
    student's timing runs where ``time_ms`` lives (:func:`_timed`), the grader's here."""
    results = {}
    for name in GPU_NETWORKS:
        student, _, _ = _time(time_ms, name, 0.0, 5, 10, "cuda", f"<{name} inference>")
        model, x = _gpu_setting(name)
        with _gpu_inference(), quiet():
            reference = benchmark(model, x, warmup=5, repeats=10).median_ms
        results[name] = (student, reference)
    return results


@value_only
def check_gpu_measurements(gpu_ms: Any, time_ms: Callable, *,
                           measure: Callable[[Callable], dict[str, tuple[float, float]]] | None
                           = None, gpu: bool | None = None) -> None:
    """Part 6, fair on every machine.

    * No GPU on the grading machine: full marks whatever ``gpu_ms`` holds, with a note.
    * A GPU: the grader runs the student's own ``time_ms`` on both networks on its GPU and
      compares with its own measurement (``measure``); a timing function that is off by more than
      :data:`GPU_TOLERANCE` fails. Then ``gpu_ms`` must be either None (the student had no GPU:
      their time_ms measured here stands in for it) or the student's dict, each value within the
      :data:`GPU_VALUE_TOLERANCE` of the grader's measurement (another GPU may be slower or
      faster) and their ratio within :data:`GPU_TOLERANCE` of the grader's ratio (fabricated
      numbers fail).

    ``measure`` and ``gpu`` are for tests (the decision logic runs on a CPU with an injected
    measurement); graders leave them alone."""
    if gpu is None:
        gpu = torch.cuda.is_available()
    if not gpu:
        passed("no GPU on this machine: this part is skipped (full marks). On a GPU grader your "
               "time_ms is run on the GPU and your gpu_ms (if you give one) is compared with the "
               "grader's own measurement.")
        return
    if not callable(time_ms):
        fail("time_ms should be your timing function from part 3.")
    if not (gpu_ms is None or isinstance(gpu_ms, dict)):
        fail(f"gpu_ms should be None (no GPU where you worked) or a dict {{'MobileNetV1': ms, "
             f"'ConvMobileNet': ms}}, got {type(gpu_ms).__name__}.")
    if isinstance(gpu_ms, dict) and set(gpu_ms) != {"MobileNetV1", "ConvMobileNet"}:
        fail("gpu_ms should be a dict with keys 'MobileNetV1' and 'ConvMobileNet' (milliseconds).")
    answers = ({name: as_number(value, f"gpu_ms[{name!r}]") for name, value in gpu_ms.items()}
               if isinstance(gpu_ms, dict) else None)
    measured = (measure or _measure_on_gpu)(time_ms)
    for name, (student, reference) in measured.items():
        if not reference / GPU_TOLERANCE <= student <= reference * GPU_TOLERANCE:
            fail(f"on this grader's GPU your time_ms gave {student:.3g} ms for {name}, but the "
                 f"grader's own timing is {reference:.3g} ms: check the synchronization, warm-up "
                 f"and median of time_ms on CUDA.")
    if answers is None:
        passed("gpu_ms is None (no GPU where you worked): your time_ms, run on this grader's GPU, "
               "agrees with the grader's own timing, so this part counts.")
        return
    for name, value in answers.items():
        reference = measured[name][1]
        if not reference / GPU_VALUE_TOLERANCE <= value <= reference * GPU_VALUE_TOLERANCE:
            fail(f"gpu_ms[{name!r}] = {value:.3g} ms is implausible: the grader measured the same "
                 f"setting (batch 64, 224x224, bf16, channels_last) on its GPU, and GPUs do not "
                 f"differ by more than {GPU_VALUE_TOLERANCE:g}x here. Did you synchronize, warm "
                 f"up, and use batch 64? If you had no GPU, leave gpu_ms = None.")
    if answers["MobileNetV1"] <= 0:
        fail("gpu_ms['MobileNetV1'] must be a positive number of milliseconds.")
    theirs = answers["ConvMobileNet"] / answers["MobileNetV1"]
    ours = measured["ConvMobileNet"][1] / measured["MobileNetV1"][1]
    if not ours / GPU_TOLERANCE <= theirs <= ours * GPU_TOLERANCE:
        fail(f"gpu_ms: ConvMobileNet / MobileNetV1 = {theirs:.3g}, but on the grader's GPU the "
             f"same ratio is {ours:.3g}; a ratio is much the same on any GPU. Time both networks "
             f"in the same setting with your time_ms.")
    passed(f"GPU timings agree with the grader's: MobileNetV1 {answers['MobileNetV1']:.2f} ms, "
           f"ConvMobileNet {answers['ConvMobileNet']:.2f} ms.")
