"""MobileNetV1 (Howard et al. 2017, arXiv 1704.04861) and its full-convolution baseline, plus the
paper's cost tables recomputed from the architecture.

* :class:`MobileNetV1` - Table 1 of the paper built from
  :class:`course_lib.separable.DepthwiseSeparableConv2d`: a full 3x3 stride-2 conv, 13 separable
  blocks (3x3 depthwise -> BN -> ReLU -> 1x1 pointwise -> BN -> ReLU), global average pool, FC.
  Erratum: the paper's Table 1 prints the last depthwise layer with stride 2, but the network only
  ends at 7x7 (and costs 569 M mult-adds) with stride 1 there, as Keras and timm build it.
* :class:`ConvMobileNet` - the same network with every separable block replaced by one full 3x3
  conv (the "Conv MobileNet" row of the paper's Table 4).
* The width multiplier ``alpha`` thins EVERY layer, the first conv and all thirteen blocks included
  (``int(c * alpha)`` channels, as Keras does). A widely copied PyTorch version applies it
  everywhere except the five 512-channel blocks, so its alpha < 1 networks are wrong.

Paper tables (the ``paper_tables`` part of this module): :data:`PAPER` holds the paper's PUBLISHED
numbers, typed from the paper (they are data to compare with, not results); :func:`table2`,
:func:`table4`, :func:`table6` and :func:`table7` recompute each row with ``course_lib.costs`` from
:func:`layer_specs` and return computed and published values side by side.

Counting follows the paper: mult-adds (MACs) of convolutions and the FC layer; parameters are the
conv weights and the FC weights and biases - BatchNorm is left out of the paper-table parameter
counts (it adds 2 numbers per channel, 0.5% of the network), but is included by
:func:`course_lib.costs.count_params` on the real module (4,231,976 at alpha 1).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from course_lib import _validate as v
from course_lib import costs
from course_lib.separable import DepthwiseSeparableConv2d
from course_lib.tables import Table

# (out_channels, stride) of the 13 depthwise-separable blocks of Table 1; the stem is a 3x3
# stride-2 conv to 32 channels. The last block has stride 1 (erratum, see the module docstring).
STEM_CHANNELS = 32
BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
    (1024, 2), (1024, 1),
)
MIN_RESOLUTION = 32  # the network downsamples by 32


def check_alpha(alpha: float) -> float:
    """A width multiplier is a finite real > 0 that leaves the thinnest layer >= 1 channel."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha):
        raise ValueError(f"alpha (the width multiplier) must be a positive number, got {alpha!r}")
    if alpha <= 0:
        raise ValueError(f"alpha (the width multiplier) must be > 0, got {alpha!r}")
    if int(STEM_CHANNELS * alpha) < 1:
        raise ValueError(f"alpha={alpha!r} leaves the first layer with 0 channels "
                         f"(int({STEM_CHANNELS} * alpha)); use alpha >= {1 / STEM_CHANNELS}")
    return float(alpha)


def check_resolution(resolution: int) -> int:
    """Input side length: an int >= 32 (five stride-2 layers)."""
    if isinstance(resolution, bool) or not isinstance(resolution, int):
        raise ValueError(f"resolution must be an int, got {resolution!r}")
    if resolution < MIN_RESOLUTION:
        raise ValueError(f"resolution must be >= {MIN_RESOLUTION} (MobileNet downsamples by 32), "
                         f"got {resolution}")
    return resolution


def scaled(channels: int, alpha: float) -> int:
    """Channels of a layer under width multiplier alpha: ``int(channels * alpha)`` (Keras)."""
    return int(channels * alpha)


# The paper's "shallow" MobileNet (its Table 5) drops the five repeated 512 -> 512 blocks on the
# 14 x 14 map: blocks 7 to 11 (0-based 6..10) of BLOCKS.
SHALLOW_DROPPED = range(6, 11)


def channel_plan(alpha: float = 1.0, shallow: bool = False) -> list[tuple[int, int, int]]:
    """(in_channels, out_channels, stride) of the 13 blocks under ``alpha`` (8 if ``shallow``)."""
    check_alpha(alpha)
    plan, c_in = [], scaled(STEM_CHANNELS, alpha)
    blocks = [b for i, b in enumerate(BLOCKS) if not (shallow and i in SHALLOW_DROPPED)]
    for c_out, stride in blocks:
        plan.append((c_in, scaled(c_out, alpha), stride))
        c_in = scaled(c_out, alpha)
    return plan


