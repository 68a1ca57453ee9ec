"""The benchmark: workload arithmetic against measured counts, the CLI in --quick mode (tiny sizes),
and the helpers the book uses to render a results file."""
import dataclasses
import json
import time

import pytest
import torch
from torch import nn

from course_lib import bench, costs, mobilenet


@pytest.mark.parametrize("kind", bench.LAYER_KINDS)
def test_layer_workload_matches_the_real_layer(kind):
    layer = bench.make_layer(kind, 64)
    x = torch.zeros(2, 64, 10, 10)
    work = bench.layer_workload(kind, 64, 10, 2, dtype_bytes=4)
    assert work.flops == 2 * costs.measure_macs(layer, x)  # FLOPs = 2 x MACs
    with torch.no_grad():
        out = layer(x)
    moved = x.numel() + out.numel() + sum(p.numel() for p in layer.parameters())
    assert work.bytes == 4 * moved
    assert work.intensity == work.flops / work.bytes


def test_intensity_ordering_and_bf16_doubles_it():
    ai = {k: bench.layer_workload(k, 512, 14, 256).intensity for k in bench.LAYER_KINDS}
    assert ai["depthwise"] < ai["pointwise"] < ai["full3x3"]
    # 9 MACs (18 FLOPs) per input value, over ~8 bytes moved per value (read + write, fp32)
    assert ai["depthwise"] == pytest.approx(18 / 8, rel=0.01)
    half = bench.layer_workload("depthwise", 512, 14, 256, dtype_bytes=2).intensity
    assert half == pytest.approx(2 * ai["depthwise"])


def test_roofline():
    spec = bench.H100_SPEC
    ridge = spec["fp32_flops"] / spec["memory_bytes_per_s"]
    assert bench.roofline(ridge / 10, spec["fp32_flops"], spec["memory_bytes_per_s"]) == \
        pytest.approx(spec["fp32_flops"] / 10)
    assert bench.roofline(ridge * 10, spec["fp32_flops"], spec["memory_bytes_per_s"]) == \
        spec["fp32_flops"]
    with pytest.raises(ValueError):
        bench.roofline(0, 1, 1)


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="kind"):
        bench.layer_workload("grouped")
    with pytest.raises(ValueError, match="channels"):
        bench.layer_workload("depthwise", channels=0)
    with pytest.raises(ValueError, match="threads"):
        bench.default_config("cpu", threads=0)


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    assert bench.main(["--out", str(out), "--quick", "--device", "cpu"]) == 0
    return json.loads(out.read_text()), out


def test_quick_cli_writes_a_stamped_file(quick_results):
    results, path = quick_results
    meta = results["meta"]
    assert meta["torch_version"] == torch.__version__
    assert meta["device"] == "cpu" and meta["device_name"] and meta["cpu_count"] >= 1
    assert meta["date"].startswith("20") and meta["quick"] is True
    assert any("compile" in n for n in meta["notes"])  # skipped on CPU, and it says so
    assert bench.load(path) == results


def test_quick_cli_covers_every_setting(quick_results):
    results, _ = quick_results
    models = {r["model"] for r in results["models"]}
    assert len(models) == 2
    settings = {(r["model"], r["mode"], r["batch"], r["task"]) for r in results["models"]}
    assert settings == {(m, mode, b, t) for m in models
                        for mode in ("fp32_nchw", "bf16_channels_last") for b in (1, 2)
                        for t in ("inference", "train_step")}
    for r in results["models"]:
        assert "error" not in r, r
        assert r["median_ms"] > 0 and r["repeats"] >= 3
        assert r["images_per_s"] == pytest.approx(r["batch"] / (r["median_ms"] / 1e3))
    layers = {(r["layer"], r["mode"]) for r in results["layers"]}
    assert len(layers) == 3 * 3
    for r in results["layers"]:
        work = bench.layer_workload(r["layer"], r["channels"], r["size"], r["batch"],
                                    2 if r["mode"].startswith("bf16") else 4)
        assert r["flops"] == work.flops and r["bytes"] == work.bytes
        assert r["achieved_flops_per_s"] == pytest.approx(work.flops / (r["median_ms"] / 1e3))


def test_rendering_helpers(quick_results):
    results, _ = quick_results
    name = results["models"][0]["model"]
    record = bench.find(results["models"], model=name, mode="fp32_nchw", batch=2,
                        task="inference")
    assert record["batch"] == 2
    with pytest.raises(ValueError, match="expected one record"):
        bench.find(results["models"], model=name)
    table = bench.model_table(results, task="inference")
    assert "train_step" not in table and name in table
    assert "GFLOP/s" in bench.layer_table(results)


