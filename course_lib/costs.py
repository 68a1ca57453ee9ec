"""Parameter and mult-add (MAC) counts: closed-form formulas, and measured counts.

Conventions (the MobileNet paper's): one multiply-add = one MAC; bias additions, BatchNorm and
activations are not counted. ``torch.utils.flop_counter.FlopCounterMode`` reports FLOPs = 2 x MACs
for convolutions and matrix multiplies, so :func:`measure_macs` halves its total.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from course_lib import _validate as v


# --- closed-form formulas ---------------------------------------------------------------------

def conv2d_params(in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                  groups: int = 1, bias: bool = True) -> int:
    """K_h*K_w*(C/groups)*M weights, plus M biases (one scalar per output channel)."""
    v.positive_int(in_channels, "in_channels")
    v.positive_int(out_channels, "out_channels")
    kh, kw = v.positive_pair(kernel_size, "kernel_size")
    v.check_groups(in_channels, out_channels, groups)
    return kh * kw * (in_channels // groups) * out_channels + (out_channels if bias else 0)


def conv2d_macs(in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                output_size: int | Sequence[int], groups: int = 1, batch_size: int = 1) -> int:
    """Every output value (M*H_out*W_out of them) costs K_h*K_w*(C/groups) multiply-adds."""
    v.positive_int(in_channels, "in_channels")
    v.positive_int(out_channels, "out_channels")
    v.positive_int(batch_size, "batch_size")
    kh, kw = v.positive_pair(kernel_size, "kernel_size")
    oh, ow = v.positive_pair(output_size, "output_size")
    v.check_groups(in_channels, out_channels, groups)
    return batch_size * kh * kw * (in_channels // groups) * out_channels * oh * ow


def linear_params(in_features: int, out_features: int, bias: bool = True) -> int:
    v.positive_int(in_features, "in_features")
    v.positive_int(out_features, "out_features")
    return in_features * out_features + (out_features if bias else 0)


def linear_macs(in_features: int, out_features: int, batch_size: int = 1) -> int:
    v.positive_int(in_features, "in_features")
    v.positive_int(out_features, "out_features")
    v.positive_int(batch_size, "batch_size")
    return batch_size * in_features * out_features


# --- measured counts --------------------------------------------------------------------------

def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (BatchNorm's running statistics are buffers, not parameters)."""
    if not isinstance(module, nn.Module):
        raise ValueError(f"count_params expects an nn.Module, got {type(module).__name__}")
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _example_input(input_or_shape: torch.Tensor | Sequence[int]) -> torch.Tensor:
    if isinstance(input_or_shape, torch.Tensor):
        return input_or_shape
    try:
        shape = tuple(int(s) for s in input_or_shape)
    except (TypeError, ValueError):
        raise ValueError("pass an input tensor or a shape such as (1, 3, 224, 224), got "
                         f"{input_or_shape!r}") from None
    if not shape or min(shape) < 1:
        raise ValueError(f"input shape must have positive sizes, got {shape}")
    return torch.zeros(shape)


def measure_macs(model: nn.Module, input_or_shape: torch.Tensor | Sequence[int]) -> int:
    """Run one forward pass under FlopCounterMode and return MACs (= counted FLOPs / 2)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"measure_macs expects an nn.Module, got {type(model).__name__}")
    x = _example_input(input_or_shape)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


@dataclass(frozen=True)
class LayerCost:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


class CostSummary:
    """Per-layer table in the spirit of torchinfo: layer, type, output shape, params, MACs, share.

    Prints as text; renders as an HTML table in a notebook.
    """

    def __init__(self, layers: list[LayerCost], total_params: int, total_macs: int):
        self.layers = layers
        self.total_params = total_params
        self.total_macs = total_macs

    def share(self, layer: LayerCost) -> float:
        return layer.macs / self.total_macs if self.total_macs else 0.0

    def by_kind(self) -> dict[str, tuple[int, int]]:
        """(params, MACs) summed per layer type, e.g. {"Conv2d": (...), "Linear": (...)}."""
        totals: dict[str, tuple[int, int]] = {}
        for layer in self.layers:
            p, m = totals.get(layer.kind, (0, 0))
            totals[layer.kind] = (p + layer.params, m + layer.macs)
        return totals

    def rows(self) -> list[tuple[str, str, str, str, str, str]]:
        rows = [(l.name, l.kind, "x".join(map(str, l.output_shape)), f"{l.params:,}", f"{l.macs:,}",
                 f"{100 * self.share(l):.1f}%") for l in self.layers]
        rows.append(("total", "", "", f"{self.total_params:,}", f"{self.total_macs:,}", "100.0%"))
        return rows

    header = ("layer", "type", "output shape", "params", "MACs", "share of MACs")

    def __str__(self) -> str:
        rows = [self.header, *self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self.header))]
        lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in
                           enumerate(zip(r, widths))) for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.insert(len(lines) - 1, "-" * len(lines[0]))
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in self.rows())
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def summarize(model: nn.Module, input_or_shape: torch.Tensor | Sequence[int],
              include_zero_cost: bool = False, count_macs: bool = True) -> CostSummary:
    """Per-leaf-module parameters and measured MACs for one forward pass.

    Each leaf module (one with no children) is measured on its own by a FlopCounterMode opened in a
    forward pre-hook and closed in the forward hook. Layers with no parameters and no MACs (ReLU,
    pooling) are left out unless ``include_zero_cost``. ``count_macs=False`` records shapes and
    parameters only (every MAC count 0), without the counters' overhead.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"summarize expects an nn.Module, got {type(model).__name__}")
    x = _example_input(input_or_shape)
    records: list[LayerCost] = []
    handles = []

    def attach(name: str, module: nn.Module) -> None:
        counter = FlopCounterMode(display=False)

        def pre_hook(mod, args):
            if count_macs:
                counter.__enter__()

        def post_hook(mod, args, output):
            if count_macs:
                counter.__exit__(None, None, None)
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
            params = sum(p.numel() for p in mod.parameters(recurse=False))
            records.append(LayerCost(name, type(mod).__name__, shape, params,
                                     counter.get_total_flops() // 2))

        handles.append(module.register_forward_pre_hook(pre_hook))
        handles.append(module.register_forward_hook(post_hook))

    for name, module in model.named_modules():
        if not any(True for _ in module.children()):
            attach(name or type(module).__name__, module)
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    layers = [r for r in records if include_zero_cost or r.params or r.macs]
    # Parameters of non-leaf modules (rare: e.g. a class token) still count in the total.
    return CostSummary(layers, count_params(model), measure_macs(model, x) if count_macs else 0)


def percent(part: float, whole: float) -> float:
    """Share in percent, guarded against an empty whole."""
    return 100.0 * part / whole if whole else math.nan
