"""Grouped convolution and the Xception hypothesis (chapter 5).

* :func:`divisors`, :func:`groups_spectrum` - parameters and mult-adds of a ``K x K`` conv (and of
  an Inception-style "1x1 then grouped KxK" module) for every valid number of groups, from
  groups=1 (a regular conv) to groups=C (a depthwise conv). The counts come from
  :mod:`course_lib.costs`.
* :class:`SimplifiedInception` (towers of 1x1 -> 3x3, concatenated) and :class:`GroupedInception`
  (one large 1x1 conv, then a grouped 3x3 conv over non-overlapping channel segments), with
  :func:`copy_towers_to_grouped` that makes the second compute exactly what the first does.
* :class:`Xception` - the network of Chollet (2017), "Xception: Deep Learning with Depthwise
  Separable Convolutions": entry / middle / exit flows with residual connections, built from
  :class:`course_lib.separable.DepthwiseSeparableConv2d`. With the defaults (8 middle-flow
  repeats, 1000 classes) it has the paper's 22,855,952 parameters; every width is an argument,
  so a small version runs on a CPU.
* :func:`separable_net` and :func:`mid_activation_experiment` - the CPU-sized version of the
  paper's experiment on what goes between depthwise and pointwise (nothing, ReLU or ELU).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from course_lib import _validate as v
from course_lib import costs
from course_lib.pointwise import PointwiseConv2d
from course_lib.separable import DepthwiseSeparableConv2d

# Published numbers (Chollet 2017, Table 3), used by the chapter and the tests.
XCEPTION_PAPER_PARAMS = 22_855_952
INCEPTION_V3_PAPER_PARAMS = 23_626_728


# --- the groups spectrum ----------------------------------------------------------------------

def divisors(n: int) -> list[int]:
    """All positive divisors of ``n`` in increasing order (the valid ``groups`` of a C->C conv)."""
    v.positive_int(n, "n")
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass(frozen=True)
class GroupsCost:
    """Cost of one setting of ``groups`` (no biases: they would blur the 1/groups law)."""

    groups: int
    params: int          # the grouped K x K conv alone
    macs: int
    module_params: int   # a 1x1 conv C -> M followed by the grouped K x K conv M -> M
    module_macs: int


def groups_spectrum(channels: int, kernel_size: int = 3, size: int = 28,
                    out_channels: int | None = None) -> list[GroupsCost]:
    """Costs of a ``kernel_size`` conv from ``channels`` to ``out_channels`` (default: the same)
    on a ``size x size`` map ("same" padding, stride 1), for every ``groups`` that divides both.

    ``module_*`` add the 1x1 conv that Inception (and Xception) put before the spatial conv:
    at groups = channels the module is an "extreme Inception" module, i.e. a pointwise conv then a
    depthwise conv.
    """
    v.positive_int(channels, "channels")
    v.positive_int(kernel_size, "kernel_size")
    v.positive_int(size, "size")
    m = channels if out_channels is None else v.positive_int(out_channels, "out_channels")
    pw_params = costs.conv2d_params(channels, m, 1, bias=False)
    pw_macs = costs.conv2d_macs(channels, m, 1, size)
    rows = []
    for g in divisors(channels):
        if m % g:
            continue
        p = costs.conv2d_params(channels, m, kernel_size, groups=g, bias=False)
        # The module's spatial conv maps M -> M (it follows the 1x1 conv).
        p_mod = costs.conv2d_params(m, m, kernel_size, groups=g, bias=False)
        rows.append(GroupsCost(
            groups=g, params=p, macs=costs.conv2d_macs(channels, m, kernel_size, size, groups=g),
            module_params=pw_params + p_mod,
            module_macs=pw_macs + costs.conv2d_macs(m, m, kernel_size, size, groups=g)))
    return rows


# --- Inception module == 1x1 conv + grouped conv ------------------------------------------------

def _module_padding(in_channels: int, towers: int, segment: int, kernel_size: int) -> int:
    """Validate an Inception module's arguments; return the "same" padding of its K x K conv."""
    v.positive_int(in_channels, "in_channels")
    v.positive_int(towers, "towers")
    v.positive_int(segment, "segment")
    v.positive_int(kernel_size, "kernel_size")
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd for 'same' padding, got {kernel_size}")
    return kernel_size // 2


