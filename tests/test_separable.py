"""course_lib.separable against PyTorch's own convolutions and independent math (NumPy's SVD,
explicit loops, FlopCounterMode)."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib import costs
from course_lib.separable import (DepthwiseSeparableConv2d, fit_separable, fit_separable_gd,
                                  separable_cost_ratio, separable_macs, separable_params,
                                  separable_to_full_kernel)


def random_cases(seed, count=8):
    g = torch.Generator().manual_seed(seed)
    pick = lambda options: options[int(torch.randint(len(options), (1,), generator=g))]  # noqa: E731
    for _ in range(count):
        yield dict(c=pick([1, 2, 3, 5]), m=pick([1, 4, 7]), k=pick([1, 3, 5]),
                   stride=pick([1, 2]), dilation=pick([1, 2]), d=pick([1, 2, 3]),
                   size=pick([9, 12, 15]))


def linear_block(case, bias):
    """The bare (no BN, no activation) block for a random case, an input for it, and the
    'same' padding it uses."""
    block = DepthwiseSeparableConv2d(case["c"], case["m"], case["k"], stride=case["stride"],
                                     dilation=case["dilation"], depth_multiplier=case["d"],
                                     norm=False, activation=None, bias=bias)
    x = torch.randn(2, case["c"], case["size"], case["size"])
    return block, x, case["dilation"] * (case["k"] - 1) // 2


@pytest.mark.parametrize("case", list(random_cases(0)), ids=str)
def test_linear_block_is_depthwise_then_pointwise(case):
    block, x, pad = linear_block(case, bias=True)
    c = case["c"]
    mid = F.conv2d(x, block.depthwise.weight, block.depthwise.bias, stride=case["stride"],
                   padding=pad, dilation=case["dilation"], groups=c)
    expected = F.conv2d(mid, block.pointwise.weight, block.pointwise.bias)
    torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("case", list(random_cases(1)), ids=str)
def test_full_kernel_gives_the_same_outputs(case):
    block, x, pad = linear_block(case, bias=False)
    w = separable_to_full_kernel(block.depthwise.weight, block.pointwise.weight, case["d"])
    assert w.shape == (case["m"], case["c"], case["k"], case["k"])
    full = F.conv2d(x, w, stride=case["stride"], padding=pad, dilation=case["dilation"])
    torch.testing.assert_close(full, block(x), atol=1e-5, rtol=1e-4)


def test_full_kernel_matches_explicit_loops_and_has_low_rank():
    c, m, k, d = 3, 6, 3, 2
    g = torch.Generator().manual_seed(2)
    dw = torch.randn(c * d, 1, k, k, generator=g)
    pw = torch.randn(m, c * d, 1, 1, generator=g)
    expected = torch.zeros(m, c, k, k)
    for o, i, j in itertools.product(range(m), range(c), range(d)):
        # Keras/PyTorch order: depthwise output channel i*d + j is filter j of input channel i.
        expected[o, i] += pw[o, i * d + j, 0, 0] * dw[i * d + j, 0]
    w = separable_to_full_kernel(dw, pw, d)
    torch.testing.assert_close(w, expected)
    ranks = torch.linalg.matrix_rank(w.permute(1, 0, 2, 3).reshape(c, m, k * k))
    assert ranks.max().item() <= d


def test_mid_activation_breaks_the_equivalence():
    block = DepthwiseSeparableConv2d(4, 6, 3, norm=False, bias=False)   # ReLU after each step
    x = torch.randn(1, 4, 8, 8)
    w = separable_to_full_kernel(block.depthwise.weight, block.pointwise.weight)
    assert (block(x) - F.conv2d(x, w, padding=1).relu()).abs().max() > 1e-3


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("case", list(random_cases(3, 6)), ids=str)
def test_costs_match_modules_and_flop_counter(case, bias):
    c, m, k, d, s = case["c"], case["m"], case["k"], case["d"], case["stride"]
    block = DepthwiseSeparableConv2d(c, m, k, stride=s, depth_multiplier=d, norm=False,
                                     activation=None, bias=bias)
    assert separable_params(c, m, k, d, bias=bias) == sum(p.numel() for p in block.parameters())
    x = torch.zeros(1, c, case["size"], case["size"])
    out = block(x)
    assert separable_macs(c, m, k, tuple(out.shape[-2:]), d) == costs.measure_macs(block, x)
    assert separable_macs(c, m, k, tuple(out.shape[-2:]), d, batch_size=3) == \
        costs.measure_macs(block, torch.zeros(3, c, case["size"], case["size"]))


@pytest.mark.parametrize("c,m,k,d", [(3, 16, 3, 1), (32, 64, 3, 1), (7, 5, 5, 2), (1, 1, 1, 1),
                                     (16, 128, 7, 3)])
def test_cost_ratio_is_measured_ratio_and_independent_of_c(c, m, k, d):
    standard = nn.Conv2d(c, m, k, padding=k // 2, bias=False)
    block = DepthwiseSeparableConv2d(c, m, k, depth_multiplier=d, norm=False, activation=None,
                                     bias=False)
    x = torch.zeros(1, c, 10, 10)
    measured = costs.measure_macs(block, x) / costs.measure_macs(standard, x)
    assert separable_cost_ratio(m, k, d) == pytest.approx(measured, rel=1e-12)
    params = sum(p.numel() for p in block.parameters()) / standard.weight.numel()
    assert separable_cost_ratio(m, k, d) == pytest.approx(params, rel=1e-12)
    # The saving factor never reaches K^2.
    assert 1 / separable_cost_ratio(m, k) < k * k


def test_worked_example_432_vs_75():
    assert nn.Conv2d(3, 16, 3, bias=False).weight.numel() == 432   # the seeds' numbers
    assert separable_params(3, 16, 3) == 75


@pytest.mark.parametrize("shape", [(16, 3, 3, 3), (6, 4, 5, 5), (2, 3, 3, 3), (5, 2, 1, 3)])
@pytest.mark.parametrize("d", [1, 2, 4])
def test_fit_is_the_truncated_svd_optimum(shape, d):
    g = torch.Generator().manual_seed(sum(shape) + d)
    w = torch.randn(*shape, generator=g)
    fit = fit_separable(w, d)
    m, c, kh, kw = shape
    # Independent: NumPy's SVD of each channel's M x K^2 slice; Eckart-Young error.
    discarded = 0.0
    for i in range(c):
        s = np.linalg.svd(w[:, i].reshape(m, kh * kw).double().numpy(), compute_uv=False)
        discarded += float((s[d:] ** 2).sum())
    expected = (discarded ** 0.5) / w.double().norm().item()
    assert fit.relative_error == pytest.approx(expected, abs=1e-5)
    assert fit.depthwise_weight.shape == (c * d, 1, kh, kw)
    assert fit.pointwise_weight.shape == (m, c * d, 1, 1)
    if d >= min(m, kh * kw):
        assert fit.relative_error < 1e-5
        torch.testing.assert_close(fit.full_kernel(), w, atol=1e-5, rtol=1e-5)


def test_fit_loads_into_a_block_and_error_falls_with_d():
    w = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(5))
    errors = [fit_separable(w, d).relative_error for d in range(1, 10)]
    assert all(a >= b - 1e-7 for a, b in zip(errors, errors[1:]))
    fit = fit_separable(w, 3)
    block = DepthwiseSeparableConv2d(4, 8, 3, depth_multiplier=3, norm=False, activation=None,
                                     bias=False)
    with torch.no_grad():
        block.depthwise.weight.copy_(fit.depthwise_weight)
        block.pointwise.weight.copy_(fit.pointwise_weight)
    x = torch.randn(1, 4, 9, 9)
    torch.testing.assert_close(block(x), F.conv2d(x, fit.full_kernel(), padding=1),
                               atol=1e-5, rtol=1e-4)


def test_gradient_descent_never_beats_the_svd():
    w = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(7))
    for d in (1, 2):
        best = fit_separable(w, d).relative_error
        gd = fit_separable_gd(w, d, steps=200, lr=0.05, seed=d)
        assert gd.relative_error >= best - 1e-4
        assert gd.relative_error < best + 0.05        # and it does get close
    assert fit_separable_gd(w, 1, steps=20, seed=3).relative_error == \
        fit_separable_gd(w, 1, steps=20, seed=3).relative_error     # seeded


@pytest.mark.parametrize("call, words", [
    (lambda: separable_to_full_kernel(torch.randn(3, 3, 3), torch.randn(4, 3, 1, 1)),
     "depthwise_weight"),
    (lambda: separable_to_full_kernel([[1.0]], torch.randn(4, 3, 1, 1)), "torch.Tensor"),
    (lambda: separable_to_full_kernel(torch.randn(3, 2, 3, 3), torch.randn(4, 3, 1, 1)),
     "(C * depth_multiplier, 1, K, K)"),
    (lambda: separable_to_full_kernel(torch.randn(3, 1, 3, 3), torch.randn(4, 5, 1, 1)),
     "(M, 3, 1, 1)"),
    (lambda: separable_to_full_kernel(torch.randn(5, 1, 3, 3), torch.randn(4, 5, 1, 1), 2),
     "multiple of depth_multiplier"),
    (lambda: separable_to_full_kernel(torch.randn(4, 1, 3, 3), torch.randn(4, 4, 1, 1), 0),
     "depth_multiplier"),
    (lambda: separable_params(0, 4, 3), "in_channels"),
    (lambda: separable_params(3, 4, 3, depth_multiplier=1.5), "depth_multiplier"),
    (lambda: separable_macs(3, 4, 3, 0), "output_size"),
    (lambda: separable_cost_ratio(0, 3), "out_channels"),
    (lambda: separable_cost_ratio(16, 0), "kernel_size"),
    (lambda: fit_separable(torch.zeros(4, 3, 3, 3)), "all zeros"),
    (lambda: fit_separable(torch.randn(4, 3, 3)), "weight"),
    (lambda: fit_separable(torch.ones(4, 3, 3, 3, dtype=torch.int64)), "floating-point"),
    (lambda: fit_separable(torch.randn(4, 3, 3, 3), depth_multiplier=0), "depth_multiplier"),
    (lambda: fit_separable_gd(torch.randn(4, 3, 3, 3), lr=0), "lr"),
    (lambda: fit_separable_gd(torch.randn(4, 3, 3, 3), steps=0), "steps"),
    (lambda: DepthwiseSeparableConv2d(0, 4), "in_channels"),
    (lambda: DepthwiseSeparableConv2d(3, 4, depth_multiplier=0), "depth_multiplier"),
])
def test_bad_arguments_are_rejected_by_name(call, words):
    with pytest.raises(ValueError, match=None) as info:
        call()
    assert words in str(info.value)


def test_mobilenet_placement_bn_relu_after_each_step():
    block = DepthwiseSeparableConv2d(8, 16, 3)
    kinds = [type(mod).__name__ for mod in block.children()]
    assert kinds == ["DepthwiseConv2d", "BatchNorm2d", "ReLU", "PointwiseConv2d", "BatchNorm2d",
                     "ReLU"]
    assert block.depthwise.bias is None and block.pointwise.bias is None
    xception_style = DepthwiseSeparableConv2d(8, 16, 3, mid_activation=False)
    assert isinstance(xception_style.act1, nn.Identity) and isinstance(xception_style.act2, nn.ReLU)
