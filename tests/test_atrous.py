"""course_lib.atrous against PyTorch's own dilated conv, autograd and independent arithmetic."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib import atrous, costs
from course_lib.separable import separable_to_full_kernel


# --- the kernel ------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel, dilation, groups", [
    ((3, 3), 2, 1), ((3, 3), 6, 1), ((5, 5), 3, 1), ((3, 5), (2, 4), 1), ((1, 3), 3, 1),
    ((3, 3), 2, 4),
])
def test_zero_inserted_kernel_equals_dilated_conv(kernel, dilation, groups):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 31, 29, generator=g)
    w = torch.randn(6 if groups == 1 else 8, 4 // groups, *kernel, generator=g)
    big = atrous.dilate_kernel(w, dilation)
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    assert big.shape[-2:] == (dh * (kernel[0] - 1) + 1, dw * (kernel[1] - 1) + 1)
    torch.testing.assert_close(F.conv2d(x, big, groups=groups),
                               F.conv2d(x, w, dilation=dilation, groups=groups))
    # The holes are exact zeros and every original tap is kept once.
    assert int((big != 0).sum()) == int((w != 0).sum())
    assert torch.equal(big[..., ::dh, ::dw], w)


def test_dilation_one_is_the_identity_and_bad_input_is_named():
    w = torch.randn(2, 3, 3, 3)
    assert torch.equal(atrous.dilate_kernel(w, 1), w)
    with pytest.raises(ValueError, match="dilation"):
        atrous.dilate_kernel(w, 0)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        atrous.dilate_kernel(torch.ones(3), 2)


@pytest.mark.parametrize("k, r", itertools.product([1, 2, 3, 5, 7], [1, 2, 3, 6, 12]))
def test_effective_kernel_size_is_the_smallest_input_that_fits(k, r):
    span = atrous.effective_kernel_size(k, r)
    assert F.conv2d(torch.zeros(1, 1, 1, span), torch.zeros(1, 1, 1, k),
                    dilation=(1, r)).shape[-1] == 1
    if span > 1:
        with pytest.raises(RuntimeError):
            F.conv2d(torch.zeros(1, 1, 1, span - 1), torch.zeros(1, 1, 1, k), dilation=(1, r))


@pytest.mark.parametrize("k, r", itertools.product([1, 3, 5, 7], [1, 2, 6, 18]))
def test_same_padding_keeps_the_size(k, r):
    x = torch.zeros(1, 1, 40, 41)
    out = F.conv2d(x, torch.zeros(1, 1, k, k), dilation=r, padding=atrous.same_padding(k, r))
    assert out.shape == x.shape


def test_same_padding_rejects_even_kernels():
    with pytest.raises(ValueError, match="odd kernel_size"):
        atrous.same_padding(4, 2)


# --- receptive fields ------------------------------------------------------------------------

STACKS = [
    [(3, 1, 1)] * 4,                                   # plain 3x3 stack: 9
    [(3, 1, 2)] * 3,                                   # equal rates: 13
    [(3, 1, 1), (3, 1, 2), (3, 1, 5)],                 # hybrid rates: 17
    [(3, 1, 1), (3, 1, 2), (3, 1, 4), (3, 1, 8)],      # exponential growth (Yu & Koltun)
    [(7, 2, 1), (3, 2, 1), (3, 1, 1), (3, 2, 1)],      # a ResNet-like stem with strides
    [(3, 2, 1), (3, 1, 2), (3, 1, 4), (3, 2, 3)],      # strides and dilations mixed
    [(2, 2, 1), (3, 3, 2), (5, 1, 3)],                 # even kernel, stride 3
    [(1, 2, 1), (3, 1, 1)],                            # stride larger than the kernel
    [(5, 1, 1)],                                       # a single layer
]


@pytest.mark.parametrize("stack", STACKS, ids=lambda s: "-".join(map(str, s)))
def test_calculator_agrees_with_gradient_measurement(stack):
    assert atrous.receptive_field(stack) == atrous.measured_receptive_field(stack)


@pytest.mark.parametrize("seed", range(6))
def test_calculator_agrees_with_gradients_on_random_stacks(seed):
    g = torch.Generator().manual_seed(seed)
    depth = int(torch.randint(1, 5, (1,), generator=g))
    stack = [(int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(1, 3, (1,), generator=g)),
              int(torch.randint(1, 4, (1,), generator=g))) for _ in range(depth)]
    assert atrous.receptive_field(stack) == atrous.measured_receptive_field(stack), stack


def test_jump_is_the_product_of_strides_and_per_layer_sizes_grow():
    stack = [(3, 2, 1), (3, 1, 2), (3, 3, 1)]
    per_layer = atrous.receptive_field_per_layer(stack)
    assert [rf.jump for rf in per_layer] == [2, 2, 6]
    for i in range(1, len(stack) + 1):
        assert per_layer[i - 1] == atrous.measured_receptive_field(stack[:i])


def test_layers_accept_specs_tuples_and_ints_and_reject_nonsense():
    assert atrous.receptive_field([3, (3, 2), atrous.ConvSpec(3, dilation=2)]) == \
        atrous.receptive_field([(3, 1, 1), (3, 2, 1), (3, 1, 2)])
    for bad in ([], [(3, 0, 1)], [(3, 1, 1, 1)], "333", [(3, 1, -2)]):
        with pytest.raises(ValueError):
            atrous.receptive_field(bad)


def _offsets(rates, k=3):
    """Independent arithmetic: the 1-D offsets a stride-1 stack reads are all sums of one tap
    offset per layer, tap offsets being rate * (-(k//2) .. k//2)."""
    taps = [[r * t for t in range(-(k // 2), k // 2 + 1)] for r in rates]
    return {sum(combo) for combo in itertools.product(*taps)}


@pytest.mark.parametrize("rates", [(2, 2, 2), (1, 2, 5), (1, 2, 3), (3, 3), (1, 1, 1), (2, 4, 8)])
def test_sampled_pixels_match_the_sums_of_tap_offsets(rates):
    counts = atrous.sampled_pixels([(3, 1, r) for r in rates])
    offsets = _offsets(rates)
    width = max(offsets) - min(offsets) + 1
    assert counts.shape == (width, width)
    read_cols = {c - width // 2 for c in range(width) if counts[width // 2, c] > 0}
    assert read_cols == offsets
    assert int((counts > 0).sum()) == len(offsets) ** 2
    # Path counts: every input pixel is reached by (number of combos) paths in total.
    assert counts.sum().item() == 9 ** len(rates)


def test_gridding_facts_from_the_design_notes():
    equal = atrous.sampled_pixels([(3, 1, 2)] * 3)
    hybrid = atrous.sampled_pixels([(3, 1, 1), (3, 1, 2), (3, 1, 5)])
    assert equal.shape == (13, 13) and int((equal > 0).sum()) == 7 * 7   # only even offsets
    assert hybrid.shape == (17, 17) and bool((hybrid > 0).all())         # no holes


def test_input_gradient_rejects_an_output_pixel_outside_the_output():
    with pytest.raises(ValueError, match="outside"):
        atrous.input_gradient([(3, 1, 1)], output_index=(9, 0), input_size=8)


# --- ASPP ------------------------------------------------------------------------------------

def test_aspp_rates_double_at_output_stride_8():
    assert atrous.aspp_rates(16) == (6, 12, 18)
    assert atrous.aspp_rates(8) == tuple(2 * r for r in atrous.aspp_rates(16))
    with pytest.raises(ValueError, match="output_stride"):
        atrous.aspp_rates(32)


@pytest.mark.parametrize("output_stride", [16, 8])
def test_aspp_branches_shapes_and_rates(output_stride):
    torch.manual_seed(0)
    aspp = atrous.ASPP(32, 16, output_stride=output_stride).eval()
    x = torch.randn(2, 32, 21, 17)
    branches = aspp.branch_outputs(x)
    assert len(branches) == 5 and all(b.shape == (2, 16, 21, 17) for b in branches)
    assert aspp(x).shape == (2, 16, 21, 17)
    dilations = [m.dilation[0] for m in aspp.modules()
                 if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert tuple(dilations) == atrous.aspp_rates(output_stride)
    # The image-pooling branch is the same at every position.
    pooled = branches[-1]
    torch.testing.assert_close(pooled, pooled[:, :, :1, :1].expand_as(pooled))


def test_aspp_parameter_count_matches_the_formulas():
    c, m = 64, 32
    aspp = atrous.ASPP(c, m)
    conv_params = (costs.conv2d_params(c, m, 1, bias=False) * 2              # 1x1 + pooling
                   + 3 * costs.conv2d_params(c, m, 3, bias=False)            # atrous branches
                   + costs.conv2d_params(5 * m, m, 1, bias=False))           # projection
    bn_params = 2 * m * 6                                                     # 6 BatchNorms
    assert costs.count_params(aspp) == conv_params + bn_params


def test_aspp_atrous_branch_is_a_dilated_conv():
    """Branch 1 (rate 6) equals F.conv2d with its own weight at dilation 6, padding 6, + BN."""
    torch.manual_seed(1)
    aspp = atrous.ASPP(8, 4).eval()
    x = torch.randn(1, 8, 25, 25)
    conv, bn = aspp.branches[1][0], aspp.branches[1][1]
    expected = F.relu(bn(F.conv2d(x, conv.weight, dilation=6, padding=6)))
    torch.testing.assert_close(aspp.branches[1](x), expected)


def test_aspp_rejects_wrong_channels():
    with pytest.raises(ValueError, match="expects 8 input channels"):
        atrous.ASPP(8, 4).eval()(torch.randn(1, 3, 9, 9))


# --- atrous separable ------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [1, 2, 6])
def test_atrous_separable_equals_a_dilated_full_conv_with_the_product_kernel(rate):
    torch.manual_seed(rate)
    layer = atrous.atrous_separable_conv(5, 7, 3, rate, norm=False, activation=None)
    with torch.no_grad():
        layer.depthwise.bias.zero_()
        layer.pointwise.bias.zero_()
    x = torch.randn(2, 5, 20, 20)
    full = separable_to_full_kernel(layer.depthwise.weight, layer.pointwise.weight)
    torch.testing.assert_close(layer(x), F.conv2d(x, full, dilation=rate, padding=rate),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("c, m, k, rate, size", [(2048, 256, 3, 6, 33), (32, 64, 3, 2, 15),
                                                  (16, 16, 5, 3, 9)])
def test_cost_comparison_matches_measured_layers(c, m, k, rate, size):
    result = atrous.compare_atrous_costs(c, m, k, size)
    shape = (1, c, size, size)
    full = nn.Conv2d(c, m, k, dilation=rate, padding=atrous.same_padding(k, rate), bias=False)
    sep = atrous.atrous_separable_conv(c, m, k, rate)  # norm=True: its convs have no bias
    sep_conv_params = sum(costs.count_params(mod) for mod in sep.modules()
                          if isinstance(mod, nn.Conv2d))
    assert result.full_params == costs.count_params(full)
    assert result.separable_params == sep_conv_params
    assert result.full_macs == costs.measure_macs(full, torch.zeros(shape, device="meta"))
    assert result.separable_macs == costs.measure_macs(sep.eval(), torch.zeros(shape))
    # MobileNet's ratio, independent of the rate.
    assert result.macs_ratio == pytest.approx(1 / m + 1 / k ** 2)
    assert result.params_ratio == pytest.approx(1 / m + 1 / k ** 2)


def test_dilation_does_not_change_the_cost():
    x = torch.zeros(1, 16, 24, 24)
    macs = {r: costs.measure_macs(nn.Conv2d(16, 16, 3, dilation=r, padding=r), x) for r in (1, 2, 6)}
    assert len(set(macs.values())) == 1


# --- the figure helper (course_lib.viz.draw_sampled_pixels) ------------------------------------

def test_draw_sampled_pixels_leaves_unread_pixels_blank():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from course_lib import viz

    counts = atrous.sampled_pixels([(3, 1, 2)] * 3)
    ax = viz.draw_sampled_pixels(counts)
    shown = ax.images[0].get_array()
    assert shown.shape == (13, 13)
    assert int((~shown.mask).sum()) == int((counts > 0).sum()) == 49  # unread pixels are masked
    assert "49 of 169" in ax.get_title()
    with pytest.raises(ValueError, match="2-D"):
        viz.draw_sampled_pixels(torch.ones(3))
    plt.close("all")
