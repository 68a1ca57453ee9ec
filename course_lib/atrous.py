"""Atrous (dilated) convolution and DeepLab's ASPP (chapter 6).

* :func:`dilate_kernel` - the zero-inserted kernel that a dilated convolution is equal to: the
  "holes" (French *trous*) hold fixed zeros, nothing learned.
* :func:`effective_kernel_size` - ``K + (K - 1)(r - 1)``, the span of a ``K``-tap kernel at rate r.
* :func:`same_padding` - the padding that keeps a stride-1 (dilated) conv's output size.
* :func:`receptive_field` / :func:`receptive_field_per_layer` - the closed-form receptive-field
  calculator for a stack of convolutions given as ``(kernel_size, stride, dilation)`` per layer:
  ``size_l = size_{l-1} + (K_eff,l - 1) * jump_{l-1}``, ``jump_l = jump_{l-1} * stride_l``.
* :func:`measured_receptive_field` - the same, *measured*: the gradient of one output pixel with
  respect to the input of a stack whose weights are all ones (so no gradients can cancel) is
  non-zero exactly on the pixels that output pixel reads. The tests check the calculator against it.
* :func:`sampled_pixels` - that gradient map itself (how many paths reach each input pixel), for the
  gridding-artifact figure: equal rates (2, 2, 2) leave holes, hybrid rates (1, 2, 5) do not.
* :class:`ASPP` - DeepLab v3's Atrous Spatial Pyramid Pooling (1x1 branch, three 3x3 atrous
  branches, image pooling, concat + 1x1 projection, BN + ReLU everywhere), :func:`aspp_rates`.
* :func:`atrous_separable_conv` and :func:`compare_atrous_costs` - DeepLab v3+'s atrous separable
  convolution (depthwise with dilation, then pointwise) and its cost against a full atrous conv.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from course_lib import _validate as v
from course_lib import costs
from course_lib.conv import conv_output_size
from course_lib.separable import DepthwiseSeparableConv2d, separable_macs, separable_params

# DeepLab v3 (Chen et al. 2017, "Rethinking Atrous Convolution for Semantic Image Segmentation"):
# ASPP rates at output stride 16; at output stride 8 they are doubled.
ASPP_RATES_OS16 = (6, 12, 18)


# --- the kernel ------------------------------------------------------------------------------

def effective_kernel_size(kernel_size: int, dilation: int) -> int:
    """Span of a ``kernel_size``-tap kernel at rate ``dilation``: ``K + (K - 1)(r - 1)``.

    Equal to ``dilation * (kernel_size - 1) + 1``: ``K - 1`` gaps, each ``dilation`` pixels wide.
    """
    v.positive_int(kernel_size, "kernel_size")
    v.positive_int(dilation, "dilation")
    return kernel_size + (kernel_size - 1) * (dilation - 1)


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps a stride-1 conv's output the size of its input (odd kernels):
    ``dilation * (kernel_size - 1) // 2`` - half the *effective* span, not half of K."""
    v.positive_int(kernel_size, "kernel_size")
    v.positive_int(dilation, "dilation")
    if kernel_size % 2 == 0:
        raise ValueError(f"'same' padding needs an odd kernel_size (symmetric padding), "
                         f"got {kernel_size}")
    return dilation * (kernel_size - 1) // 2


