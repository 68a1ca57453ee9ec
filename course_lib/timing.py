"""Timing that is correct on CPU and on CUDA.

GPU work is asynchronous: a kernel launch returns before the kernel runs, so a wall clock around a
launch measures almost nothing. :func:`benchmark` therefore

* runs ``warmup`` untimed calls first (cuDNN autotuning, lazy init, caches, torch.compile),
* on CUDA, brackets every call with CUDA events and synchronizes before reading them,
* repeats the measurement and reports the median (robust to outliers) and the interquartile range.

``torch.utils.benchmark.Timer`` does the same job; :func:`benchmark_with_torch_timer` runs it for a
cross-check.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class TimingResult:
    """Times of individual calls in milliseconds, with summary statistics."""

    times_ms: tuple[float, ...]
    device: str
    warmup: int
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.times_ms)

    @property
    def min_ms(self) -> float:
        return min(self.times_ms)

    @property
    def iqr_ms(self) -> float:
        """Interquartile range: the spread of the middle half of the measurements."""
        if len(self.times_ms) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.times_ms, n=4, method="inclusive")
        return q3 - q1

    def throughput(self, items_per_call: int) -> float:
        """Items (e.g. images) per second at the median time."""
        return items_per_call / (self.median_ms / 1e3)

    def __str__(self) -> str:
        name = f"{self.label}: " if self.label else ""
        return (f"{name}median {self.median_ms:.3f} ms (IQR {self.iqr_ms:.3f} ms, "
                f"{len(self.times_ms)} runs after {self.warmup} warm-up) on {self.device}")


def _resolve_device(device: str | torch.device | None, args: tuple) -> torch.device:
    if device is not None:
        return torch.device(device)
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device
        if isinstance(a, torch.nn.Module):
            p = next(a.parameters(), None)
            if p is not None:
                return p.device
    return torch.device("cpu")


def benchmark(fn: Callable[..., Any], *args: Any, device: str | torch.device | None = None,
              warmup: int = 5, repeats: int = 30, label: str = "", **kwargs: Any) -> TimingResult:
    """Time ``fn(*args, **kwargs)``: ``warmup`` untimed calls, then ``repeats`` timed calls.

    ``device`` defaults to the device of the first tensor or module argument. On CUDA each call
    is timed by a pair of CUDA events recorded on the current stream; the events are read only
    after ``torch.cuda.synchronize()``.
    """
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {type(fn).__name__}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    dev = _resolve_device(device, args)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device is CUDA but torch.cuda.is_available() is False")

    for _ in range(warmup):
        fn(*args, **kwargs)

    times: list[float] = []
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)  # do not bill queued warm-up work to the first timed call
        pairs = []
        for _ in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*args, **kwargs)
            end.record()
            pairs.append((start, end))
        torch.cuda.synchronize(dev)
        times = [s.elapsed_time(e) for s, e in pairs]
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(*args, **kwargs)
            times.append((time.perf_counter() - t0) * 1e3)
    device_name = (torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu")
    return TimingResult(tuple(times), device_name, warmup, label)


def benchmark_with_torch_timer(fn: Callable[..., Any], *args: Any, min_run_time: float = 0.5,
                               **kwargs: Any) -> float:
    """Median milliseconds per call from ``torch.utils.benchmark.Timer`` (it synchronizes CUDA)."""
    from torch.utils import benchmark as tb

    timer = tb.Timer(stmt="fn(*args, **kwargs)", globals={"fn": fn, "args": args, "kwargs": kwargs})
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def interleaved(fns: dict[Any, Callable[[], Any]], rounds: int = 15, warmup: int = 2
                ) -> dict[Any, TimingResult]:
    """Time several callables fairly on a CPU: ``warmup`` untimed calls of each, then ``rounds``
    rounds of one timed call each, the order rotating every round, so a slow spell of the machine
    (another process, a frequency change) hits every callable alike instead of whichever ran
    then. Returns a :class:`TimingResult` per key (median, IQR: the spread to report)."""
    if not fns or not all(callable(fn) for fn in fns.values()):
        raise ValueError("fns must be a non-empty dict of callables")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    keys = list(fns)
    for key in keys:
        for _ in range(warmup):
            fns[key]()
    times: dict[Any, list[float]] = {key: [] for key in keys}
    for i in range(rounds):
        shift = i % len(keys)
        for key in keys[shift:] + keys[:shift]:
            start = time.perf_counter()
            fns[key]()
            times[key].append((time.perf_counter() - start) * 1e3)
    return {key: TimingResult(tuple(times[key]), "cpu", warmup, label=str(key),
                              extra={"interleaved_with": len(keys) - 1}) for key in keys}
