"""Checks for exercise 7, MobileNetV1 and timing ("FLOPs are not latency").

Grading is fair on any machine: the timing function is tested on a CPU against workloads with a
known answer (sleeps, a slow warm-up, outliers) and against a simulated asynchronous GPU (a fake
``torch.cuda`` whose work only finishes when synchronized), so a missing synchronize is caught
without a GPU. The part that needs a real GPU passes with a note where there is none.
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, Iterator

import torch
from torch import nn

from course_lib import bench, costs
from course_lib.checks import (CheckFailed, as_number, call_student, describe_call, fail, passed,
                               quiet)
from course_lib.mobilenet import ConvMobileNet, MobileNetV1, layer_specs, total_macs
from course_lib.timing import benchmark

# FlopCounterMode's first use imports torch's compile stack lazily (seconds, once): pay for it when
# the setup cell imports this module, not inside the first graded cell.
with quiet():
    costs.measure_macs(nn.Conv2d(1, 1, 1), (1, 1, 1, 1))

# Test cells graded for real only on a GPU: the class-grading pipeline sends this assignment to
# workers that declare a GPU resource (course_lib.grading.cluster.gpu_tests).
GPU_TESTS = ("part6-tests",)

VISIBLE_CASES = [(1.0, 1000, 3), (0.5, 10, 1)]
HIDDEN_CASES = [(0.75, 100, 3), (0.25, 10, 1)]


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


def check_mobilenet(build: Callable, hidden: bool = False) -> None:
    """``build(alpha, num_classes, in_channels)`` must equal course_lib's MobileNetV1: the same
    convolutions (channels, kernel, stride, groups), the same parameter count and mult-adds."""
    with _one_thread():
        _check_mobilenet(build, hidden)


def _check_mobilenet(build: Callable, hidden: bool) -> None:
    cases = HIDDEN_CASES if hidden else VISIBLE_CASES
    for alpha, classes, channels in cases:
        args = (alpha, classes, channels)
        call = describe_call("mobilenet_v1", args)
        model = call_student(build, *args, name="mobilenet_v1")
        if not isinstance(model, nn.Module):
            fail(f"{call} should return an nn.Module, got {type(model).__name__}.")
        reference = MobileNetV1(alpha, classes, channels)
        theirs, ours = _convs(model), _convs(reference)
        if len(theirs) != len(ours):
            fail(f"{call}: found {len(theirs)} Conv2d layers, expected {len(ours)} (one full 3x3 "
                 f"conv, then 13 blocks of a 3x3 depthwise and a 1x1 pointwise conv).")
        for i, (t, o) in enumerate(zip(theirs, ours)):
            what = (f"{call}: conv layer #{i} (in_channels, out_channels, kernel, stride, groups)")
            got = (t.in_channels, t.out_channels, t.kernel_size, t.stride, t.groups)
            want = (o.in_channels, o.out_channels, o.kernel_size, o.stride, o.groups)
            if got != want:
                hint = ""
                if t.out_channels != o.out_channels and alpha != 1:
                    hint = (f" Hint: with alpha={alpha} every layer has int(channels * alpha) "
                            "channels - the five 512-channel blocks and the first conv too.")
                elif t.stride != o.stride and i == len(ours) - 2:
                    hint = (" Hint: the last depthwise layer has stride 1 (the paper's Table 1 "
                            "misprints it as 2; the network must end at 7x7 for a 224 input).")
                elif t.groups != o.groups:
                    hint = " Hint: a depthwise conv has groups = its number of channels."
                fail(f"{what} is {got}, expected {want}.{hint}")
        with quiet():
            x = torch.randn(2, channels, 32, 32, generator=torch.Generator().manual_seed(0))
        model.eval()
        out = call_student(model, x, name=f"the model from {call}")
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, classes):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            fail(f"{call} on a (2, {channels}, 32, 32) input returned {shape}, expected logits of "
                 f"shape (2, {classes}).")
        n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        if n_bn != len(ours):
            fail(f"{call}: found {n_bn} BatchNorm2d layers, expected {len(ours)}: BatchNorm (and "
                 f"ReLU) follow every convolution.")
        expected = costs.count_params(reference)
        got = costs.count_params(model)
        if got != expected:
            hint = ""
            conv_bias = sum(c.bias.numel() for c in theirs if c.bias is not None)
            if conv_bias and got - conv_bias == expected:
                hint = " Hint: a conv followed by BatchNorm needs no bias (bias=False)."
            fail(f"{call}: {got:,} parameters, expected {expected:,}.{hint}")
        for resolution in (64,):
            want = sum(spec.macs for spec in layer_specs(alpha, resolution, classes,
                                                         in_channels=channels))
            got_macs = _student_macs(model, channels, resolution)
            if got_macs != want:
                fail(f"{call}: {got_macs:,} mult-adds at {resolution}x{resolution}, expected "
                     f"{want:,}. Check the strides and the global average pool.")
    passed(f"mobilenet_v1 matches the reference architecture for alpha, num_classes, in_channels "
           f"= {[c for c in cases]}{' (hidden)' if hidden else ''}.")


# --- part 2: the paper's numbers ---------------------------------------------------------------

def check_paper_costs(macs_m: Any, conv_macs_ratio: Any) -> None:
    """``macs_m``: {alpha: million mult-adds at 224} for alpha 1, .75, .5, .25 (paper Table 6);
    ``conv_macs_ratio``: ConvMobileNet's mult-adds / MobileNetV1's at alpha 1, 224 (Table 4)."""
    alphas = (1.0, 0.75, 0.5, 0.25)
    if not isinstance(macs_m, dict):
        fail(f"macs_m should be a dict {{alpha: million mult-adds}}, got {type(macs_m).__name__}.")
    missing = [a for a in alphas if a not in macs_m]
    if missing:
        fail(f"macs_m is missing the alpha value(s) {missing}; keys should be {list(alphas)}.")
    for alpha in alphas:
        exact = total_macs(alpha, 224) / 1e6
        got = as_number(macs_m[alpha], f"macs_m[{alpha}]")
        if math.isclose(got, 2 * exact, rel_tol=1e-3):
            fail(f"macs_m[{alpha}] = {got:.1f} is twice the mult-adds: FlopCounterMode counts "
                 "FLOPs (2 per multiply-add); costs.measure_macs already halves them.")
        if math.isclose(got, exact * 1e6, rel_tol=1e-3):
            fail(f"macs_m[{alpha}] = {got:.4g}: give millions (divide by 1e6).")
        if not math.isclose(got, exact, rel_tol=5e-4):
            fail(f"macs_m[{alpha}] = {got:.1f} M, expected {exact:.1f} M (the paper prints "
                 f"{round(exact)}). Measure your alpha={alpha} network at 224x224.")
    ratio = (total_macs(1.0, 224, full_conv=True) / total_macs(1.0, 224))
    got = as_number(conv_macs_ratio, "conv_macs_ratio")
    if math.isclose(got, 1 / ratio, rel_tol=1e-2):
        fail(f"conv_macs_ratio = {got:.3f} is upside down: divide ConvMobileNet's mult-adds by "
             "MobileNetV1's.")
    if not math.isclose(got, ratio, rel_tol=1e-2):
        fail(f"conv_macs_ratio = {got:.3f}, expected {ratio:.2f} (paper: 4866 M / 569 M).")
    passed(f"Table 6 mult-adds {[round(macs_m[a]) for a in alphas]} M and the "
           f"{ratio:.1f}x ratio of Table 4 match the paper.")


# --- part 3: a correct timing function ---------------------------------------------------------

class _Workload:
    """A callable whose n-th call sleeps ``durations(n)`` milliseconds; counts its calls."""

    def __init__(self, durations: Callable[[int], float]):
        self.durations, self.calls = durations, 0

    def __call__(self) -> None:
        time.sleep(self.durations(self.calls) / 1e3)
        self.calls += 1


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


def _time(time_ms: Callable, fn: Callable, warmup: int, repeats: int, device: str,
          label: str) -> float:
    call = f"time_ms({label}, warmup={warmup}, repeats={repeats}, device={device!r})"
    result = call_student(time_ms, fn, warmup=warmup, repeats=repeats, device=device,
                          name="time_ms")
    return as_number(result, call)


def check_time_ms(time_ms: Callable, hidden: bool = False) -> None:
    """``time_ms(fn, warmup, repeats, device)`` returns the median milliseconds of one call of
    ``fn()``, after ``warmup`` untimed calls, synchronizing on CUDA."""
    d = 12.0 if hidden else 8.0
    # 1. a steady workload: d ms per call, in milliseconds
    work = _Workload(lambda n: d)
    got = _time(time_ms, work, 2, 5, "cpu", f"<sleeps {d:g} ms>")
    if math.isclose(got, d / 1e3, rel_tol=0.5):
        fail(f"time_ms(<sleeps {d:g} ms>) returned {got:.4g}: that is seconds; return "
             "milliseconds (multiply by 1000).")
    if not 0.9 * d <= got <= 3 * d + 10:
        fail(f"time_ms(<a function that sleeps {d:g} ms>) returned {got:.3g} ms, expected about "
             f"{d:g} ms.")
    if work.calls < 7:
        fail(f"time_ms(fn, warmup=2, repeats=5) called fn {work.calls} times; it should make 2 "
             "untimed warm-up calls and then 5 timed calls.")
    # 2. a slow warm-up: the first `warmup` calls take 60 ms, later ones 4 ms
    slow = _Workload(lambda n: 60.0 if n < 3 else 4.0)
    got = _time(time_ms, slow, 3, 5, "cpu", "<first 3 calls slow>")
    if got > 20:
        fail(f"time_ms(<a function whose first 3 calls take 60 ms, then 4 ms>, warmup=3) returned "
             f"{got:.3g} ms, expected about 4 ms: run the warm-up calls first and do not time "
             "them (first calls pay for caches, lazy initialisation, autotuning, compilation).")
    # 3. outliers: every 4th call takes 40 ms, the others 3 ms -> median 3, mean ~ 12
    spiky = _Workload(lambda n: 40.0 if n % 4 == 1 else 3.0)
    got = _time(time_ms, spiky, 1, 8, "cpu", "<3 ms with 40 ms outliers>")
    if got > 8:
        fail(f"time_ms(<3 ms per call with a 40 ms outlier every 4th call>) returned {got:.3g} "
             "ms, expected about 3 ms: report the median of the timed calls, not the mean (one "
             "hiccup of the operating system should not move the result).")
    # 4. an asynchronous device: launches return at once, the work finishes later
    gpu = _FakeGPU()
    g = 15.0 if hidden else 10.0
    with _fake_cuda(gpu):
        got = _time(time_ms, lambda: gpu.launch(g), 2, 5, "cuda",
                    f"<launches {g:g} ms of GPU work>")
        gpu.synchronize()
    if got < 0.5 * g:
        fail(f"on CUDA, time_ms(<launches {g:g} ms of GPU work>, device='cuda') returned "
             f"{got:.3g} ms: a kernel launch returns before the kernel runs, so you timed the "
             "launch. Call torch.cuda.synchronize() before starting and before stopping the "
             "clock (or record torch.cuda.Event(enable_timing=True) pairs and synchronize "
             "before reading them).")
    if got > 3 * g + 10:
        fail(f"on CUDA, time_ms(<launches {g:g} ms of GPU work>, warmup=2, repeats=5) returned "
             f"{got:.3g} ms, expected about {g:g} ms: synchronize after the warm-up so queued "
             "warm-up work is not billed to the first timed call, and divide per call.")
    passed(f"time_ms: milliseconds, warm-up excluded, median, synchronized on (simulated) CUDA"
           f"{' (hidden)' if hidden else ''}.")


# --- part 4: measurements on this machine ------------------------------------------------------

def check_cpu_measurements(mobilenet_ms: Any, conv_mobilenet_ms: Any, measured_speedup: Any,
                           macs_ratio: Any, batch: int, resolution: int) -> None:
    """Numbers the student measured: plausible, self-consistent, and the MAC ratio exact."""
    a = as_number(mobilenet_ms, "mobilenet_ms")
    b = as_number(conv_mobilenet_ms, "conv_mobilenet_ms")
    if a <= 0 or b <= 0:
        fail(f"times must be positive milliseconds, got mobilenet_ms={a}, conv_mobilenet_ms={b}.")
    s = as_number(measured_speedup, "measured_speedup")
    if math.isclose(s, a / b, rel_tol=1e-2) and not math.isclose(a, b, rel_tol=1e-2):
        fail(f"measured_speedup = {s:.3g} is upside down: how many times longer ConvMobileNet "
             "takes, conv_mobilenet_ms / mobilenet_ms.")
    if not math.isclose(s, b / a, rel_tol=1e-2):
        fail(f"measured_speedup = {s:.3g} but conv_mobilenet_ms / mobilenet_ms = {b / a:.3g}.")
    with torch.device("meta"), quiet():
        x = torch.empty(1, 3, resolution, resolution)
        want = costs.measure_macs(ConvMobileNet().eval(), x) / costs.measure_macs(
            MobileNetV1().eval(), x)
    r = as_number(macs_ratio, "macs_ratio")
    if not math.isclose(r, want, rel_tol=5e-3):
        fail(f"macs_ratio = {r:.3g}, expected {want:.3g} (ConvMobileNet's mult-adds / "
             f"MobileNetV1's at {resolution}x{resolution}).")
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


def check_intensity(ai_depthwise: Any, ai_pointwise: Any) -> None:
    """FLOP/byte of a 3x3 depthwise and a 1x1 pointwise layer, 512 channels, 14x14, batch 1,
    fp32, minimal traffic (input, weights and output each moved once)."""
    for name, value, kind in (("ai_depthwise", ai_depthwise, "depthwise"),
                              ("ai_pointwise", ai_pointwise, "pointwise")):
        w = bench.layer_workload(kind, 512, 14, 1, 4)
        got = as_number(value, name)
        hints = {w.intensity / 2: "count FLOPs (2 per multiply-add), not MACs.",
                 w.intensity * 4: "count bytes: each fp32 number is 4 bytes.",
                 w.flops / (4 * 2 * 512 * 14 * 14): "the weights are read from memory too."}
        if not math.isclose(got, w.intensity, rel_tol=1e-2):
            hint = next((h for v, h in hints.items() if math.isclose(got, v, rel_tol=1e-2)), "")
            fail(f"{name} = {got:.4g} FLOP/byte, expected {w.intensity:.4g} ({w.flops:,} FLOPs / "
                 f"{w.bytes:,} bytes)." + (f" Hint: {hint}" if hint else ""))
    passed("arithmetic intensities match: the depthwise layer does far fewer FLOPs per byte.")


# --- part 5: on a GPU only ---------------------------------------------------------------------

def check_gpu_measurements(gpu_ms: Any, time_ms: Callable) -> None:
    """On a CUDA machine, ``gpu_ms`` = {"MobileNetV1": ms, "ConvMobileNet": ms} (batch 64, bf16
    autocast, channels_last, inference) must agree with a reference timing; elsewhere this part
    is skipped with full marks."""
    if not torch.cuda.is_available():
        passed("no GPU on this machine: this part is skipped (full marks). On a CUDA machine it "
               "compares your gpu_ms with a reference timing.")
        return
    if not isinstance(gpu_ms, dict) or set(gpu_ms) != {"MobileNetV1", "ConvMobileNet"}:
        fail("gpu_ms should be a dict with keys 'MobileNetV1' and 'ConvMobileNet' (milliseconds).")
    for name, cls in (("MobileNetV1", MobileNetV1), ("ConvMobileNet", ConvMobileNet)):
        got = as_number(gpu_ms[name], f"gpu_ms[{name!r}]")
        with quiet():
            model = cls().cuda().eval().to(memory_format=torch.channels_last)
            x = torch.randn(64, 3, 224, 224, device="cuda").contiguous(
                memory_format=torch.channels_last)
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                ref = benchmark(model, x, warmup=5, repeats=10).median_ms
        if not ref / 3 <= got <= ref * 3:
            fail(f"gpu_ms[{name!r}] = {got:.3g} ms, but a reference timing of the same setting "
                 f"took {ref:.3g} ms. Did you synchronize, warm up, and use batch 64?")
    passed(f"GPU timings agree with the reference: MobileNetV1 {gpu_ms['MobileNetV1']:.2f} ms, "
           f"ConvMobileNet {gpu_ms['ConvMobileNet']:.2f} ms.")


__all__ = ["CheckFailed", "check_mobilenet", "check_paper_costs", "check_time_ms",
           "check_cpu_measurements", "check_intensity", "check_gpu_measurements"]