def test_load_missing_and_invalid(tmp_path):
    assert bench.load(tmp_path / "mobilenet_bench_gpu.json") is None
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="not a course_lib.bench results file"):
        bench.load(bad)


def test_committed_cpu_results_are_complete(repo):
    """The CPU file the book renders: both networks, fp32 and bf16, both tasks, three layers."""
    results = bench.load(repo / "book" / "data" / "mobilenet_bench_cpu.json")
    assert results is not None and results["meta"]["quick"] is False
    assert results["meta"]["macs_per_image"]["MobileNetV1"] == mobilenet.total_macs()
    for model in ("MobileNetV1", "ConvMobileNet"):
        for mode in ("fp32_nchw", "bf16_channels_last"):
            for task in ("inference", "train_step"):
                assert bench.find(results["models"], model=model, mode=mode,
                                  batch=max(results["meta"]["config"]["batches"]), task=task)
    assert {r["layer"] for r in results["layers"]} == set(bench.LAYER_KINDS)


def test_plot_roofline_draws_the_roof():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from course_lib import viz

    spec = bench.H100_SPEC
    points = [(k, bench.layer_workload(k).intensity, None) for k in bench.LAYER_KINDS]
    ax = viz.plot_roofline({"FP32": spec["fp32_flops"]}, spec["memory_bytes_per_s"], points)
    roof = ax.get_lines()[0]
    xs, ys = roof.get_xdata(), roof.get_ydata()
    assert max(ys) == pytest.approx(spec["fp32_flops"])
    assert ys[0] == pytest.approx(xs[0] * spec["memory_bytes_per_s"], rel=1e-4)  # memory slope
    assert len(ax.collections) == len(points)
    plt.close(ax.figure)
    with pytest.raises(ValueError):
        viz.plot_roofline({"FP32": 0.0}, 1e12)


# --- the load check and interleaved timing (issue 15, error 14) --------------------------------

QUIET = bench.MachineLoad((0.5, 0.4, 0.3), 2)
BUSY = bench.MachineLoad((10.25, 9.99, 7.15), 2)  # the load the first committed CPU file had


def test_load_check_refuses_a_busy_measurement_and_flags_allowed_ones():
    assert not QUIET.busy and BUSY.busy
    assert not bench.MachineLoad((2.0, 2.0, 2.0), 2).busy  # exactly one runnable task per core
    assert not bench.MachineLoad(None, 2).busy  # no load average on this OS: cannot judge
    assert bench.check_load(QUIET) is None
    with pytest.raises(bench.BusyMachineError, match=r"10\.25.*2 cores.*--allow-busy"):
        bench.check_load(BUSY)
    for kwargs in ({"allow_busy": True}, {"quick": True}):
        warning = bench.check_load(BUSY, **kwargs)
        assert warning.startswith("BUSY MACHINE") and "10.25" in warning


def test_cli_refuses_on_a_busy_machine_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "machine_load", lambda: BUSY)
    out = tmp_path / "b.json"
    assert bench.main(["--out", str(out), "--device", "cpu"]) == 2
    assert not out.exists()
    assert "refusing to benchmark" in capsys.readouterr().err


def test_an_allowed_busy_run_says_so_in_the_file(monkeypatch):
    monkeypatch.setattr(bench, "machine_load", lambda: BUSY)
    cfg = bench.default_config("cpu", quick=True)
    tiny = {"a": lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1),
                                       nn.Flatten(), nn.Linear(4, 1000))}
    monkeypatch.setattr(bench, "bench_layers", lambda cfg, mode, log: [])
    results = bench.run(dataclasses.replace(cfg, quick=False, batches=(1,)), log=lambda s: None,
                        factories=tiny, allow_busy=True)
    meta = results["meta"]
    assert meta["busy"] is True and meta["allow_busy"] is True
    assert meta["load_average"] == BUSY.averages and meta["load_average_after"] == BUSY.averages
    assert meta["notes"][0].startswith("BUSY MACHINE")
    assert "busy machine" in bench.load_warning(results)


def _sleeper(ms: float, calls: list, name: str, slowdown: list):
    def fn():
        calls.append(name)
        time.sleep(ms * slowdown[0] / 1e3)
    return fn