def _check_input(x: torch.Tensor, in_channels: int, name: str) -> None:
    v.tensor_of_rank(x, 4, "input", "N, C, H, W")
    if x.shape[1] != in_channels:
        raise ValueError(f"{name} expects {in_channels} input channels, got input of shape "
                         f"{tuple(x.shape)}")
    if min(x.shape[-2:]) < MIN_RESOLUTION:
        raise ValueError(f"{name} needs inputs of at least {MIN_RESOLUTION}x{MIN_RESOLUTION} "
                         f"(it downsamples by 32), got {tuple(x.shape[-2:])}")


def _stem(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class _MobileNetBase(nn.Module):
    """Stem, a stack of blocks, global average pool, FC (the blocks are made by subclasses)."""

    def __init__(self, alpha: float, num_classes: int, in_channels: int):
        super().__init__()
        self.alpha = check_alpha(alpha)
        v.positive_int(num_classes, "num_classes")
        v.positive_int(in_channels, "in_channels")
        self.in_channels, self.num_classes = in_channels, num_classes
        plan = channel_plan(alpha)
        self.stem = _stem(in_channels, scaled(STEM_CHANNELS, alpha))
        self.blocks = nn.Sequential(*(self._block(c_in, c_out, s) for c_in, c_out, s in plan))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(plan[-1][1], num_classes)

    def _block(self, c_in: int, c_out: int, stride: int) -> nn.Module:  # pragma: no cover
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, C, H/32, W/32) feature map before pooling."""
        _check_input(x, self.in_channels, type(self).__name__)
        return self.blocks(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class MobileNetV1(_MobileNetBase):
    """MobileNetV1 (paper Table 1, last depthwise stride 1) with width multiplier ``alpha``.

    Returns logits (the paper's softmax is left to the loss). The resolution multiplier is simply
    the input size: any input of at least 32x32 works; the paper uses 224, 192, 160 and 128.
    """

    def __init__(self, alpha: float = 1.0, num_classes: int = 1000, in_channels: int = 3):
        super().__init__(alpha, num_classes, in_channels)

    def _block(self, c_in: int, c_out: int, stride: int) -> nn.Module:
        return DepthwiseSeparableConv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1)


class ConvMobileNet(_MobileNetBase):
    """The paper's Table 4 baseline: MobileNetV1 with every depthwise-separable block replaced by
    one full 3x3 conv (same channels and strides), each followed by BN and ReLU."""

    def __init__(self, alpha: float = 1.0, num_classes: int = 1000, in_channels: int = 3):
        super().__init__(alpha, num_classes, in_channels)

    def _block(self, c_in: int, c_out: int, stride: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                             nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def architecture_rows(alpha: float = 1.0, resolution: int = 224
                      ) -> list[tuple[str, str, str]]:
    """Table 1 as rows (type / stride, filter shape, input size), e.g.
    ("Conv dw / s2", "3 x 3 x 64 dw", "112 x 112 x 64")."""
    return [(s.label, s.filter_shape, f"{s.in_size} x {s.in_size} x {s.in_channels}")
            for s in layer_specs(alpha, resolution)]


# --- paper_tables -----------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerSpec:
    """One layer of the network for closed-form costs: kind is "Conv 3x3", "Conv DW 3x3",
    "Conv 1x1" or "FC" (the paper's Table 2 categories)."""

    kind: str
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    in_size: int
    out_size: int

    @property
    def groups(self) -> int:
        return self.in_channels if self.kind == "Conv DW 3x3" else 1

    @property
    def params(self) -> int:
        """Weights (convs have no bias: BN follows); the FC layer has a bias."""
        if self.kind == "FC":
            return costs.linear_params(self.in_channels, self.out_channels)
        return costs.conv2d_params(self.in_channels, self.out_channels, self.kernel_size,
                                   groups=self.groups, bias=False)

    @property
    def macs(self) -> int:
        if self.kind == "FC":
            return costs.linear_macs(self.in_channels, self.out_channels)
        return costs.conv2d_macs(self.in_channels, self.out_channels, self.kernel_size,
                                 self.out_size, groups=self.groups)

    @property
    def label(self) -> str:
        name = {"Conv 3x3": "Conv", "Conv DW 3x3": "Conv dw", "Conv 1x1": "Conv",
                "FC": "FC"}[self.kind]
        return name if self.kind == "FC" else f"{name} / s{self.stride}"

    @property
    def filter_shape(self) -> str:
        if self.kind == "FC":
            return f"{self.in_channels} x {self.out_channels}"
        if self.kind == "Conv DW 3x3":
            return f"3 x 3 x {self.in_channels} dw"
        k = self.kernel_size
        return f"{k} x {k} x {self.in_channels} x {self.out_channels}"


def _out(size: int, stride: int) -> int:
    return (size + 2 - 3) // stride + 1  # 3x3, padding 1


def layer_specs(alpha: float = 1.0, resolution: int = 224, num_classes: int = 1000,
                full_conv: bool = False, in_channels: int = 3,
                shallow: bool = False) -> list[LayerSpec]:
    """Every conv and the FC layer of MobileNetV1 (or ConvMobileNet with ``full_conv``; the
    paper's shallow MobileNet, without the five repeated 512-channel blocks, with ``shallow``)."""
    check_alpha(alpha)
    check_resolution(resolution)
    v.positive_int(num_classes, "num_classes")
    size = _out(resolution, 2)
    specs = [LayerSpec("Conv 3x3", in_channels, scaled(STEM_CHANNELS, alpha), 3, 2, resolution,
                       size)]
    for c_in, c_out, stride in channel_plan(alpha, shallow):
        out = _out(size, stride)
        if full_conv:
            specs.append(LayerSpec("Conv 3x3", c_in, c_out, 3, stride, size, out))
        else:
            specs.append(LayerSpec("Conv DW 3x3", c_in, c_in, 3, stride, size, out))
            specs.append(LayerSpec("Conv 1x1", c_in, c_out, 1, 1, out, out))
        size = out
    specs.append(LayerSpec("FC", specs[-1].out_channels, num_classes, 1, 1, 1, 1))
    return specs


def total_macs(alpha: float = 1.0, resolution: int = 224, full_conv: bool = False) -> int:
    return sum(s.macs for s in layer_specs(alpha, resolution, full_conv=full_conv))


def total_params(alpha: float = 1.0, resolution: int = 224, full_conv: bool = False) -> int:
    """Paper-style parameters (no BatchNorm)."""
    return sum(s.params for s in layer_specs(alpha, resolution, full_conv=full_conv))


# The paper's PUBLISHED values (arXiv 1704.04861v1), typed from its tables: comparison data, not
# results. Table 2: % of mult-adds and % of parameters per layer type. Tables 4, 6, 7: (ImageNet
# top-1 %, million mult-adds, million parameters).
PAPER = {
    "table2": {"Conv 1x1": (94.86, 74.59), "Conv DW 3x3": (3.06, 1.06),
               "Conv 3x3": (1.19, 0.02), "FC": (0.18, 24.33)},
    "table4": {"Conv MobileNet": (71.7, 4866, 29.3), "MobileNet": (70.6, 569, 4.2)},
    "table6": {1.0: (70.6, 569, 4.2), 0.75: (68.4, 325, 2.6), 0.5: (63.7, 149, 1.3),
               0.25: (50.6, 41, 0.5)},
    "table7": {224: (70.6, 569, 4.2), 192: (69.1, 418, 4.2), 160: (67.2, 290, 4.2),
               128: (64.4, 186, 4.2)},
}
# Table 8 compares with other ImageNet models (their published numbers only: we do not rebuild
# them); Table 10 fine-tunes on Stanford Dogs (120 classes): (top-1 %, M mult-adds, M params).
PAPER_OTHER = {
    "table8": {"1.0 MobileNet-224": (70.6, 569, 4.2), "GoogleNet": (69.8, 1550, 6.8),
               "VGG 16": (71.5, 15300, 138)},
    "table10": {"Inception V3": (84.0, 5000, 23.2), "1.0 MobileNet-224": (83.3, 569, 3.3),
                "0.75 MobileNet-224": (81.9, 325, 1.9), "1.0 MobileNet-192": (81.9, 418, 3.3),
                "0.75 MobileNet-192": (80.5, 239, 1.9)},
}
# Table 3: one 512 -> 512 layer on a 14 x 14 map, 3 x 3 kernel, made cheaper step by step:
# (M mult-adds, M parameters). Table 5: narrow (alpha 0.75) vs shallow (five 14 x 14 x 512 blocks
# removed) at 224, and Table 9: small MobileNets against SqueezeNet and AlexNet, as (top-1 %,
# M mult-adds, M parameters).
PAPER_OTHER["table3"] = {"Convolution": (462, 2.36), "Depthwise separable conv": (52.3, 0.27),
                         "alpha = 0.75": (29.6, 0.15), "rho = 0.714": (15.1, 0.15)}
PAPER_OTHER["table5"] = {"0.75 MobileNet-224": (68.4, 325, 2.6),
                         "Shallow MobileNet-224": (65.3, 307, 2.9)}
PAPER_OTHER["table9"] = {"0.5 MobileNet-160": (60.2, 76, 1.32), "SqueezeNet": (57.5, 1700, 1.25),
                         "AlexNet": (57.2, 720, 60)}
# Table 3's layer: the middle blocks' shape, and the map that rho = 0.714 leaves (10 x 10 of 14).
TABLE3_LAYER = {"channels": 512, "size": 14, "kernel": 3, "alpha": 0.75, "rho_size": 10}
STANFORD_DOGS_CLASSES = 120
# Known misprint (DESIGN.md): Table 2 prints "Conv 3x3: 1.19%" of mult-adds, but the first layer's
# share counts to 1.91% (digits swapped; the printed column sums to 99.29%). table2() flags it.
TABLE2_ERRATA = frozenset({"Conv 3x3"})


@dataclass(frozen=True)
class CostRow:
    """One row of a reproduced table: computed millions beside the paper's published ones."""

    name: str
    macs_m: float
    params_m: float
    paper_macs_m: float
    paper_params_m: float
    paper_top1: float
    note: str = ""


@dataclass(frozen=True)
class ShareRow:
    """One row of Table 2: computed shares (%) beside the printed ones."""

    kind: str
    macs_pct: float
    params_pct: float
    paper_macs_pct: float
    paper_params_pct: float
    note: str = ""


def table2(alpha: float = 1.0, resolution: int = 224) -> list[ShareRow]:
    """Share of mult-adds and parameters by layer type (paper Table 2)."""
    specs = layer_specs(alpha, resolution)
    all_macs = sum(s.macs for s in specs)
    all_params = sum(s.params for s in specs)
    rows = []
    for kind, (paper_m, paper_p) in PAPER["table2"].items():
        macs = sum(s.macs for s in specs if s.kind == kind)
        params = sum(s.params for s in specs if s.kind == kind)
        share = costs.percent(macs, all_macs)
        note = (f"misprint: printed {paper_m:.2f}%, the layer's {macs / 1e6:.1f} M of "
                f"{all_macs / 1e6:.1f} M is {share:.2f}%" if kind in TABLE2_ERRATA else "")
        param_share = costs.percent(params, all_params)
        # The printed parameter shares match a count WITHOUT the FC layer's bias.
        fc_bias = sum(s.out_channels for s in specs if s.kind == "FC")
        no_bias = costs.percent(params - (fc_bias if kind == "FC" else 0),
                                all_params - fc_bias)
        if round(param_share, 2) != paper_p and round(no_bias, 2) == paper_p:
            note = (f"{note}; " if note else "") + (
                f"printed params {paper_p:.2f}% leave out the FC layer's {fc_bias:,} biases")
        rows.append(ShareRow(kind, share, param_share, paper_m, paper_p, note))
    return rows


def _row(name: str, alpha: float, resolution: int, full_conv: bool,
         paper: tuple[float, float, float], num_classes: int = 1000) -> CostRow:
    specs = layer_specs(alpha, resolution, num_classes=num_classes, full_conv=full_conv)
    return CostRow(name, sum(s.macs for s in specs) / 1e6, sum(s.params for s in specs) / 1e6,
                   paper[1], paper[2], paper[0])


def table4() -> list[CostRow]:
    """Conv MobileNet vs MobileNet at alpha 1, 224 (paper Table 4)."""
    rows = []
    for name, paper in PAPER["table4"].items():
        row = _row(name, 1.0, 224, name == "Conv MobileNet", paper)
        fc = next(s for s in layer_specs() if s.kind == "FC").macs / 1e6
        if round(row.macs_m) != row.paper_macs_m and round(row.macs_m - fc) == row.paper_macs_m:
            row = dataclasses.replace(row, note=(
                f"printed {row.paper_macs_m:,g} = {row.macs_m - fc:,.1f} M, the count without "
                f"the FC layer's {fc:.1f} M (the MobileNet row includes it)"))
        rows.append(row)
    return rows


def table6(alphas: Sequence[float] = (1.0, 0.75, 0.5, 0.25)) -> list[CostRow]:
    """Width multiplier at 224 (paper Table 6)."""
    return [_row(f"{alpha:g} MobileNet-224", alpha, 224, False,
                 PAPER["table6"].get(alpha, (math.nan,) * 3)) for alpha in alphas]


def rho_scaled_macs_m(resolution: int, alpha: float = 1.0) -> float:
    """Million mult-adds at 224 times rho^2 = (resolution/224)^2 - the shortcut the paper's Table 7
    appears to use. It also scales the FC layer, whose cost does not depend on the resolution."""
    check_resolution(resolution)
    return total_macs(alpha, 224) / 1e6 * (resolution / 224) ** 2


def table7(resolutions: Sequence[int] = (224, 192, 160, 128)) -> list[CostRow]:
    """Resolution multiplier at alpha 1 (paper Table 7). Where the exact count does not round to
    the printed value but the rho^2 shortcut does, the row's note says so (160: exact 290.7 M,
    printed 290 = 568.7 M x (160/224)^2 = 290.2 M)."""
    rows = []
    for r in resolutions:
        row = _row(f"1.0 MobileNet-{r}", 1.0, r, False, PAPER["table7"].get(r, (math.nan,) * 3))
        shortcut = rho_scaled_macs_m(r)
        if round(row.macs_m) != row.paper_macs_m and round(shortcut) == row.paper_macs_m:
            row = dataclasses.replace(row, note=(
                f"printed value = 224's total x (rho={r}/224)^2 = {shortcut:.1f} M, which also "
                f"scales the FC layer; exact count {row.macs_m:.1f} M"))
        rows.append(row)
    return rows


def table3() -> list[CostRow]:
    """One 14 x 14 x 512 layer (paper Table 3): a full 3 x 3 convolution, then depthwise
    separable, then alpha = 0.75, then rho = 0.714 (a 10 x 10 map), counted with
    :mod:`course_lib.costs`. The table has no accuracy column (top-1 is NaN)."""
    from course_lib import costs
    layer = TABLE3_LAYER
    c, k, size = layer["channels"], layer["kernel"], layer["size"]
    thin = scaled(c, layer["alpha"])

    def separable(ch: int, side: int) -> tuple[int, int]:
        macs = (costs.conv2d_macs(ch, ch, k, side, groups=ch) + costs.conv2d_macs(ch, ch, 1, side))
        return macs, costs.conv2d_params(ch, ch, k, groups=ch, bias=False) + \
            costs.conv2d_params(ch, ch, 1, bias=False)

    computed = {"Convolution": (costs.conv2d_macs(c, c, k, size),
                                costs.conv2d_params(c, c, k, bias=False)),
                "Depthwise separable conv": separable(c, size),
                "alpha = 0.75": separable(thin, size),
                "rho = 0.714": separable(thin, layer["rho_size"])}
    return [CostRow(name, macs / 1e6, params / 1e6, *PAPER_OTHER["table3"][name], math.nan)
            for name, (macs, params) in computed.items()]


def table5() -> list[CostRow]:
    """Narrow vs shallow at about the same cost (paper Table 5): 0.75 MobileNet against the
    full-width network without its five repeated 14 x 14 x 512 blocks."""
    rows = []
    for name, paper in PAPER_OTHER["table5"].items():
        shallow = name.startswith("Shallow")
        specs = layer_specs(1.0 if shallow else 0.75, 224, shallow=shallow)
        rows.append(CostRow(name, sum(s.macs for s in specs) / 1e6,
                            sum(s.params for s in specs) / 1e6, paper[1], paper[2], paper[0]))
    return rows


def table9() -> list[CostRow]:
    """A small MobileNet against SqueezeNet and AlexNet (paper Table 9): the MobileNet row is
    recomputed, the others are published numbers only."""
    rows = []
    for name, paper in PAPER_OTHER["table9"].items():
        parsed = _parse_name(name)
        if parsed is None:
            rows.append(_published_only(name, paper))
            continue
        row = _row(name, *parsed, False, paper)
        shortcut = rho_scaled_macs_m(parsed[1], parsed[0])
        if round(row.macs_m) != row.paper_macs_m and round(shortcut) == row.paper_macs_m:
            row = dataclasses.replace(row, note=(
                f"printed value = 224's total x (rho={parsed[1]}/224)^2 = {shortcut:.1f} M, as in "
                f"Table 7; exact count {row.macs_m:.1f} M"))
        rows.append(row)
    return rows


def _published_only(name: str, paper: tuple) -> CostRow:
    """A row of another network: the published numbers only (computed columns are NaN)."""
    return CostRow(name, math.nan, math.nan, paper[1], paper[2], paper[0])


def _parse_name(name: str) -> tuple[float, int] | None:
    """"0.75 MobileNet-192" -> (0.75, 192); None for another network."""
    alpha, _, rest = name.partition(" MobileNet-")
    return (float(alpha), int(rest)) if rest else None


def table8() -> list[CostRow]:
    """MobileNet against GoogleNet and VGG 16 on ImageNet (paper Table 8). Only the MobileNet row
    is recomputed; the others are the published numbers (computed columns are NaN)."""
    rows = []
    for name, paper in PAPER_OTHER["table8"].items():
        parsed = _parse_name(name)
        rows.append(_row(name, *parsed, False, paper) if parsed else
                    _published_only(name, paper))
    return rows


def table10() -> list[CostRow]:
    """Fine-grained recognition on Stanford Dogs (paper Table 10): MobileNets with a 120-class
    classifier, recomputed; Inception V3 is published only. Where the printed mult-adds match the
    1000-class network rather than the 120-class one, the note says so."""
    rows = []
    for name, paper in PAPER_OTHER["table10"].items():
        parsed = _parse_name(name)
        if parsed is None:
            rows.append(_published_only(name, paper))
            continue
        row = _row(name, *parsed, False, paper, num_classes=STANFORD_DOGS_CLASSES)
        imagenet = total_macs(*parsed) / 1e6
        if round(row.macs_m) != paper[1] and round(imagenet) == paper[1]:
            row = dataclasses.replace(row, note=(
                f"printed = the 1000-class network's {imagenet:.1f} M; with "
                f"{STANFORD_DOGS_CLASSES} classes {row.macs_m:.1f} M"))
        rows.append(row)
    return rows


def format_rows(rows: Sequence[CostRow | ShareRow], caption: str = "") -> Table:
    """Computed and published values side by side: prints as text, renders as an HTML table."""
    if rows and isinstance(rows[0], ShareRow):
        header = ("layer type", "mult-adds (ours)", "(paper)", "params (ours)", "(paper)", "note")
        body = [(r.kind, f"{r.macs_pct:.2f}%", f"{r.paper_macs_pct:.2f}%", f"{r.params_pct:.2f}%",
                 f"{r.paper_params_pct:.2f}%", r.note) for r in rows]
    else:
        header = ("model", "M mult-adds (ours)", "(paper)", "M params (ours)", "(paper)",
                  "top-1 (paper)", "note")
        body = [(r.name, "-" if math.isnan(r.macs_m) else f"{r.macs_m:,.1f}",
                 f"{r.paper_macs_m:,g}", "-" if math.isnan(r.params_m) else f"{r.params_m:.2f}",
                 f"{r.paper_params_m:g}", "-" if math.isnan(r.paper_top1) else
                 f"{r.paper_top1:g}%", r.note) for r in rows]
    return Table(header, body, caption, left=(len(header) - 1,))  # names and notes left
