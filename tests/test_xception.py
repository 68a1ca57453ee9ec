"""course_lib.xception against PyTorch's own grouped conv, independent arithmetic and the Xception
paper's parameter count."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib import costs, data, xception
from course_lib.depthwise import DepthwiseConv2d
from course_lib.separable import DepthwiseSeparableConv2d


def test_divisors():
    assert xception.divisors(12) == [1, 2, 3, 4, 6, 12]
    assert xception.divisors(1) == [1]
    with pytest.raises(ValueError, match="n must be a positive int"):
        xception.divisors(0)


@pytest.mark.parametrize("c, m, k, size", [(16, 16, 3, 7), (12, 18, 3, 5), (8, 4, 5, 6)])
def test_groups_spectrum_matches_real_layers(c, m, k, size):
    rows = xception.groups_spectrum(c, k, size, out_channels=m)
    # Every common divisor of C and M, and nothing else.
    assert [r.groups for r in rows] == [g for g in range(1, c + 1) if c % g == 0 and m % g == 0]
    for r in rows:  # measured on the meta device: shapes and counts only, no arithmetic
        layer = nn.Conv2d(c, m, k, padding=k // 2, groups=r.groups, bias=False, device="meta")
        module = nn.Sequential(
            nn.Conv2d(c, m, 1, bias=False, device="meta"),
            nn.Conv2d(m, m, k, padding=k // 2, groups=r.groups, bias=False, device="meta"))
        x = torch.zeros(1, c, size, size, device="meta")
        assert r.params == costs.count_params(layer)
        assert r.macs == costs.measure_macs(layer, x)
        assert r.module_params == costs.count_params(module)
        assert r.module_macs == costs.measure_macs(module, x)
    # The 1/groups law, from the definition: K*K*(C/g)*M.
    assert all(r.params == k * k * (c // r.groups) * m for r in rows)


def test_groups_spectrum_rejects_bad_input():
    with pytest.raises(ValueError, match="channels"):
        xception.groups_spectrum(0)
    with pytest.raises(ValueError, match="kernel_size"):
        xception.groups_spectrum(8, kernel_size=-1)


@pytest.mark.parametrize("c, towers, segment, k, bias, act", [
    (32, 3, 8, 3, True, nn.ReLU), (5, 2, 3, 3, False, nn.ReLU), (7, 4, 1, 5, True, None),
    (6, 1, 4, 3, True, nn.ELU)])
def test_inception_equals_one_1x1_conv_plus_grouped_conv(c, towers, segment, k, bias, act):
    torch.manual_seed(0)
    inception = xception.SimplifiedInception(c, towers, segment, k, bias=bias, activation=act)
    grouped = xception.GroupedInception(c, towers, segment, k, bias=bias, activation=act)
    x = torch.randn(2, c, 9, 8)
    assert not torch.allclose(grouped(x), inception(x))  # different random weights before copying
    xception.copy_towers_to_grouped(inception, grouped)
    torch.testing.assert_close(grouped(x), inception(x))
    assert grouped.spatial.groups == towers
    assert costs.count_params(grouped) == costs.count_params(inception)
    # Independently: the towers computed by hand with F.conv2d on the grouped weights' slices.
    s = segment
    by_hand = []
    for t, tower in enumerate(inception.towers):
        y = F.conv2d(x, grouped.pointwise.weight[t * s:(t + 1) * s],
                     None if not bias else grouped.pointwise.bias[t * s:(t + 1) * s])
        y = act()(y) if act else y
        y = F.conv2d(y, grouped.spatial.weight[t * s:(t + 1) * s],
                     None if not bias else grouped.spatial.bias[t * s:(t + 1) * s], padding=k // 2)
        by_hand.append(act()(y) if act else y)
    torch.testing.assert_close(torch.cat(by_hand, 1), inception(x))


def test_extreme_inception_is_pointwise_then_depthwise():
    torch.manual_seed(1)
    extreme = xception.GroupedInception(6, 10, 1, bias=False, activation=None)
    dw = DepthwiseConv2d(10, 3, bias=False)
    dw.weight.data.copy_(extreme.spatial.weight)
    x = torch.randn(2, 6, 7, 7)
    torch.testing.assert_close(extreme(x), dw(extreme.pointwise(x)))
    assert costs.count_params(extreme) == 6 * 10 + 9 * 10


def test_copy_rejects_mismatched_modules():
    with pytest.raises(ValueError, match="differ"):
        xception.copy_towers_to_grouped(xception.SimplifiedInception(4, 2, 3),
                                        xception.GroupedInception(4, 3, 2))
    with pytest.raises(ValueError, match="biases"):
        xception.copy_towers_to_grouped(xception.SimplifiedInception(4, 2, 3),
                                        xception.GroupedInception(4, 2, 3, bias=False))
    with pytest.raises(ValueError, match="expects"):
        xception.copy_towers_to_grouped(nn.Identity(), xception.GroupedInception(4, 2, 3))
    with pytest.raises(ValueError, match="odd"):
        xception.SimplifiedInception(4, 2, 3, kernel_size=2)


def test_separable_unit_counts_like_keras():
    """Keras' SeparableConv2D(use_bias=False) + BatchNormalization: 9C + CM weights and 2M
    trainable BN parameters (the moving statistics are buffers)."""
    unit = xception.SeparableConvBN(728, 728)
    assert costs.count_params(unit) == 9 * 728 + 728 * 728 + 2 * 728
    assert isinstance(unit[0], DepthwiseSeparableConv2d)
    assert isinstance(unit[0].act1, nn.Identity)
    assert isinstance(xception.SeparableConvBN(4, 8, nn.ELU)[0].act1, nn.ELU)


def test_full_xception_has_the_papers_parameter_count():
    """Exact: the architecture is reproduced layer for layer (8 middle-flow repeats, 1000 classes),
    and the paper's number, like Keras', counts BN's scale and shift but not its statistics."""
    with torch.device("meta"):
        net = xception.Xception()
    assert costs.count_params(net) == xception.XCEPTION_PAPER_PARAMS == 22_855_952
    by_flow = xception.params_by_flow(net)
    assert sum(by_flow.values()) == xception.XCEPTION_PAPER_PARAMS
    # Independent arithmetic for the parts that are regular: 8 middle blocks of 3 units, and the
    # classifier 2048 -> 1000 with bias.
    assert by_flow["middle flow"] == 8 * 3 * (9 * 728 + 728 * 728 + 2 * 728)
    assert by_flow["classifier"] == 2048 * 1000 + 1000
    assert xception.INCEPTION_V3_PAPER_PARAMS > xception.XCEPTION_PAPER_PARAMS


