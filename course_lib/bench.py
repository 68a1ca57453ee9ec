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
from course_lib.timing import benchmark

LAYER_KINDS = ("depthwise", "pointwise", "full3x3")
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


def _timed(fn: Callable[[], Any], cfg: Config, label: str) -> dict[str, float]:
    """Warm up, probe once to choose the repeats, then time with course_lib.timing.benchmark."""
    for _ in range(cfg.warmup):
        fn()
    probe = benchmark(fn, device=cfg.device, warmup=0, repeats=1).median_ms / 1e3
    repeats = int(max(3, min(cfg.max_repeats, cfg.target_s / max(probe, 1e-6))))
    result = benchmark(fn, device=cfg.device, warmup=0, repeats=repeats, label=label)
    return {"median_ms": result.median_ms, "iqr_ms": result.iqr_ms, "repeats": repeats,
            "warmup": cfg.warmup + 1}  # + 1: the probe call


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


def bench_model(name: str, factory: Callable[[], nn.Module], cfg: Config, mode: str,
                batch: int, task: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """One measurement of a whole network: ``task`` is "inference" or "train_step"."""
    torch.manual_seed(0)
    bf16 = mode == "bf16_channels_last"
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    model = factory().to(cfg.device, memory_format=fmt)
    x = torch.randn(batch, 3, cfg.resolution, cfg.resolution, device=cfg.device)
    x = x.contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (batch,), device=cfg.device)
    run_model = model
    record: dict[str, Any] = {"model": name, "mode": mode, "batch": batch, "task": task,
                              "resolution": cfg.resolution}
    if mode == "compile_fp32":
        run_model = torch.compile(model)
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
    start = time.perf_counter()
    if mode == "compile_fp32":
        fn()  # the first call compiles; report how long it took
        record["compile_s"] = time.perf_counter() - start
    record.update(_timed(fn, cfg, f"{name} {mode} b{batch} {task}"))
    record["images_per_s"] = batch / (record["median_ms"] / 1e3)
    log(f"{name:22s} {mode:19s} batch {batch:3d} {task:10s} {record['median_ms']:10.2f} ms "
        f"{record['images_per_s']:10.1f} img/s")
    return record


def bench_layer(kind: str, cfg: Config, mode: str, log: Callable[[str], None] = print
                ) -> dict[str, Any]:
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

    record: dict[str, Any] = {"layer": kind, "mode": mode, "batch": cfg.layer_batch,
                              "channels": cfg.layer_channels, "size": cfg.layer_size}
    record.update(_timed(fn, cfg, f"{kind} {mode}"))
    work = layer_workload(kind, cfg.layer_channels, cfg.layer_size, cfg.layer_batch,
                          2 if bf16 else 4)
    seconds = record["median_ms"] / 1e3
    record.update(flops=work.flops, bytes=work.bytes, intensity=work.intensity,
                  achieved_flops_per_s=work.flops / seconds,
                  achieved_bytes_per_s=work.bytes / seconds)
    log(f"{kind:10s} {mode:19s} {record['median_ms']:9.3f} ms  "
        f"{record['achieved_flops_per_s'] / 1e9:9.1f} GFLOP/s  "
        f"{record['achieved_bytes_per_s'] / 1e9:8.2f} GB/s")
    return record


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
        factories: dict[str, Callable[[], nn.Module]] | None = None) -> dict[str, Any]:
    """Every measurement of the benchmark as one JSON-ready dict. ``factories`` (name -> model
    builder) replaces the default networks, e.g. for a test."""
    cpu = not cfg.device.startswith("cuda")
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    notes = []
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
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "quick": cfg.quick, "notes": notes,
        "config": asdict(cfg),
    }
    if cpu:
        meta["load_average"] = os.getloadavg() if hasattr(os, "getloadavg") else None
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
    for name, factory in factories.items():
        for mode in modes:
            for batch in cfg.batches:
                for task in ("inference", "train_step"):
                    try:
                        models.append(bench_model(name, factory, cfg, mode, batch, task, log))
                    except Exception as exc:  # e.g. no compiler for torch.compile: record why
                        models.append({"model": name, "mode": mode, "batch": batch,
                                       "task": task, "error": f"{type(exc).__name__}: {exc}"})
                        log(f"{name} {mode} batch {batch} {task}: FAILED {exc}")
    layers = [bench_layer(kind, cfg, mode, log) for kind in LAYER_KINDS
              for mode in ("fp32_nchw", "fp32_channels_last", "bf16_channels_last")]
    meta["total_seconds"] = time.perf_counter() - start
    return {"meta": meta, "models": models, "layers": layers}


def load(path: str | os.PathLike) -> dict[str, Any] | None:
    """Read a results file; None when it does not exist (e.g. no GPU run committed yet)."""
    path = Path(path)
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if not {"meta", "models", "layers"} <= set(data):
        raise ValueError(f"{path} is not a course_lib.bench results file")
    return data


def _text_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths))) for r in table]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def model_table(results: dict[str, Any], task: str | None = None) -> str:
    """Whole-network timings of a results file as a text table (errors shown as such)."""
    rows = []
    for r in results["models"]:
        if task is not None and r["task"] != task:
            continue
        if "error" in r:
            rows.append((r["model"], r["mode"], str(r["batch"]), r["task"], "failed", ""))
        else:
            rows.append((r["model"], r["mode"], str(r["batch"]), r["task"],
                         f"{r['median_ms']:,.2f}", f"{r['images_per_s']:,.1f}"))
    return _text_table(("model", "mode", "batch", "task", "median ms", "images/s"), rows)


def layer_table(results: dict[str, Any]) -> str:
    """Single-layer timings with achieved FLOP/s and bytes/s."""
    rows = [(r["layer"], r["mode"], str(r["batch"]), f"{r['median_ms']:,.3f}",
             f"{r['intensity']:,.1f}", f"{r['achieved_flops_per_s'] / 1e9:,.1f}",
             f"{r['achieved_bytes_per_s'] / 1e9:,.2f}") for r in results["layers"]]
    return _text_table(("layer", "mode", "batch", "median ms", "FLOP/byte", "GFLOP/s", "GB/s"),
                       rows)


def find(records: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    """The one record whose fields equal ``match`` (e.g. model=..., mode=..., batch=...)."""
    hits = [r for r in records if all(r.get(k) == val for k, val in match.items())]
    if len(hits) != 1:
        raise ValueError(f"expected one record matching {match}, found {len(hits)}")
    return hits[0]


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
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda, but torch.cuda.is_available() is False")
    cfg = default_config(device, quick=args.quick, compile=args.compile,
                         threads=args.threads)
    results = run(cfg, log=lambda line: print(line, flush=True))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out} ({results['meta']['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
