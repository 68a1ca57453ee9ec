"""Benchmark: "FLOPs are not latency". Times MobileNetV1 against ConvMobileNet (and timm's
``mobilenetv1_100`` when timm is installed) and single depthwise / pointwise / full 3x3 layers, and
writes a JSON file stamped with the device, torch version, date and CPU count.

    python -m course_lib.bench --out book/data/mobilenet_bench_gpu.json       # on a CUDA machine
    python -m course_lib.bench --out book/data/mobilenet_bench_cpu.json       # on a CPU
    python -m course_lib.bench --out /tmp/b.json --quick                      # tiny smoke run

Settings timed for each model: fp32 NCHW, bf16 autocast with channels_last, and torch.compile
(fp32); batch 1 and 256 on CUDA (1 and 4 on a CPU, where 256 would take minutes per call);
inference (no_grad, eval mode) and one SGD training step. torch.compile is on by default on CUDA
and off on a CPU (compiling one model takes minutes on a 2-core machine; ``--compile`` forces it).
Every measurement is a median over repeats after warm-up, by :func:`course_lib.timing.benchmark`
(CUDA events and synchronize on a GPU).

Fair comparisons: the networks compared in one setting (same mode, batch and task) are timed
INTERLEAVED - one call of each per round, the order rotating from round to round - so a burst of
load from another process slows them alike, and the ratio the book quotes (:func:`speedup`, the
median of the per-round time ratios) stays fair. The three single layers are interleaved the same
way within each mode.

A busy machine: the run records the 1-minute load average before and after. A measurement run
(not ``--quick``) made while the 1-minute load average exceeds the cores available to this process
is REFUSED (:class:`BusyMachineError`, exit status 2) unless ``--allow-busy`` is given; then the
file says so in ``meta["busy"]`` and in a note, and the book prints a warning beside its numbers.

Single layers are 3x3 depthwise, 1x1 pointwise and full 3x3 convs on a 512-channel 14x14 map (the
five middle blocks of MobileNetV1), with achieved bytes/s and FLOP/s computed from the minimal
memory traffic of :func:`layer_workload` (read input and weights once, write output once).

The book renders the JSON; nothing here is run when the book builds.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from course_lib import _validate as v
from course_lib import costs
from course_lib.mobilenet import ConvMobileNet, MobileNetV1
from course_lib.tables import Table
from course_lib.timing import TimingResult, benchmark

LAYER_KINDS = ("depthwise", "pointwise", "full3x3")
BASELINE = "ConvMobileNet"  # the network every other one is compared with (the paper's Table 4)
MODES = ("fp32_nchw", "bf16_channels_last", "compile_fp32")

# Spec-sheet figures of an NVIDIA H100 SXM5 (NVIDIA's datasheet): ASSUMPTIONS used to draw a
# roofline, not measurements. Dense tensor-core rates (the datasheet's larger numbers assume
# 2:4 sparsity).
H100_SPEC = {
    "name": "NVIDIA H100 SXM5 (datasheet figures, assumed - not measured)",
    "memory_bytes_per_s": 3.35e12,     # HBM3
    "fp32_flops": 67e12,               # CUDA cores, no tensor cores
    "tf32_tensor_flops": 494.7e12,     # dense
    "bf16_tensor_flops": 989.4e12,     # dense
}


@dataclass(frozen=True)
class Workload:
    """Minimal work of one conv layer: FLOPs (2 per MAC) and bytes if every tensor is read or
    written exactly once; intensity = FLOPs / byte (the roofline's x axis)."""

    kind: str
    channels: int
    size: int
    batch: int
    dtype_bytes: int
    flops: int
    bytes: int

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes


def layer_workload(kind: str, channels: int = 512, size: int = 14, batch: int = 1,
                   dtype_bytes: int = 4) -> Workload:
    """FLOPs and minimal bytes of a stride-1, "same"-padded layer with ``channels`` in and out on a
    ``size`` x ``size`` map: ``depthwise`` (3x3, groups=C), ``pointwise`` (1x1) or ``full3x3``."""
    if kind not in LAYER_KINDS:
        raise ValueError(f"kind must be one of {LAYER_KINDS}, got {kind!r}")
    for value, name in ((channels, "channels"), (size, "size"), (batch, "batch"),
                        (dtype_bytes, "dtype_bytes")):
        v.positive_int(value, name)
    k, groups = {"depthwise": (3, channels), "pointwise": (1, 1), "full3x3": (3, 1)}[kind]
    macs = costs.conv2d_macs(channels, channels, k, size, groups=groups, batch_size=batch)
    weights = costs.conv2d_params(channels, channels, k, groups=groups, bias=False)
    activations = 2 * batch * channels * size * size  # input read + output written
    return Workload(kind, channels, size, batch, dtype_bytes, 2 * macs,
                    dtype_bytes * (activations + weights))


def roofline(intensity: float, peak_flops: float, memory_bytes_per_s: float) -> float:
    """Attainable FLOP/s: min(peak compute, intensity x memory bandwidth)."""
    if intensity <= 0 or peak_flops <= 0 or memory_bytes_per_s <= 0:
        raise ValueError("intensity, peak_flops and memory_bytes_per_s must be > 0")
    return min(peak_flops, intensity * memory_bytes_per_s)


def make_layer(kind: str, channels: int) -> nn.Module:
    if kind not in LAYER_KINDS:
        raise ValueError(f"kind must be one of {LAYER_KINDS}, got {kind!r}")
    if kind == "depthwise":
        return nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
    if kind == "pointwise":
        return nn.Conv2d(channels, channels, 1, bias=False)
    return nn.Conv2d(channels, channels, 3, padding=1, bias=False)


# --- machine load -----------------------------------------------------------------------------

class BusyMachineError(RuntimeError):
    """A measurement was asked for while the machine was busier than its cores."""


@dataclass(frozen=True)
class MachineLoad:
    """The 1-, 5- and 15-minute load averages (None where the OS has none) and the cores this
    process may use. Busy = more runnable processes (1-minute average) than cores: then timings
    measure the competition, not the code."""

    averages: tuple[float, float, float] | None
    cores: int

    @property
    def busy(self) -> bool:
        return self.averages is not None and self.averages[0] > self.cores

    def describe(self) -> str:
        if self.averages is None:
            return f"load average unknown on this OS ({self.cores} cores)"
        one, five, fifteen = self.averages
        return (f"1-minute load average {one:.2f} (5 min {five:.2f}, 15 min {fifteen:.2f}) "
                f"on {self.cores} cores")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's share), not the
    machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_load() -> MachineLoad:
    averages = tuple(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return MachineLoad(averages, available_cores())


def check_load(load: MachineLoad, allow_busy: bool = False, quick: bool = False) -> str | None:
    """None on a quiet machine. On a busy one: raise :class:`BusyMachineError` for a measurement,
    or return the warning to record when the caller allowed it (``allow_busy``) or when the run is
    only a ``quick`` smoke test."""
    if not load.busy:
        return None
    warning = (f"BUSY MACHINE: {load.describe()} when the benchmark started. Timings include "
               "waiting for other processes; only ratios of interleaved measurements are "
               "meaningful, and even those are noisy.")
    if allow_busy or quick:
        return warning
    raise BusyMachineError(
        f"refusing to benchmark: {load.describe()}, so the timings would measure the other "
        "processes, not the code. Wait for a quiet machine (check `uptime`), stop what is "
        "running, or pass --allow-busy to measure anyway with a loud warning in the results.")


# --- configuration ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    device: str
    resolution: int
    batches: tuple[int, ...]
    layer_channels: int
    layer_size: int
    layer_batch: int
    target_s: float        # wall time aimed at per measurement (sets the repeats)
    max_repeats: int
    warmup: int
    compile: bool
    quick: bool
    threads: int | None = None  # torch.set_num_threads on a CPU; None keeps torch's default


def default_config(device: str, quick: bool = False, compile: bool | None = None,
                   threads: int | None = None) -> Config:
    cuda = device.startswith("cuda")
    use_compile = cuda if compile is None else compile
    if threads is not None:
        v.positive_int(threads, "threads")
    if quick:  # one thread: a smoke test must not fight other processes for cores
        return Config(device, 64, (1, 2), 16, 8, 2, 0.01, 3, 1, use_compile, True,
                      threads or 1)
    if cuda:
        return Config(device, 224, (1, 256), 512, 14, 256, 0.5, 50, 10, use_compile, False,
                      threads)
    # CPU: warm-up is the probe call of _timed (one untimed call); batch 4, not 256.
    return Config(device, 224, (1, 4), 512, 14, 8, 1.0, 10, 0, use_compile, False, threads)


def _autocast(device: str, bf16: bool):
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def _summary(times_ms: list[float], warmup: int) -> dict[str, Any]:
    result = TimingResult(tuple(times_ms), "", warmup)
    return {"median_ms": result.median_ms, "iqr_ms": result.iqr_ms, "repeats": len(times_ms),
            "warmup": warmup, "times_ms": list(times_ms)}


def time_interleaved(fns: dict[str, Callable[[], Any]], cfg: Config) -> dict[str, dict[str, Any]]:
    """Time several callables fairly: warm each up, probe each once to choose the repeats, then
    run ROUNDS of one timed call each, rotating which goes first. Returns per name the median,
    IQR, repeats and the per-round times (``times_ms[i]`` of every name is from round ``i``)."""
    if not fns:
        raise ValueError("time_interleaved needs at least one callable")
    for fn in fns.values():
        for _ in range(cfg.warmup):
            fn()
    probe_s = sum(benchmark(fn, device=cfg.device, warmup=0, repeats=1).median_ms / 1e3
                  for fn in fns.values())
    repeats = int(max(3, min(cfg.max_repeats, len(fns) * cfg.target_s / max(probe_s, 1e-6))))
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(benchmark(fns[name], device=cfg.device, warmup=0,
                                         repeats=1).times_ms[0])
    return {name: {**_summary(times[name], cfg.warmup + 1), "interleaved_with": len(names) - 1}
            for name in names}  # warmup + 1: the probe call


def paired_ratio(slow_ms: list[float], fast_ms: list[float]) -> float:
    """Median over rounds of slow/fast: how many times faster ``fast`` is, from interleaved
    rounds (round i of one against round i of the other)."""
    if len(slow_ms) != len(fast_ms) or not slow_ms:
        raise ValueError(f"need the same number (> 0) of rounds for both, got {len(slow_ms)} "
                         f"and {len(fast_ms)}")
    return statistics.median(s / f for s, f in zip(slow_ms, fast_ms))


def _model_factories(quick: bool = False) -> dict[str, Callable[[], nn.Module]]:
    if quick:  # a smoke test: thin networks (alpha 0.25)
        return {"MobileNetV1 alpha 0.25": lambda: MobileNetV1(alpha=0.25),
                "ConvMobileNet alpha 0.25": lambda: ConvMobileNet(alpha=0.25)}
    factories: dict[str, Callable[[], nn.Module]] = {"MobileNetV1": MobileNetV1,
                                                     "ConvMobileNet": ConvMobileNet}
    try:
        import timm  # noqa: F401  (optional)

        factories["timm mobilenetv1_100"] = lambda: timm.create_model("mobilenetv1_100",
                                                                      pretrained=False)
    except ImportError:
        pass
    return factories

def prepare_model(factory: Callable[[], nn.Module], cfg: Config, mode: str, batch: int,
                  task: str) -> tuple[Callable[[], Any], dict[str, Any]]:
    """The callable that runs one network once in a setting (``task`` is "inference" or
    "train_step"), and what its preparation recorded (compile time)."""
    torch.manual_seed(0)
    bf16 = mode == "bf16_channels_last"
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    model = factory().to(cfg.device, memory_format=fmt)
    x = torch.randn(batch, 3, cfg.resolution, cfg.resolution, device=cfg.device)
    x = x.contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (batch,), device=cfg.device)
    run_model = torch.compile(model) if mode == "compile_fp32" else model
    if task == "inference":
        model.eval()

        def fn() -> Any:
            with torch.no_grad(), _autocast(cfg.device, bf16):
                return run_model(x)
    else:
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def fn() -> Any:
            optimizer.zero_grad(set_to_none=True)
            with _autocast(cfg.device, bf16):
                loss = F.cross_entropy(run_model(x), y)
            loss.backward()
            optimizer.step()
            return loss
    extra: dict[str, Any] = {}
    if mode == "compile_fp32":
        start = time.perf_counter()
        fn()  # the first call compiles; report how long it took
        extra["compile_s"] = time.perf_counter() - start
    return fn, extra


def bench_models(factories: dict[str, Callable[[], nn.Module]], cfg: Config, mode: str,
                 batch: int, task: str, log: Callable[[str], None] = print
                 ) -> list[dict[str, Any]]:
    """Every network in one setting, timed interleaved; a network that fails to build or run
    (e.g. no compiler for torch.compile) gets a record with its error."""
    records: dict[str, dict[str, Any]] = {}
    fns: dict[str, Callable[[], Any]] = {}
    for name, factory in factories.items():
        records[name] = {"model": name, "mode": mode, "batch": batch, "task": task,
                         "resolution": cfg.resolution}
        try:
            fns[name], extra = prepare_model(factory, cfg, mode, batch, task)
            fns[name]()  # fail here, not in the middle of the rounds
            records[name].update(extra)
        except Exception as exc:
            records[name]["error"] = f"{type(exc).__name__}: {exc}"
            fns.pop(name, None)
            log(f"{name} {mode} batch {batch} {task}: FAILED {exc}")
    for name, timing in (time_interleaved(fns, cfg) if fns else {}).items():
        rec = records[name]
        rec.update(timing)
        rec["images_per_s"] = batch / (rec["median_ms"] / 1e3)
        log(f"{name:22s} {mode:19s} batch {batch:3d} {task:10s} {rec['median_ms']:10.2f} ms "
            f"{rec['images_per_s']:10.1f} img/s")
    return list(records.values())


def prepare_layer(kind: str, cfg: Config, mode: str) -> Callable[[], Any]:
    """One single-layer forward pass; ``mode`` is fp32_nchw, fp32_channels_last or
    bf16_channels_last."""
    bf16 = mode.startswith("bf16")
    fmt = torch.channels_last if mode.endswith("channels_last") else torch.contiguous_format
    dtype = torch.bfloat16 if bf16 else torch.float32
    torch.manual_seed(0)
    layer = make_layer(kind, cfg.layer_channels).to(cfg.device, dtype=dtype, memory_format=fmt)
    x = torch.randn(cfg.layer_batch, cfg.layer_channels, cfg.layer_size, cfg.layer_size,
                    device=cfg.device, dtype=dtype).contiguous(memory_format=fmt)

    def fn() -> Any:
        with torch.no_grad():
            return layer(x)
    return fn


def bench_layers(cfg: Config, mode: str, log: Callable[[str], None] = print
                 ) -> list[dict[str, Any]]:
    """The three layer kinds in one mode, timed interleaved, with achieved FLOP/s and bytes/s."""
    timings = time_interleaved({kind: prepare_layer(kind, cfg, mode) for kind in LAYER_KINDS},
                               cfg)
    records = []
    for kind in LAYER_KINDS:
        record: dict[str, Any] = {"layer": kind, "mode": mode, "batch": cfg.layer_batch,
                                  "channels": cfg.layer_channels, "size": cfg.layer_size,
                                  **timings[kind]}
        work = layer_workload(kind, cfg.layer_channels, cfg.layer_size, cfg.layer_batch,
                              2 if mode.startswith("bf16") else 4)
        seconds = record["median_ms"] / 1e3
        record.update(flops=work.flops, bytes=work.bytes, intensity=work.intensity,
                      achieved_flops_per_s=work.flops / seconds,
                      achieved_bytes_per_s=work.bytes / seconds)
        log(f"{kind:10s} {mode:19s} {record['median_ms']:9.3f} ms  "
            f"{record['achieved_flops_per_s'] / 1e9:9.1f} GFLOP/s  "
            f"{record['achieved_bytes_per_s'] / 1e9:8.2f} GB/s")
        records.append(record)
    return records


def comparisons(models: list[dict[str, Any]], baseline: str = BASELINE) -> list[dict[str, Any]]:
    """For every setting, how many times faster each network runs than ``baseline``: the median of
    the per-round time ratios of the interleaved measurement."""
    out = []
    for base in models:  # startswith: --quick names its thin networks "... alpha 0.25"
        if not base["model"].startswith(baseline) or "times_ms" not in base:
            continue
        for other in models:
            same = all(other[k] == base[k] for k in ("mode", "batch", "task"))
            if same and other is not base and "times_ms" in other:
                out.append({"model": other["model"], "baseline": base["model"],
                            "mode": base["mode"], "batch": base["batch"], "task": base["task"],
                            "speedup": paired_ratio(base["times_ms"], other["times_ms"])})
    return out


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:  # Linux: the CPU's marketing name
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"

def run(cfg: Config, log: Callable[[str], None] = print,
        factories: dict[str, Callable[[], nn.Module]] | None = None,
        allow_busy: bool = False) -> dict[str, Any]:
    """Every measurement of the benchmark as one JSON-ready dict. ``factories`` (name -> model
    builder) replaces the default networks, e.g. for a test. Raises :class:`BusyMachineError`
    before measuring anything when the machine is busy (see :func:`check_load`)."""
    load_before = machine_load()
    busy_warning = check_load(load_before, allow_busy=allow_busy, quick=cfg.quick)
    cpu = not cfg.device.startswith("cuda")
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    notes = [busy_warning] if busy_warning else []
    if cpu and not cfg.quick:
        notes.append(f"CPU run: batches {cfg.batches} instead of (1, 256) and single layers at "
                     f"batch {cfg.layer_batch}, to keep the run to a few minutes.")
    if not cfg.compile:
        notes.append("torch.compile skipped (off by default on a CPU, where compiling one model "
                     "takes minutes; pass --compile to include it).")
    custom = factories is not None
    factories = factories if custom else _model_factories(cfg.quick)
    if cfg.quick:
        notes.append("--quick: a smoke test at alpha 0.25 and tiny sizes, not a measurement.")
    elif not custom and "timm mobilenetv1_100" not in factories:
        notes.append("timm is not installed: its mobilenetv1_100 was not timed.")
    meta = {
        "device": cfg.device, "device_name": device_name(cfg.device),
        "torch_version": torch.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(), "available_cores": load_before.cores,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "quick": cfg.quick, "notes": notes,
        "config": asdict(cfg), "interleaved": True, "allow_busy": allow_busy,
        # The 1-, 5-, 15-minute load averages when the run started (and, below, ended).
        "load_average": load_before.averages,
    }
    start = time.perf_counter()
    meta["macs_per_image"] = {}
    for name, factory in factories.items():
        try:
            with torch.device("meta"):  # shapes only: counting needs no real compute
                meta["macs_per_image"][name] = costs.measure_macs(
                    factory().eval(), torch.empty(1, 3, cfg.resolution, cfg.resolution))
        except Exception as exc:  # a third-party model that cannot be built on meta
            meta["macs_per_image"][name] = None
            log(f"{name}: could not count mult-adds on the meta device ({exc})")
    models = []
    modes = [m for m in MODES if cfg.compile or m != "compile_fp32"]
    for mode in modes:
        for batch in cfg.batches:
            for task in ("inference", "train_step"):
                models += bench_models(factories, cfg, mode, batch, task, log)
    layers = [r for mode in ("fp32_nchw", "fp32_channels_last", "bf16_channels_last")
              for r in bench_layers(cfg, mode, log)]
    meta["total_seconds"] = time.perf_counter() - start
    load_after = machine_load()
    meta["load_average_after"] = load_after.averages
    meta["busy"] = load_before.busy or load_after.busy
    if load_after.busy and not load_before.busy:
        notes.append(f"BUSY MACHINE: {load_after.describe()} when the benchmark ended; the "
                     "machine became busy during the run, so read its timings with care.")
    return {"meta": meta, "models": models, "layers": layers,
            "comparisons": comparisons(models)}



def load(path: str | os.PathLike) -> dict[str, Any] | None:
    """Read a results file; None when it does not exist (e.g. no GPU run committed yet)."""
    path = Path(path)
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if not {"meta", "models", "layers"} <= set(data):
        raise ValueError(f"{path} is not a course_lib.bench results file")
    return data


def model_table(results: dict[str, Any], task: str | None = None, caption: str = "") -> Table:
    """Whole-network timings of a results file (errors shown as such)."""
    rows = []
    for r in results["models"]:
        if task is not None and r["task"] != task:
            continue
        if "error" in r:
            rows.append((r["model"], r["mode"], str(r["batch"]), r["task"], "failed", ""))
        else:
            rows.append((r["model"], r["mode"], str(r["batch"]), r["task"],
                         f"{r['median_ms']:,.2f}", f"{r['images_per_s']:,.1f}"))
    return Table(("model", "mode", "batch", "task", "median ms", "images/s"), rows, caption,
                 left=(1, 3))


def layer_table(results: dict[str, Any], caption: str = "") -> Table:
    """Single-layer timings with achieved FLOP/s and bytes/s."""
    rows = [(r["layer"], r["mode"], str(r["batch"]), f"{r['median_ms']:,.3f}",
             f"{r['intensity']:,.1f}", f"{r['achieved_flops_per_s'] / 1e9:,.1f}",
             f"{r['achieved_bytes_per_s'] / 1e9:,.2f}") for r in results["layers"]]
    return Table(("layer", "mode", "batch", "median ms", "FLOP/byte", "GFLOP/s", "GB/s"), rows,
                 caption, left=(1,))


# --- the reference GPU measurements (made before this benchmark existed) -------------------------

REFERENCE_GPU_FILE = "h100_reference_2026-11-22.json"
_REFERENCE_KEYS = {"what", "device", "software", "method", "models_batch256_224px_images_per_s",
                   "single_layers_bf16_batch256"}


def load_reference(path: str | os.PathLike) -> dict[str, Any]:
    """The reference H100 measurements (``book/data/h100_reference_2026-11-22.json``): one run
    of inference and training throughput at batch 256 and single-layer timings, with their
    method. Rendered by the book, labelled with this provenance, until a GPU run of this benchmark
    is committed."""
    data = json.loads(Path(path).read_text())
    missing = _REFERENCE_KEYS - set(data)
    if missing:
        raise ValueError(f"{path} is not the reference GPU file: it lacks {sorted(missing)}")
    return data


def reference_provenance(ref: dict[str, Any]) -> str:
    """Where, when and how the reference numbers were measured, from the file itself."""
    soft = ", ".join(f"{k} {v}" for k, v in ref["software"].items())
    return f"{ref['device']} ({soft}). Method: {ref['method']}. {ref['what']}"


def reference_models(ref: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{short model name: {column: images/s}} from the reference file; the short name is the
    part before " (" ("MobileNetV1", "timm mobilenetv1_100", "ConvMobileNet")."""
    table = ref["models_batch256_224px_images_per_s"]
    return {name.split(" (")[0]: dict(zip(table["columns"], values))
            for name, values in table.items() if name != "columns"}


def reference_model_table(ref: dict[str, Any], caption: str = "") -> Table:
    table = ref["models_batch256_224px_images_per_s"]
    rows = [(name, *(f"{v:,}" for v in values)) for name, values in table.items()
            if name != "columns"]
    return Table(("model (images/s, batch 256, 224 px)", *table["columns"]), rows, caption)


def reference_layers(ref: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per (shape, layout) row of the single-layer bf16 table."""
    out = []
    for shape, layout, dw, pw, full in ref["single_layers_bf16_batch256"]["rows"]:
        out.append({"shape": shape, "layout": layout, "depthwise_us": dw[0],
                    "depthwise_tflops": dw[1], "depthwise_gbps": dw[2], "pointwise_us": pw[0],
                    "pointwise_tflops": pw[1], "full3x3_us": full[0], "full3x3_tflops": full[1]})
    return out


def reference_layer_table(ref: dict[str, Any], caption: str = "") -> Table:
    rows = [(r["shape"], r["layout"], f"{r['depthwise_us']:,.1f}", f"{r['depthwise_tflops']:.1f}",
             f"{r['depthwise_gbps']:,}", f"{r['pointwise_us']:,.1f}",
             f"{r['pointwise_tflops']:.1f}", f"{r['full3x3_us']:,.1f}",
             f"{r['full3x3_tflops']:.1f}") for r in reference_layers(ref)]
    return Table(("shape", "layout", "depthwise us", "TFLOP/s", "GB/s", "pointwise us",
                  "TFLOP/s", "full 3x3 us", "TFLOP/s"), rows, caption, left=(1,))


def find(records: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    """The one record whose fields equal ``match`` (e.g. model=..., mode=..., batch=...)."""
    hits = [r for r in records if all(r.get(k) == val for k, val in match.items())]
    if len(hits) != 1:
        raise ValueError(f"expected one record matching {match}, found {len(hits)}")
    return hits[0]


def speedup(results: dict[str, Any], mode: str, batch: int, task: str,
            model: str = "MobileNetV1", baseline: str = BASELINE) -> float:
    """How many times faster ``model`` runs than ``baseline`` in one setting. From the interleaved
    per-round ratio when the file has one (``comparisons``); files written before interleaving
    give the ratio of the two medians."""
    for c in results.get("comparisons", []):
        if (c["model"], c["baseline"], c["mode"], c["batch"], c["task"]) == (
                model, baseline, mode, batch, task):
            return c["speedup"]
    rec = {m: find(results["models"], model=m, mode=mode, batch=batch, task=task)
           for m in (model, baseline)}
    return rec[model]["images_per_s"] / rec[baseline]["images_per_s"]


def load_warning(results: dict[str, Any]) -> str | None:
    """A warning to print beside a results file measured on a busy machine (None if it was
    quiet). Works for files written before the load check existed: their 1-minute load average
    is compared with their CPU count."""
    meta = results["meta"]
    cores = meta.get("available_cores") or meta.get("cpu_count")
    before, after = meta.get("load_average"), meta.get("load_average_after")
    busy = meta.get("busy")
    if busy is None:  # an older file: judge it by the load it recorded
        busy = bool(before and cores and before[0] > cores)
    if not busy:
        return None
    loads = " and ".join(f"{a[0]:.1f}" for a in (before, after) if a)
    return (f"WARNING: measured on a busy machine (1-minute load average {loads} on {cores} "
            "cores): the absolute times are inflated by waiting for other processes; only "
            "the ratios are worth reading" + ("." if meta.get("interleaved") else
                                              ", and these were not measured interleaved."))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.bench", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and few repeats (a smoke test, not a measurement)")
    parser.add_argument("--device", default=None,
                        help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--compile", dest="compile", action="store_true", default=None,
                        help="include torch.compile (default on CUDA only)")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's; 1 in --quick). On a "
                             "shared machine, oversubscribed threads make CPU timings much worse")
    parser.add_argument("--allow-busy", action="store_true",
                        help="measure even when the 1-minute load average exceeds the cores "
                             "(the results then carry a loud warning); refused otherwise")
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda, but torch.cuda.is_available() is False")
    cfg = default_config(device, quick=args.quick, compile=args.compile,
                         threads=args.threads)
    try:
        results = run(cfg, log=lambda line: print(line, flush=True), allow_busy=args.allow_busy)
    except BusyMachineError as exc:
        print(f"python -m course_lib.bench: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out} ({results['meta']['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