def test_full_xception_feature_map_shapes_at_299():
    with torch.device("meta"):
        net = xception.Xception().eval()
    x = torch.zeros(2, 3, 299, 299, device="meta")
    assert tuple(net.entry(net.stem(x)).shape) == (2, 728, 19, 19)
    assert tuple(net.features(x).shape) == (2, 2048, 10, 10)  # as Keras' Xception(include_top=False)
    assert tuple(net(x).shape) == (2, 1000)


def test_small_xception_runs_and_has_residuals():
    torch.manual_seed(0)
    net = xception.Xception(in_channels=1, num_classes=10, stem=(4, 8), entry=(8, 16),
                            middle_repeats=1, exit_block=(16, 24), exit_convs=(32,))
    out = net(torch.randn(3, 1, 32, 32))
    assert out.shape == (3, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    middle = net.middle[0]
    assert isinstance(middle.shortcut, nn.Identity)
    # The residual really is added: zeroing the body leaves the input.
    for p in middle.body.parameters():
        p.data.zero_()
    x = torch.randn(2, 16, 4, 4)
    torch.testing.assert_close(middle.eval()(x), x)


def test_xception_rejects_bad_arguments():
    with pytest.raises(ValueError, match="middle_repeats"):
        xception.Xception(middle_repeats=-1)
    with pytest.raises(ValueError, match="stem"):
        xception.Xception(stem=(32,))
    with pytest.raises(ValueError, match="entry"):
        xception.Xception(entry=())
    with pytest.raises(ValueError, match="params_by_flow"):
        xception.params_by_flow(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="input"):
        xception.Xception(stem=(2, 2), entry=(2,), middle_repeats=0, exit_block=(2,),
                          exit_convs=(2,)).features(torch.zeros(3, 32, 32))


def test_separable_net_variants_differ_only_in_the_middle_slot():
    nets = {name: xception.separable_net(mid) for name, mid in xception.MID_ACTIVATIONS.items()}
    counts = {costs.count_params(n) for n in nets.values()}
    assert len(counts) == 1
    blocks = {name: [m for m in n if isinstance(m, DepthwiseSeparableConv2d)]
              for name, n in nets.items()}
    assert all(isinstance(b.act1, nn.Identity) for b in blocks["none"])
    assert all(isinstance(b.act1, nn.ReLU) for b in blocks["ReLU"])
    assert all(isinstance(b.act1, nn.ELU) and isinstance(b.act2, nn.ReLU) for b in blocks["ELU"])
    assert nets["none"](torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.fixture
def one_thread():
    """Tiny tensors: threads cost more than they gain (and far more on a shared machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_mid_activation_experiment_is_seeded_and_learns(one_thread):
    split = data.load_digits(8, seed=0)
    small = data.DigitsSplit(split.x_train[:192], split.y_train[:192], split.x_test[:64],
                             split.y_test[:64])
    variants = {"none": None}
    kwargs = dict(seeds=(0,), epochs=3, batch_size=64, widths=(4, 8))
    first = xception.mid_activation_experiment(small, variants, **kwargs)
    again = xception.mid_activation_experiment(small, variants, **kwargs)
    assert first["none"][0].val_metric == again["none"][0].val_metric
    assert first["none"][0].train_loss[-1] < first["none"][0].train_loss[0]
