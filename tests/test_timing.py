"""course_lib.timing on CPU (and CUDA when present): it measures what it claims to."""
import time

import pytest
import torch

from course_lib.timing import TimingResult, benchmark, benchmark_with_torch_timer


def test_measures_a_known_sleep():
    result = benchmark(time.sleep, 0.01, warmup=1, repeats=5)
    assert 9.5 <= result.median_ms < 60  # sleep never returns early; generous upper bound
    assert len(result.times_ms) == 5 and result.device == "cpu"


def test_warmup_calls_are_not_timed():
    calls = []

    def first_call_slow():
        calls.append(1)
        time.sleep(0.05 if len(calls) == 1 else 0.0)

    result = benchmark(first_call_slow, warmup=1, repeats=5)
    assert len(calls) == 6
    assert result.median_ms < 25 and max(result.times_ms) < 25


def test_statistics():
    r = TimingResult((1.0, 2.0, 3.0, 4.0, 100.0), "cpu", 0)
    assert r.median_ms == 3.0 and r.min_ms == 1.0 and r.mean_ms == 22.0
    assert r.iqr_ms == 2.0  # inclusive quartiles 2.0 and 4.0
    assert r.throughput(30) == pytest.approx(10_000)
    assert "median 3.000 ms" in str(r)


def test_agrees_with_torch_utils_benchmark():
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    ours = benchmark(torch.mm, a, b, warmup=5, repeats=50).median_ms
    theirs = benchmark_with_torch_timer(torch.mm, a, b, min_run_time=0.2)
    assert 0.2 < ours / theirs < 5  # same order of magnitude on a noisy shared CPU


@pytest.mark.parametrize("kwargs, message", [({"repeats": 0}, "repeats"), ({"warmup": -1}, "warmup")])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        benchmark(lambda: None, **kwargs)
    with pytest.raises(ValueError, match="callable"):
        benchmark(42)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_events_time_the_kernel_not_the_launch():
    a = torch.randn(4096, 4096, device="cuda")
    result = benchmark(torch.mm, a, a, warmup=3, repeats=10)
    assert result.device != "cpu"
    assert result.median_ms > 0.05  # a 4096^3 matmul is never faster than this