class SimplifiedInception(nn.Module):
    """The simplified Inception module of the Xception paper (its Figure 2): ``towers`` parallel
    towers, each a 1x1 conv ``C -> segment`` then a ``K x K`` conv ``segment -> segment`` (each
    followed by ``activation``), outputs concatenated along channels (``towers * segment`` of
    them)."""

    def __init__(self, in_channels: int, towers: int, segment: int, kernel_size: int = 3,
                 bias: bool = True, activation: Callable[[], nn.Module] | None = nn.ReLU):
        super().__init__()
        pad = _module_padding(in_channels, towers, segment, kernel_size)

        def act() -> nn.Module:
            return activation() if activation else nn.Identity()

        self.towers = nn.ModuleList(
            nn.Sequential(PointwiseConv2d(in_channels, segment, bias=bias), act(),
                          nn.Conv2d(segment, segment, kernel_size, padding=pad, bias=bias), act())
            for _ in range(towers))
        self.in_channels, self.out_channels = in_channels, towers * segment

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([tower(x) for tower in self.towers], dim=1)


class GroupedInception(nn.Module):
    """The same module reformulated (the paper's Figure 3): ONE 1x1 conv
    ``C -> towers * segment``, then a ``K x K`` conv with ``groups = towers``, i.e. one spatial
    conv per non-overlapping segment of ``segment`` channels. ``segment=1`` gives the "extreme"
    version: a pointwise conv followed by a depthwise conv."""

    def __init__(self, in_channels: int, towers: int, segment: int, kernel_size: int = 3,
                 bias: bool = True, activation: Callable[[], nn.Module] | None = nn.ReLU):
        super().__init__()
        pad = _module_padding(in_channels, towers, segment, kernel_size)
        width = towers * segment
        self.pointwise = PointwiseConv2d(in_channels, width, bias=bias)
        self.act1 = activation() if activation else nn.Identity()
        self.spatial = nn.Conv2d(width, width, kernel_size, padding=pad, groups=towers,
                                 bias=bias)
        self.act2 = activation() if activation else nn.Identity()
        self.in_channels, self.out_channels, self.towers = in_channels, width, towers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.spatial(self.act1(self.pointwise(x))))


@torch.no_grad()
def copy_towers_to_grouped(inception: SimplifiedInception, grouped: GroupedInception) -> None:
    """Copy an Inception module's weights into its grouped form, in place.

    Tower ``t`` owns output channels ``[t*S, (t+1)*S)`` of both convs of the grouped form: its 1x1
    filters are rows ``t*S ...`` of the large 1x1 conv, and its 3x3 filters are group ``t`` of the
    grouped conv (whose weight, shape ``(T*S, S, K, K)``, is the towers' ``(S, S, K, K)`` weights
    stacked along the output axis). So both copies are concatenations along dim 0.
    """
    if not isinstance(inception, SimplifiedInception) or not isinstance(grouped,
                                                                       GroupedInception):
        raise ValueError("copy_towers_to_grouped expects (SimplifiedInception, GroupedInception)")
    pw = [tower[0] for tower in inception.towers]
    spatial = [tower[2] for tower in inception.towers]
    if (grouped.towers != len(pw) or grouped.in_channels != inception.in_channels
            or grouped.out_channels != inception.out_channels
            or grouped.spatial.weight.shape[1:] != spatial[0].weight.shape[1:]):
        raise ValueError("the two modules differ in channels, towers or kernel size")
    if (grouped.pointwise.bias is None) != (pw[0].bias is None):
        raise ValueError("both modules must have biases, or neither")
    grouped.pointwise.weight.copy_(torch.cat([c.weight for c in pw], dim=0))
    grouped.spatial.weight.copy_(torch.cat([c.weight for c in spatial], dim=0))
    if grouped.pointwise.bias is not None:
        grouped.pointwise.bias.copy_(torch.cat([c.bias for c in pw]))
        grouped.spatial.bias.copy_(torch.cat([c.bias for c in spatial]))


# --- Xception -----------------------------------------------------------------------------------

MidActivation = Callable[[], nn.Module] | None


