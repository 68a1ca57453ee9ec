"""MobileNetV1 against the paper (arXiv 1704.04861), DESIGN.md's reference counts, and the
network's own measured costs (FlopCounterMode, parameter count)."""
import math

import pytest
import torch
from torch import nn

from course_lib import costs, mobilenet as mn
from course_lib.depthwise import DepthwiseConv2d
from course_lib.separable import DepthwiseSeparableConv2d


def _meta_macs(model: nn.Module, resolution: int) -> int:
    """Measured MACs of one image, on the meta device (shapes only, no compute)."""
    with torch.device("meta"):
        return costs.measure_macs(model.to("meta").eval(),
                                  torch.empty(1, model.in_channels, resolution, resolution))


# --- the paper's tables ---------------------------------------------------------------------

def test_design_reference_counts_at_224():
    """DESIGN.md: 568.7 M MACs and 4,231,976 parameters with BatchNorm."""
    model = mn.MobileNetV1()
    assert costs.count_params(model) == 4_231_976
    macs = _meta_macs(model, 224)
    assert round(macs / 1e6, 1) == 568.7
    assert macs == mn.total_macs()  # the closed-form specs agree with the measurement


@pytest.mark.parametrize("alpha", [1.0, 0.75, 0.5, 0.25])
def test_table6_width_multiplier_rounds_to_paper(alpha):
    row = {r.name: r for r in mn.table6()}[f"{alpha:g} MobileNet-224"]
    _, paper_macs, paper_params = mn.PAPER["table6"][alpha]
    assert round(row.macs_m) == paper_macs
    assert round(row.params_m, 1) == paper_params
    # the table's numbers are the real network's, measured
    assert row.macs_m * 1e6 == _meta_macs(mn.MobileNetV1(alpha), 224)


@pytest.mark.parametrize("resolution", [224, 192, 160, 128])
def test_table7_resolution_multiplier(resolution):
    row = {r.name: r for r in mn.table7()}[f"1.0 MobileNet-{resolution}"]
    _, paper_macs, paper_params = mn.PAPER["table7"][resolution]
    assert row.macs_m * 1e6 == _meta_macs(mn.MobileNetV1(), resolution)
    assert round(row.params_m, 1) == paper_params
    # The paper scaled the 224 total by rho^2 (FC included): that rounds to every printed value.
    assert round(mn.rho_scaled_macs_m(resolution)) == paper_macs
    if resolution == 160:
        # exact 290.7 M vs printed 290: within 0.25%, and the row says why
        assert abs(row.macs_m - paper_macs) / paper_macs < 0.0025
        assert "rho" in row.note and round(row.macs_m) != paper_macs
    else:
        assert round(row.macs_m) == paper_macs and row.note == ""


def test_table4_conv_mobilenet_within_0_1_percent():
    rows = {r.name: r for r in mn.table4()}
    conv, mobile = rows["Conv MobileNet"], rows["MobileNet"]
    assert abs(conv.macs_m - 4866) / 4866 < 1e-3
    assert abs(conv.params_m - 29.3) / 29.3 < 1e-3
    assert round(mobile.macs_m) == 569 and round(mobile.params_m, 1) == 4.2
    full = mn.ConvMobileNet()
    bn = sum(p.numel() for m in full.modules() if isinstance(m, nn.BatchNorm2d)
             for p in m.parameters())
    assert costs.count_params(full) - bn == conv.params_m * 1e6
    assert _meta_macs(full, 224) == conv.macs_m * 1e6


def test_table2_shares_and_the_erratum():
    rows = {r.kind: r for r in mn.table2()}
    assert math.isclose(sum(r.macs_pct for r in rows.values()), 100.0)
    assert math.isclose(sum(r.params_pct for r in rows.values()), 100.0)
    for kind, row in rows.items():
        assert abs(row.params_pct - row.paper_params_pct) < 0.05, kind
        if kind == "Conv 3x3":
            # printed 1.19%, counts to 1.91% (digits swapped); flagged in the note
            assert round(row.macs_pct, 2) == 1.91 and row.paper_macs_pct == 1.19
            assert "1.19" in row.note and "1.91" in row.note
        else:
            assert round(row.macs_pct, 2) == row.paper_macs_pct, kind
        # The printed parameter shares (74.59 / 24.33) are those of a count without the FC
        # layer's 1,000 biases; with them the shares are 74.57 / 24.35. The note says so.
        if kind in ("Conv 1x1", "FC"):
            assert round(row.params_pct, 2) != row.paper_params_pct
            assert "leave out the FC layer's 1,000 biases" in row.note
        elif kind != "Conv 3x3":
            assert row.note == ""
    assert (round(rows["Conv 1x1"].params_pct, 2), round(rows["FC"].params_pct, 2)) == \
        (74.57, 24.35)
    # the printed column does not sum to 100: that is how the misprint shows
    assert round(sum(r.paper_macs_pct for r in rows.values()), 2) == 99.29


def test_table2_layer_types_match_the_modules():
    """Closed-form shares by kind equal the measured per-module summary of the real network."""
    with torch.device("meta"):
        summary = costs.summarize(mn.MobileNetV1().eval(), torch.empty(1, 3, 224, 224))
    by_kind = summary.by_kind()
    specs = mn.layer_specs()
    assert by_kind["DepthwiseConv2d"][1] == sum(s.macs for s in specs if s.kind == "Conv DW 3x3")
    assert by_kind["PointwiseConv2d"][1] == sum(s.macs for s in specs if s.kind == "Conv 1x1")
    assert by_kind["Conv2d"][1] == sum(s.macs for s in specs if s.kind == "Conv 3x3")
    assert by_kind["Linear"] == (1025 * 1000, 1024 * 1000)


