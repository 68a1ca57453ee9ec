"""Memory of a network: what torchinfo's summary estimates, and what autograd really keeps.

* :func:`torchinfo_estimate` reproduces the arithmetic of torchinfo's summary footer (read from its
  source, ``torchinfo/model_statistics.py`` and ``layer_info.py``, version 1.8): "Input size" is
  the input tensor; "Forward/backward pass size" is the output of every leaf layer THAT HAS
  PARAMETERS (convs, BatchNorm, linear; not ReLU or pooling), times 2 "for gradients"; "Params
  size" is the parameters; "Total mult-adds" counts, per leaf layer, its parameters times the
  output's batch and spatial size for a conv (weights AND bias), batch x parameters otherwise
  (so BatchNorm's scale and shift count too). Every figure includes the batch: a summary for an
  input of batch 2 reports twice one image's mult-adds.
* :func:`saved_activation_bytes` measures what a training step really holds between the forward
  and the backward pass: the tensors autograd saves for backward (parameters excluded), found
  with ``torch.autograd.graph.saved_tensors_hooks``.

Bytes are in units of 1e6 (MB), as torchinfo prints them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from course_lib.costs import _example_input


@dataclass(frozen=True)
class TorchinfoEstimate:
    """The footer of ``torchinfo.summary(model, input_size=...)``, in bytes and mult-adds."""

    input_bytes: int
    forward_backward_bytes: int
    params_bytes: int
    mult_adds: int

    @property
    def total_bytes(self) -> int:
        return self.input_bytes + self.forward_backward_bytes + self.params_bytes

    def __str__(self) -> str:
        return (f"Total mult-adds (G): {self.mult_adds / 1e9:.2f}\n"
                f"Input size (MB): {self.input_bytes / 1e6:.2f}\n"
                f"Forward/backward pass size (MB): {self.forward_backward_bytes / 1e6:.2f}\n"
                f"Params size (MB): {self.params_bytes / 1e6:.2f}\n"
                f"Estimated Total Size (MB): {self.total_bytes / 1e6:.2f}")


def _leaves(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if not any(True for _ in m.children())]


def torchinfo_estimate(model: nn.Module, input_or_shape: torch.Tensor | Sequence[int]
                       ) -> TorchinfoEstimate:
    """What torchinfo's summary prints for ``model`` on this input (batch included)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"torchinfo_estimate expects an nn.Module, got {type(model).__name__}")
    x = _example_input(input_or_shape)
    outputs: dict[int, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda mod, args, out: outputs.__setitem__(id(mod), out))
               for m in _leaves(model)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    fwd_bwd = macs = 0
    for m in _leaves(model):
        params = sum(p.numel() for p in m.parameters())
        out = outputs.get(id(m))
        if out is None or not params:
            continue
        fwd_bwd += 2 * out.numel() * out.element_size()  # x2 "for gradients"
        if isinstance(m, nn.modules.conv._ConvNd):  # batch x spatial size x (weights + bias)
            macs += params * out.shape[0] * out[0, 0].numel()
        else:  # batch x parameters (linear, BatchNorm, ...)
            macs += params * out.shape[0]
    params_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return TorchinfoEstimate(x.numel() * x.element_size(), fwd_bwd, params_bytes, macs)


def saved_activation_bytes(model: nn.Module, input_or_shape: torch.Tensor | Sequence[int]
                           ) -> int:
    """Bytes of the tensors autograd keeps from one training-mode forward pass for the backward
    pass, parameters excluded; tensors sharing storage count once."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"saved_activation_bytes expects an nn.Module, got "
                         f"{type(model).__name__}")
    x = _example_input(input_or_shape)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return sum(storages.values())
