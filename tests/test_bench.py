"""The benchmark: workload arithmetic against measured counts, the CLI in --quick mode (tiny sizes),
and the helpers the book uses to render a results file."""
import json

import pytest
import torch

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