def test_format_rows_shows_both_columns():
    text = mn.format_rows(mn.table6())
    assert "(paper)" in text and "568.7" in text and "569" in text
    assert "misprint" in mn.format_rows(mn.table2())


# --- the architecture -----------------------------------------------------------------------

def test_table1_shapes_strides_and_erratum():
    with torch.device("meta"):  # shapes only
        model = mn.MobileNetV1().eval()
        x = torch.empty(1, 3, 224, 224)
    sizes = []
    h = model.stem(x)
    assert h.shape[-1] == 112
    for block in model.blocks:
        assert isinstance(block, DepthwiseSeparableConv2d)
        h = block(h)
        sizes.append(h.shape[-1])
    assert sizes == [112, 56, 56, 28, 28, 14, 14, 14, 14, 14, 14, 7, 7]
    # erratum: the last depthwise layer has stride 1 (the paper's Table 1 prints 2)
    assert model.blocks[-1].depthwise.stride == (1, 1)
    assert model(x).shape == (1, 1000)
    assert len(mn.architecture_rows()) == 1 + 2 * 13 + 1


def test_bn_relu_after_every_conv():
    model = mn.MobileNetV1()
    block = model.blocks[0]
    assert isinstance(block.bn1, nn.BatchNorm2d) and isinstance(block.act1, nn.ReLU)
    assert isinstance(block.bn2, nn.BatchNorm2d) and isinstance(block.act2, nn.ReLU)
    assert isinstance(model.stem[1], nn.BatchNorm2d) and isinstance(model.stem[2], nn.ReLU)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == len(bns) == 27 and all(c.bias is None for c in convs)


@pytest.mark.parametrize("alpha", [0.75, 0.5, 0.25])
def test_width_multiplier_thins_every_layer(alpha):
    """Including the five 512-channel blocks that a widely copied version forgets."""
    model = mn.MobileNetV1(alpha)
    full = mn.MobileNetV1(1.0)
    for thin, wide in zip([m for m in model.modules() if isinstance(m, nn.Conv2d)],
                          [m for m in full.modules() if isinstance(m, nn.Conv2d)]):
        assert thin.out_channels == int(wide.out_channels * alpha)
        if not isinstance(thin, DepthwiseConv2d) and thin is not model.stem[0]:
            assert thin.in_channels == int(wide.in_channels * alpha)
    assert model.classifier.in_features == int(1024 * alpha)
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 1000)


def test_conv_mobilenet_uses_full_convs():
    model = mn.ConvMobileNet(0.5, num_classes=10, in_channels=1)
    assert not any(isinstance(m, DepthwiseConv2d) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 14 and all(c.kernel_size == (3, 3) and c.groups == 1 for c in convs)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_small_inputs_and_channels():
    model = mn.MobileNetV1(0.25, num_classes=10, in_channels=1)
    assert model(torch.zeros(3, 1, 32, 32)).shape == (3, 10)


@pytest.mark.parametrize("alpha", [0, -0.5, float("nan"), float("inf"), "1", True, 0.01])
def test_bad_alpha_is_a_value_error(alpha):
    with pytest.raises(ValueError, match="alpha"):
        mn.MobileNetV1(alpha)


@pytest.mark.parametrize("resolution", [16, 31, 224.0, "224", True])
def test_bad_resolution_is_a_value_error(resolution):
    with pytest.raises(ValueError, match="resolution"):
        mn.layer_specs(1.0, resolution)


def test_bad_inputs_are_value_errors():
    model = mn.MobileNetV1(0.25)
    with pytest.raises(ValueError, match="at least 32x32"):
        model(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="3 input channels"):
        model(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="dimensions"):
        model(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="num_classes"):
        mn.MobileNetV1(num_classes=0)


def test_table4_conv_mobilenet_printed_count_leaves_out_the_fc_layer():
    rows = {r.name: r for r in mn.table4()}
    conv = rows["Conv MobileNet"]
    assert f"{conv.macs_m:,.1f}" == "4,867.3" and conv.paper_macs_m == 4866
    assert round(conv.macs_m - 1000 * 1024 / 1e6) == 4866  # 1024 -> 1000 FC mult-adds
    assert "without the FC layer" in conv.note and rows["MobileNet"].note == ""


def test_tables_8_and_10_recompute_the_mobilenet_rows():
    t8 = {r.name: r for r in mn.table8()}
    assert round(t8["1.0 MobileNet-224"].macs_m) == 569
    assert math.isnan(t8["VGG 16"].macs_m) and t8["VGG 16"].paper_params_m == 138
    t10 = {r.name: r for r in mn.table10()}
    for name, row in t10.items():
        if name.startswith(("0.75", "1.0")):
            # 120 classes: the body's parameters plus a 120-way classifier
            alpha = float(name.split()[0])
            features = int(1024 * alpha)
            body = mn.total_params(alpha) - (features * 1000 + 1000)
            assert round(row.params_m * 1e6) == body + features * 120 + 120
            assert round(row.params_m, 1) == row.paper_params_m, name
    # the 1.0 rows print the 1000-class mult-adds (568.7 -> 569, not 567.8 -> 568)
    assert "1000-class" in t10["1.0 MobileNet-224"].note
    assert t10["0.75 MobileNet-224"].note == "" and round(t10["0.75 MobileNet-224"].macs_m) == 325
