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

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from course_lib import costs
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


def torchinfo_estimate(model: nn.Module, input_or_shape: torch.Tensor | Sequence[int]
                       ) -> TorchinfoEstimate:
    """What torchinfo's summary prints for ``model`` on this input (batch included); the layer
    shapes come from :func:`course_lib.costs.summarize`."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"torchinfo_estimate expects an nn.Module, got {type(model).__name__}")
    x = _example_input(input_or_shape)
    nbytes = x.element_size()
    fwd_bwd = macs = 0
    for layer in costs.summarize(model, x, include_zero_cost=True, count_macs=False).layers:
        if not layer.params or not layer.output_shape:
            continue
        batch, numel = layer.output_shape[0], math.prod(layer.output_shape)
        fwd_bwd += 2 * numel * nbytes  # x2 "for gradients"
        if "Conv" in layer.kind:  # batch x spatial size x (weights + bias)
            macs += layer.params * batch * math.prod(layer.output_shape[2:])
        else:  # batch x parameters (linear, BatchNorm, ...)
            macs += layer.params * batch
    params_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return TorchinfoEstimate(x.numel() * nbytes, fwd_bwd, params_bytes, macs)


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