def dilate_kernel(weight: torch.Tensor, dilation: int | Sequence[int]) -> torch.Tensor:
    """Insert ``dilation - 1`` zeros between neighbouring taps of the last two dimensions.

    A ``(..., K_h, K_w)`` kernel becomes ``(..., K_eff,h, K_eff,w)``; a plain convolution with the
    result equals ``F.conv2d(..., dilation=dilation)`` with the original kernel. The inserted
    values are constants (zero), so the layer has exactly as many parameters as an undilated one.
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        raise ValueError("weight must be a tensor with at least 2 dimensions (..., K_h, K_w), got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    dh, dw = v.positive_pair(dilation, "dilation")
    kh, kw = weight.shape[-2:]
    out = weight.new_zeros(*weight.shape[:-2], effective_kernel_size(kh, dh),
                           effective_kernel_size(kw, dw))
    out[..., ::dh, ::dw] = weight  # every r-th position holds a tap; the rest stay zero
    return out


# --- receptive fields ------------------------------------------------------------------------

@dataclass(frozen=True)
class ConvSpec:
    """One layer of a stack, for the receptive-field tools: a ``K x K`` conv (or pool)."""
    kernel_size: int
    stride: int = 1
    dilation: int = 1


class ReceptiveField(NamedTuple):
    """``size``: input pixels (along one axis) that one output pixel depends on; ``jump``: input
    pixels between neighbouring output pixels (the product of the strides so far)."""
    size: int
    jump: int


LayerLike = ConvSpec | Sequence[int]


def as_specs(layers: Iterable[LayerLike]) -> list[ConvSpec]:
    """Normalise ``[(k, s, d), (k, s), k, ConvSpec(...)]`` to a list of :class:`ConvSpec`."""
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
        raise ValueError(f"layers must be a list of (kernel_size, stride, dilation), got {layers!r}")
    specs = []
    for i, layer in enumerate(layers):
        if isinstance(layer, ConvSpec):
            spec = layer
        elif isinstance(layer, int) and not isinstance(layer, bool):
            spec = ConvSpec(layer)
        else:
            try:
                items = tuple(layer)
            except TypeError:
                raise ValueError(f"layer {i} must be (kernel_size, stride, dilation), got "
                                 f"{layer!r}") from None
            if not 1 <= len(items) <= 3:
                raise ValueError(f"layer {i} must be (kernel_size, stride, dilation), got {layer!r}")
            spec = ConvSpec(*items)
        for name in ("kernel_size", "stride", "dilation"):
            v.positive_int(getattr(spec, name), f"layer {i} {name}")
        specs.append(spec)
    if not specs:
        raise ValueError("layers is empty: give at least one (kernel_size, stride, dilation)")
    return specs


def receptive_field_per_layer(layers: Iterable[LayerLike]) -> list[ReceptiveField]:
    """Receptive field after each layer (see :func:`receptive_field`)."""
    size, jump, result = 1, 1, []
    for spec in as_specs(layers):
        # A layer widens the field by (K_eff - 1) of *its input's* pixels, each `jump` input pixels.
        size += (effective_kernel_size(spec.kernel_size, spec.dilation) - 1) * jump
        jump *= spec.stride
        result.append(ReceptiveField(size, jump))
    return result


def receptive_field(layers: Iterable[LayerLike]) -> ReceptiveField:
    """Closed-form receptive field of a stack of ``(kernel_size, stride, dilation)`` layers.

    ``size_l = size_{l-1} + (K_eff,l - 1) * jump_{l-1}`` and ``jump_l = jump_{l-1} * stride_l``,
    starting from ``size_0 = jump_0 = 1`` (one input pixel). Padding does not change the size.
    """
    return receptive_field_per_layer(layers)[-1]


def probe_stack(layers: Iterable[LayerLike], dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """The stack as single-channel, unpadded, bias-free convs with every weight 1.

    With positive weights and no activation, a gradient is a count of paths: it is non-zero exactly
    where the output depends on the input, and nothing can cancel out.
    """
    convs = []
    for spec in as_specs(layers):
        conv = nn.Conv2d(1, 1, spec.kernel_size, stride=spec.stride, dilation=spec.dilation,
                         bias=False, dtype=dtype)
        nn.init.ones_(conv.weight)
        convs.append(conv.requires_grad_(False))
    return nn.Sequential(*convs)


def _probe_input_size(specs: list[ConvSpec], min_output: int) -> int:
    """Smallest power of two whose output through the (unpadded) stack is >= ``min_output`` wide.

    Uses only the output-size formula, never the receptive-field calculator, so the measurement
    stays independent of what it checks."""
    size = 8
    while True:
        out = size
        try:
            for spec in specs:
                out = conv_output_size(out, spec.kernel_size, spec.stride, 0, spec.dilation)
        except ValueError:
            out = 0
        if out >= min_output:
            return size
        size *= 2


def input_gradient(layers: Iterable[LayerLike], output_index: tuple[int, int] = (0, 0),
                   input_size: int | None = None) -> torch.Tensor:
    """Gradient of output pixel ``output_index`` of :func:`probe_stack` w.r.t. the whole
    ``input_size x input_size`` input (float64, shape (H, W)): the number of paths from each input
    pixel to that output pixel."""
    specs = as_specs(layers)
    i, j = output_index
    if input_size is None:
        input_size = _probe_input_size(specs, max(i, j) + 1)
    stack = probe_stack(specs)
    x = torch.zeros(1, 1, input_size, input_size, dtype=torch.float64, requires_grad=True)
    out = stack(x)
    if not (0 <= i < out.shape[-2] and 0 <= j < out.shape[-1]):
        raise ValueError(f"output_index {output_index} is outside the {tuple(out.shape[-2:])} "
                         f"output of a {input_size}x{input_size} input")
    (grad,) = torch.autograd.grad(out[0, 0, i, j], x)
    return grad[0, 0]


def _nonzero_span(grad: torch.Tensor) -> tuple[int, int]:
    """(first, last) column index where any row of ``grad`` is non-zero."""
    cols = torch.nonzero(grad.abs().sum(dim=0)).flatten()
    return int(cols.min()), int(cols.max())


def measured_receptive_field(layers: Iterable[LayerLike]) -> ReceptiveField:
    """Receptive field measured by autograd: the non-zero extent of the gradient of output pixel
    (0, 0), and the jump as the shift of that extent from output pixel (0, 0) to (0, 1)."""
    specs = as_specs(layers)
    size = _probe_input_size(specs, 2)
    first0, last0 = _nonzero_span(input_gradient(specs, (0, 0), size))
    first1, _ = _nonzero_span(input_gradient(specs, (0, 1), size))
    return ReceptiveField(last0 - first0 + 1, first1 - first0)


def sampled_pixels(layers: Iterable[LayerLike]) -> torch.Tensor:
    """Path counts from each input pixel to one output pixel, cropped to the receptive field.

    Zeros inside the crop are input pixels the output never reads: the *gridding* holes of stacked
    dilated convolutions whose rates share a common factor (e.g. three 3x3 convs at rate 2).
    """
    grad = input_gradient(layers)
    rows = torch.nonzero(grad.abs().sum(dim=1)).flatten()
    first, last = _nonzero_span(grad)
    return grad[int(rows.min()):int(rows.max()) + 1, first:last + 1]


# --- DeepLab: ASPP ---------------------------------------------------------------------------

def aspp_rates(output_stride: int = 16) -> tuple[int, int, int]:
    """DeepLab v3's rates: (6, 12, 18) at output stride 16, doubled to (12, 24, 36) at 8.

    The rates are chosen in pixels of the feature map; at half the output stride the map is twice
    as large, so the same field of view in the image needs twice the rate."""
    if output_stride not in (8, 16):
        raise ValueError(f"DeepLab v3 defines ASPP rates for output_stride 16 or 8, got "
                         f"{output_stride!r}")
    factor = 16 // output_stride
    return tuple(r * factor for r in ASPP_RATES_OS16)  # type: ignore[return-value]


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int,
                  dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=same_padding(kernel_size, dilation),
                  dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels), nn.ReLU())


class ImagePooling(nn.Module):
    """ASPP's image-level branch: global average pool -> 1x1 conv -> BN -> ReLU -> upsample.

    It gives every position the same summary of the whole image. (Its BatchNorm sees one value per
    channel and image, so in training mode it needs a batch of more than one image.)"""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.project = _conv_bn_relu(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.pool(x))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling (DeepLab v3, Fig. 5): five parallel branches on the
    backbone's feature map - a 1x1 conv, three 3x3 atrous convs (``rates``), image pooling - each
    with BN + ReLU, concatenated and projected by a 1x1 conv + BN + ReLU to ``out_channels``.

    ``rates=None`` takes :func:`aspp_rates` of ``output_stride``. ``separable=True`` makes the
    atrous branches atrous separable convs (DeepLab v3+): depthwise with dilation, then pointwise.
    Every branch keeps the spatial size ("same" padding = rate for a 3x3 kernel).
    """

    def __init__(self, in_channels: int, out_channels: int = 256,
                 rates: Sequence[int] | None = None, output_stride: int = 16,
                 separable: bool = False):
        super().__init__()
        v.positive_int(in_channels, "in_channels")
        v.positive_int(out_channels, "out_channels")
        self.rates = tuple(aspp_rates(output_stride) if rates is None else rates)
        for rate in self.rates:
            v.positive_int(rate, "rate")
        branches: list[nn.Module] = [_conv_bn_relu(in_channels, out_channels, 1)]
        for rate in self.rates:
            if separable:
                branches.append(atrous_separable_conv(in_channels, out_channels, 3, rate))
            else:
                branches.append(_conv_bn_relu(in_channels, out_channels, 3, rate))
        branches.append(ImagePooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = _conv_bn_relu(len(branches) * out_channels, out_channels, 1)
        self.in_channels, self.out_channels = in_channels, out_channels

    def branch_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each branch's output (all ``(N, out_channels, H, W)``), before concatenation."""
        v.tensor_of_rank(x, 4, "input", "N, C, H, W")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"ASPP expects {self.in_channels} input channels, got input of shape "
                             f"{tuple(x.shape)}")
        return [branch(x) for branch in self.branches]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat(self.branch_outputs(x), dim=1))