def test_interleaved_rounds_rotate_and_keep_the_ratio_under_a_burst_of_load():
    """Two callables, 4 ms and 12 ms. A 'burst of load' triples every call's time for the first
    half of the run: timed one after the other, the first would absorb the whole burst; interleaved,
    each round's pair sees the same load and the per-round ratio stays 3."""
    calls: list[str] = []
    slowdown = [3.0]
    fns = {"fast": _sleeper(4, calls, "fast", slowdown), "slow": _sleeper(12, calls, "slow",
                                                                           slowdown)}
    cfg = dataclasses.replace(bench.default_config("cpu", quick=True), warmup=0, max_repeats=12,
                              target_s=100.0)
    original = bench.benchmark

    def timed_then_burst_ends(fn, **kwargs):
        result = original(fn, **kwargs)
        if len(calls) >= 2 + 12:  # the probes, then six rounds: the burst is over
            slowdown[0] = 1.0
        return result

    bench.benchmark = timed_then_burst_ends
    try:
        timings = bench.time_interleaved(fns, cfg)
    finally:
        bench.benchmark = original
    rounds = [calls[i:i + 2] for i in range(2, len(calls), 2)]
    assert len(rounds) == 12 and all(sorted(r) == ["fast", "slow"] for r in rounds)
    assert {r[0] for r in rounds} == {"fast", "slow"}  # who goes first rotates
    assert timings["fast"]["repeats"] == timings["slow"]["repeats"] == 12
    ratio = bench.paired_ratio(timings["slow"]["times_ms"], timings["fast"]["times_ms"])
    assert ratio == pytest.approx(3.0, rel=0.25)


def test_paired_ratio_and_comparisons_use_matching_rounds():
    slow, fast = [30.0, 60.0, 90.0], [10.0, 30.0, 20.0]
    assert bench.paired_ratio(slow, fast) == 3.0  # median of 3, 2, 4.5
    with pytest.raises(ValueError, match="same number"):
        bench.paired_ratio([1.0], [1.0, 2.0])
    setting = {"mode": "fp32_nchw", "batch": 4, "task": "inference"}
    models = [{"model": "ConvMobileNet", "times_ms": slow, **setting},
              {"model": "MobileNetV1", "times_ms": fast, **setting},
              {"model": "MobileNetV1", "times_ms": [1.0], **setting, "batch": 1}]
    (c,) = bench.comparisons(models)
    assert c["model"] == "MobileNetV1" and c["baseline"] == "ConvMobileNet" and c["speedup"] == 3.0
    assert bench.speedup({"models": models, "comparisons": [c]}, **setting) == 3.0


def test_files_from_before_the_load_check_still_render(repo):
    """The book renders whatever file is committed: an old one (no load fields of its own, no
    interleaving) gets the median ratio and a warning judged from the load it recorded."""
    old = bench.load(repo / "book" / "data" / "mobilenet_bench_cpu.json")
    if "comparisons" in old:
        pytest.skip("the committed CPU file was re-measured with the interleaved benchmark")
    mb, conv = (bench.find(old["models"], model=m, mode="fp32_nchw", batch=4, task="inference")
                for m in ("MobileNetV1", "ConvMobileNet"))
    assert bench.speedup(old, "fp32_nchw", 4, "inference") == \
        mb["images_per_s"] / conv["images_per_s"]
    warning = bench.load_warning(old)
    assert warning and f"{old['meta']['load_average'][0]:.1f}" in warning
    assert "not measured interleaved" in warning
    quiet = {"meta": {**old["meta"], "load_average": [0.3, 0.2, 0.1]}}
    assert bench.load_warning(quiet) is None


def test_quick_results_are_interleaved_with_comparisons(quick_results):
    results, _ = quick_results
    assert results["meta"]["interleaved"] is True and "load_average_after" in results["meta"]
    settings = {(r["mode"], r["batch"], r["task"]) for r in results["models"]}
    assert {(c["mode"], c["batch"], c["task"]) for c in results["comparisons"]} == settings
    for c in results["comparisons"]:
        base, other = (bench.find(results["models"], model=m, mode=c["mode"], batch=c["batch"],
                                  task=c["task"]) for m in (c["baseline"], c["model"]))
        assert len(base["times_ms"]) == len(other["times_ms"]) == base["repeats"]
        assert c["speedup"] == bench.paired_ratio(base["times_ms"], other["times_ms"])
