"""Seeded random test cases shared by the exercise checks.

Visible tests use the seed a check defaults to; hidden tests (in ``solutions/`` only) pass their own
seed, so a solution tuned to the visible cases does not pass the hidden ones by accident, and the
released package cannot reproduce the hidden cases.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ConvCase:
    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: int
    padding: int
    dilation: int
    groups: int

    def kwargs(self) -> dict:
        return dict(bias=self.bias, stride=self.stride, padding=self.padding,
                    dilation=self.dilation, groups=self.groups)


def _choice(g: torch.Generator, options: list) -> object:
    return options[int(torch.randint(len(options), (1,), generator=g))]


def conv_cases(seed: int, count: int = 6, allow_groups: bool = True, max_size: int = 12,
               depthwise: bool = False, rectangular: bool = False) -> list[ConvCase]:
    """Random conv2d problems covering stride, padding, dilation, groups, with and without bias.

    The first case is always the plain one (stride 1, no padding, no groups) so a student's first
    failure is the simplest to debug. ``depthwise`` makes groups equal the input channels;
    ``rectangular`` makes every other case's kernel K_h x K_w with K_h != K_w (the second case
    always), so visible and hidden cases alike contain both shapes.
    """
    g = torch.Generator().manual_seed(seed)
    cases = []
    for i in range(count):
        plain = i == 0
        groups = 1 if plain or not allow_groups else _choice(g, [1, 1, 2, 3])
        c_per_group = _choice(g, [1, 2, 3])
        m_per_group = _choice(g, [1, 2, 4])
        if depthwise:
            c = _choice(g, [2, 3, 4, 5])
            groups, c_per_group, m_per_group = c, 1, _choice(g, [1, 1, 2])
        k = _choice(g, [1, 2, 3, 3, 5])
        k_w = k
        if rectangular and i % 2 == 1:
            k_w = _choice(g, [kw for kw in (1, 2, 3, 4) if kw != k])
        stride = 1 if plain else _choice(g, [1, 2, 3])
        padding = 0 if plain else _choice(g, [0, 1, 2])
        dilation = 1 if plain else _choice(g, [1, 1, 2])
        span_h, span_w = dilation * (k - 1) + 1, dilation * (k_w - 1) + 1
        size_h = int(torch.randint(max(span_h, 4), max_size + 1, (1,), generator=g))
        size_w = int(torch.randint(max(span_w, 4), max_size + 1, (1,), generator=g))
        n = _choice(g, [1, 2])
        x = torch.randn(n, c_per_group * groups, size_h, size_w, generator=g)
        weight = torch.randn(m_per_group * groups, c_per_group, k, k_w, generator=g)
        bias = torch.randn(m_per_group * groups, generator=g) if (plain or i % 2) else None
        cases.append(ConvCase(x, weight, bias, stride, padding, dilation, groups))
    return cases