# --- atrous separable convolution ------------------------------------------------------------

def atrous_separable_conv(in_channels: int, out_channels: int, kernel_size: int = 3,
                          dilation: int = 1, norm: bool = True,
                          activation: Callable[[], nn.Module] | None = nn.ReLU
                          ) -> DepthwiseSeparableConv2d:
    """Depthwise ``K x K`` conv at rate ``dilation`` then pointwise 1x1 (DeepLab v3+), with
    "same" padding so the spatial size is kept."""
    return DepthwiseSeparableConv2d(in_channels, out_channels, kernel_size,
                                    padding=same_padding(kernel_size, dilation),
                                    dilation=dilation, norm=norm, activation=activation)


@dataclass(frozen=True)
class AtrousCosts:
    """Weights (no bias) and mult-adds of a ``K x K`` atrous conv, full vs separable."""
    full_params: int
    full_macs: int
    separable_params: int
    separable_macs: int

    @property
    def params_ratio(self) -> float:
        """separable / full: ``1/M + 1/K^2`` (``separable.separable_cost_ratio``)."""
        return self.separable_params / self.full_params

    @property
    def macs_ratio(self) -> float:
        return self.separable_macs / self.full_macs


def compare_atrous_costs(in_channels: int, out_channels: int, kernel_size: int,
                         output_size: int | Sequence[int]) -> AtrousCosts:
    """Costs of a full ``K x K`` atrous conv vs an atrous separable one (both bias-free), from
    :mod:`course_lib.costs` and :mod:`course_lib.separable`. The rate is not an argument: dilation moves the taps apart but adds
    none, so it changes neither parameters nor mult-adds (for a "same"-padded output size)."""
    c, m, k = in_channels, out_channels, kernel_size
    return AtrousCosts(
        full_params=costs.conv2d_params(c, m, k, bias=False),
        full_macs=costs.conv2d_macs(c, m, k, output_size),
        separable_params=separable_params(c, m, k, bias=False),
        separable_macs=separable_macs(c, m, k, output_size),
    )