class SeparableConvBN(nn.Sequential):
    """Xception's unit: a separable conv (depthwise 3x3, then pointwise 1x1, no biases), then
    BatchNorm - Keras' ``SeparableConv2D(use_bias=False)`` + ``BatchNormalization``.

    ``mid_activation`` (a module factory, default none) goes between depthwise and pointwise; the
    paper found that leaving it out works best. DepthwiseSeparableConv2d uses one activation
    factory for both of its slots, so the unit is built linear (``activation=None``) and the middle
    slot ``act1`` is then filled in: the pointwise output stays linear until the BatchNorm.
    """

    def __init__(self, in_channels: int, out_channels: int, mid_activation: MidActivation = None):
        sep = DepthwiseSeparableConv2d(in_channels, out_channels, kernel_size=3, padding=1,
                                       norm=False, activation=None, bias=False)
        if mid_activation is not None:
            sep.act1 = mid_activation()
        super().__init__(sep, nn.BatchNorm2d(out_channels))


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """A full 3x3 conv without padding ("valid", as in the paper's stem), BN, ReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=stride, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


class XceptionBlock(nn.Module):
    """``reps`` x (ReLU -> SeparableConvBN) then, with ``downsample``, a 3x3 max pool of stride 2;
    plus a residual: identity, or a strided 1x1 conv + BN when the shape changes.

    ``first_relu=False`` drops the leading ReLU (the first entry-flow block follows a ReLU already).
    """

    def __init__(self, in_channels: int, channels: Sequence[int], downsample: bool,
                 first_relu: bool = True, mid_activation: MidActivation = None):
        super().__init__()
        if not channels:
            raise ValueError("channels must list at least one separable conv's width")
        layers: list[nn.Module] = []
        c = in_channels
        for i, m in enumerate(channels):
            if i > 0 or first_relu:
                layers.append(nn.ReLU())
            layers.append(SeparableConvBN(c, m, mid_activation))
            c = m
        if downsample:
            layers.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.body = nn.Sequential(*layers)
        if downsample or in_channels != c:
            stride = 2 if downsample else 1
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, c, 1, stride=stride, bias=False), nn.BatchNorm2d(c))
        else:
            self.shortcut = nn.Identity()
        self.in_channels, self.out_channels = in_channels, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class Xception(nn.Module):
    """Xception (Chollet 2017, Figure 5), compact and configurable.

    * entry flow: two full 3x3 convs (``stem``, the first with stride 2), then one downsampling
      residual block per width in ``entry`` (two separable convs each);
    * middle flow: ``middle_repeats`` residual blocks of three separable convs at ``entry[-1]``
      channels, same resolution;
    * exit flow: a downsampling residual block with widths ``exit_block``, then separable convs of
      widths ``exit_convs`` (each followed by ReLU), global average pooling and a linear
      classifier.

    The defaults are the paper's network (299x299 input, 22,855,952 parameters). Every separable
    conv is a :class:`SeparableConvBN`, so ``mid_activation`` sets what (if anything) sits between
    depthwise and pointwise in all of them.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1000,
                 stem: Sequence[int] = (32, 64), entry: Sequence[int] = (128, 256, 728),
                 middle_repeats: int = 8, exit_block: Sequence[int] = (728, 1024),
                 exit_convs: Sequence[int] = (1536, 2048), mid_activation: MidActivation = None):
        super().__init__()
        v.positive_int(in_channels, "in_channels")
        v.positive_int(num_classes, "num_classes")
        if isinstance(middle_repeats, bool) or not isinstance(middle_repeats, int) \
                or middle_repeats < 0:
            raise ValueError(f"middle_repeats must be an int >= 0, got {middle_repeats!r}")
        for name, widths, minimum in (("stem", stem, 2), ("entry", entry, 1),
                                      ("exit_block", exit_block, 1), ("exit_convs", exit_convs, 1)):
            if len(widths) < minimum or not all(isinstance(w, int) and w > 0 for w in widths):
                raise ValueError(f"{name} must be at least {minimum} positive ints, got {widths!r}")
        if len(stem) != 2:
            raise ValueError(f"stem must be two widths (two 3x3 convs), got {stem!r}")

        self.stem = nn.Sequential(_conv_bn_relu(in_channels, stem[0], stride=2),
                                  _conv_bn_relu(stem[0], stem[1], stride=1))
        blocks, c = [], stem[1]
        for i, width in enumerate(entry):
            blocks.append(XceptionBlock(c, (width, width), downsample=True, first_relu=i > 0,
                                        mid_activation=mid_activation))
            c = width
        self.entry = nn.Sequential(*blocks)
        self.middle = nn.Sequential(*(XceptionBlock(c, (c, c, c), downsample=False,
                                                    mid_activation=mid_activation)
                                      for _ in range(middle_repeats)))
        exit_layers: list[nn.Module] = [XceptionBlock(c, tuple(exit_block), downsample=True,
                                                      mid_activation=mid_activation)]
        c = exit_block[-1]
        for width in exit_convs:
            exit_layers += [SeparableConvBN(c, width, mid_activation), nn.ReLU()]
            c = width
        self.exit = nn.Sequential(*exit_layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        v.tensor_of_rank(x, 4, "input", "N, C, H, W")
        return self.exit(self.middle(self.entry(self.stem(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def params_by_flow(model: Xception) -> dict[str, int]:
    """Parameters of each part of an :class:`Xception`: entry (stem included), middle, exit,
    classifier."""
    if not isinstance(model, Xception):
        raise ValueError(f"params_by_flow expects an Xception, got {type(model).__name__}")
    return {"entry flow": costs.count_params(model.stem) + costs.count_params(model.entry),
            "middle flow": costs.count_params(model.middle),
            "exit flow": costs.count_params(model.exit),
            "classifier": costs.count_params(model.classifier)}


# --- the non-linearity experiment -------------------------------------------------------------

MID_ACTIVATIONS: dict[str, MidActivation] = {"none": None, "ReLU": nn.ReLU, "ELU": nn.ELU}


def separable_net(mid_activation: MidActivation = None, widths: Sequence[int] = (16, 32, 64),
                  in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """A CPU-sized classifier for 8x8 digits: a full 3x3 stem conv, then per width a separable
    block at stride 1 and one at stride 2 (each
    :class:`~course_lib.separable.DepthwiseSeparableConv2d` with BatchNorm and ReLU after the
    pointwise conv), global average pooling, a linear layer.

    ``mid_activation`` is what sits between depthwise (and its BatchNorm) and pointwise: ``None``
    (Xception's choice), ``nn.ReLU`` (MobileNet's) or ``nn.ELU``. Only that slot differs between
    the variants of the experiment.
    """
    if not widths:
        raise ValueError("widths must list at least one width")

    def block(c: int, m: int, stride: int) -> DepthwiseSeparableConv2d:
        b = DepthwiseSeparableConv2d(c, m, 3, stride=stride, norm=True, activation=nn.ReLU,
                                     mid_activation=mid_activation is not None)
        if mid_activation is not None:
            b.act1 = mid_activation()  # the layer's single factory fills both slots; swap the middle one
        return b

    layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                               nn.BatchNorm2d(widths[0]), nn.ReLU()]
    c = widths[0]
    for i, width in enumerate(widths[1:] or widths):
        layers += [block(c, width, 1), block(width, width, 2 if i < 2 else 1)]
        c = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


def mid_activation_experiment(split, variants: dict[str, MidActivation] | None = None,
                              seeds: Sequence[int] = (0, 1), epochs: int = 6,
                              batch_size: int = 128, lr: float = 3e-3,
                              widths: Sequence[int] = (16, 32, 64)) -> dict[str, list]:
    """Train :func:`separable_net` once per (variant, seed) on a
    :class:`course_lib.data.DigitsSplit`; returns ``{variant: [History per seed]}`` whose
    ``val_metric`` is the test accuracy after each epoch.

    Everything is seeded (model initialisation and batch order), so a rerun on the same machine
    and torch version gives the same curves.
    """
    from course_lib import training

    variants = MID_ACTIVATIONS if variants is None else variants
    num_classes = int(split.y_train.max()) + 1
    results: dict[str, list] = {}
    for name, mid in variants.items():
        results[name] = []
        for seed in seeds:
            training.seeded(seed)
            model = separable_net(mid, widths, split.x_train.shape[1], num_classes)
            results[name].append(training.fit(
                model, split.x_train, split.y_train, loss_fn=nn.functional.cross_entropy,
                epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, x_val=split.x_test,
                y_val=split.y_test, metric=training.accuracy, progress=False))
    return results
