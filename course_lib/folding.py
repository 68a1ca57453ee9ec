"""BatchNorm folding: at inference a BatchNorm after a convolution is an affine map per output
channel, so it can be merged into the conv's weights and bias and disappear.

In eval mode BatchNorm computes, for output channel ``m``,

    y_m = gamma_m * (z_m - mean_m) / sqrt(var_m + eps) + beta_m,      z = conv(x) = W * x + b,

which is a conv with weights ``W'_m = s_m W_m`` and bias ``b'_m = s_m (b_m - mean_m) + beta_m``,
where ``s_m = gamma_m / sqrt(var_m + eps)``. One pass over the feature map is saved per folded
BatchNorm (it reads and writes a whole map for two numbers per channel). In training mode BatchNorm
uses the batch's own statistics, so folding applies to inference only.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from course_lib.separable import DepthwiseSeparableConv2d


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A copy of ``conv`` (same class) whose output equals ``bn(conv(x))`` with ``bn`` in eval
    mode. Works for any groups (depthwise included): the scale is per output channel."""
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"fold_batchnorm expects an nn.Conv2d first, got {type(conv).__name__}")
    if not isinstance(bn, nn.BatchNorm2d):
        raise ValueError(f"fold_batchnorm expects an nn.BatchNorm2d second, got "
                         f"{type(bn).__name__}")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"the BatchNorm has {bn.num_features} channels but the conv has "
                         f"{conv.out_channels} output channels: they do not follow each other")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("the BatchNorm tracks no running statistics (track_running_stats="
                         "False): it normalises with batch statistics and cannot be folded")
    with torch.no_grad():
        scale = bn.running_var.add(bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        folded = copy.deepcopy(conv)
        folded.weight.mul_(scale.reshape(-1, 1, 1, 1))
        bias = shift if conv.bias is None else conv.bias * scale + shift
        folded.bias = nn.Parameter(bias.clone())
    return folded


def fold_batchnorms(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every BatchNorm that directly follows a conv folded
    into it (and replaced by ``nn.Identity``): consecutive (Conv2d, BatchNorm2d) children of an
    ``nn.Sequential``, and the two pairs of a ``DepthwiseSeparableConv2d``. Other BatchNorms are
    left as they are."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"fold_batchnorms expects an nn.Module, got {type(model).__name__}")
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, DepthwiseSeparableConv2d):
            pairs = [("depthwise", "bn1"), ("pointwise", "bn2")]
        elif isinstance(module, nn.Sequential):
            names = list(module._modules)
            pairs = list(zip(names, names[1:]))
        else:
            continue
        for conv_name, bn_name in pairs:
            conv, bn = module._modules[conv_name], module._modules[bn_name]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module._modules[conv_name] = fold_batchnorm(conv, bn)
                module._modules[bn_name] = nn.Identity()
    return folded
