"""The committed MNIST-5k experiment (book/data/mnist_scale.json) and the script that writes it
(python -m course_lib.mnist_scale): provenance recorded, counts equal to course_lib's, numbers
consistent with the setting, and the script runs end to end on a tiny setting."""
from __future__ import annotations

import statistics

import pytest

from conftest import REPO
from course_lib import costs, mnist_scale

RESULTS = REPO / "book" / "data" / "mnist_scale.json"


@pytest.fixture(scope="module")
def results() -> dict:
    return mnist_scale.load(RESULTS)


def test_committed_run_records_its_provenance(results):
    meta = results["meta"]
    # The default setting, run by the command recorded (its --out was then committed here).
    assert meta["command"].startswith("python -m course_lib.mnist_scale --out ")
    assert "--tiny" not in meta["command"] and "--epochs" not in meta["command"]
    assert not meta["tiny"] and meta["device"] == "cpu" and meta["interleaved"]
    for key in ("date", "device_name", "torch_version", "python", "torch_threads",
                "available_cores", "load_average", "load_average_after", "busy", "recipe"):
        assert meta[key] not in (None, ""), key
    setting = mnist_scale.Setting(**{**meta["setting"],
                                     "models": tuple(map(tuple, meta["setting"]["models"])),
                                     "seeds": tuple(meta["setting"]["seeds"])})
    assert setting == mnist_scale.Setting(), "the committed run is not the script's default"


def test_committed_counts_equal_course_lib(results):
    setting = results["meta"]["setting"]
    assert [(m["network"], m["alpha"]) for m in results["models"]] == [
        tuple(m) for m in setting["models"]]
    import torch

    for m in results["models"]:
        with torch.device("meta"):  # shapes only: counting needs no real weights or compute
            model = mnist_scale.build(m["network"], m["alpha"]).eval()
            assert m["params"] == costs.count_params(model)
            assert m["macs_per_image"] == costs.measure_macs(model, (1, 1, 32, 32))
        assert m["name"] == mnist_scale.label(m["network"], m["alpha"])


def test_committed_numbers_are_consistent_with_the_setting(results):
    setting = results["meta"]["setting"]
    for m in results["models"]:
        assert [r["seed"] for r in m["runs"]] == setting["seeds"]
        for r in m["runs"]:
            assert len(r["train_loss"]) == len(r["test_accuracy"]) == len(r["epoch_seconds"]) \
                == setting["epochs"]
            for a in r["test_accuracy"]:  # a whole number of the test images
                assert a * setting["test"] == pytest.approx(round(a * setting["test"]), abs=1e-6)
            assert all(s > 0 for s in r["epoch_seconds"])
        assert m["inference_batch64"]["median_ms"] == pytest.approx(
            statistics.median(m["inference_batch64"]["times_ms"]))
    text = mnist_scale.table(results)
    for m in results["models"]:
        assert f"{m['params']:,}" in text


def test_script_runs_end_to_end_on_a_tiny_setting(tmp_path, capsys):
    out = tmp_path / "tiny.json"
    assert mnist_scale.main(["--out", str(out), "--tiny"]) == 0
    results = mnist_scale.load(out)
    meta = results["meta"]
    assert meta["tiny"] and meta["command"] == f"python -m course_lib.mnist_scale --out {out} --tiny"
    assert meta["setting"]["train"] == mnist_scale.TINY.train
    for m in results["models"]:
        assert m["params"] == costs.count_params(mnist_scale.build(m["network"], m["alpha"]))
        assert len(m["runs"]) == 1 and 0.0 <= m["runs"][0]["test_accuracy"][0] <= 1.0
    assert "wrote" in capsys.readouterr().out


def test_split_is_stratified_and_disjoint():
    import torch

    x_train, y_train, x_test, y_test = mnist_scale.split(mnist_scale.TINY)
    assert x_train.shape[1:] == (1, 32, 32) and len(x_test) == mnist_scale.TINY.test
    assert torch.bincount(y_test, minlength=10).min() >= 5  # stratified over the 10 digits
    # No image in both subsets (compare whole images, pixel by pixel).
    train_images = {tuple(r.tolist()) for r in x_train.flatten(1)}
    assert not any(tuple(r.tolist()) in train_images for r in x_test.flatten(1))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="at most the 5,000"):
        mnist_scale.Setting(train=4800, test=400)
    with pytest.raises(ValueError, match="unknown network"):
        mnist_scale.Setting(models=(("ResNet", 1.0),))
    with pytest.raises(ValueError, match="not a course_lib.mnist_scale results file"):
        path = REPO / "book" / "data" / "grading_bench.json"
        mnist_scale.load(path)


def test_the_books_claims_hold_for_the_committed_run(results):
    """What chapter 7's text says about the run (its numbers are glued from mnist_scale.quoted;
    these are the words around them)."""
    q = {k: float(v.replace(",", "")) for k, v in mnist_scale.quoted(results).items()}
    separable, full, thin = results["models"]
    assert separable["network"] == thin["network"] == "MobileNetV1" and full["network"] == \
        "ConvMobileNet" and separable["alpha"] == full["alpha"] > thin["alpha"]
    # "a gap larger than the spread between the two seeds, and larger than the paper's"
    assert q["gap"] > q["spread"] and q["gap"] > q["paper_gap"]
    assert q["gap"] > 3 * q["spread"]  # the self-check: "several times larger"
    # "learns more slowly at first and is still behind when the budget of epochs ends"
    # (not at every epoch: ConvMobileNet's test accuracy dips once, in seed 0's epoch 11)
    for s_run, f_run in zip(separable["runs"], full["runs"]):
        sep_acc, full_acc = s_run["test_accuracy"], f_run["test_accuracy"]
        assert all(s + 0.05 < f for s, f in zip(sep_acc[:5], full_acc[:5]))
        assert sep_acc[-1] < full_acc[-1]
    # "halving the width again costs another ... points"
    assert q["thin_gap"] > 0
    # "hardly trained faster ... despite ... times fewer mult-adds"
    assert q["epoch_ratio"] > 0.75 and q["mac_ratio"] > 5
