"""course_lib.costs: closed-form counts agree with real layers and with FlopCounterMode."""
import pytest
import torch
from torch import nn

from course_lib.costs import (conv2d_macs, conv2d_params, count_params, linear_macs,
                              linear_params, measure_macs, summarize)


@pytest.mark.parametrize("c,m,k,groups,bias", [(3, 16, 3, 1, True), (3, 16, 3, 1, False),
                                               (32, 32, 3, 32, False), (64, 128, 1, 1, True),
                                               (12, 24, (3, 5), 4, True)])
def test_conv_params_match_nn_conv2d(c, m, k, groups, bias):
    assert conv2d_params(c, m, k, groups, bias) == count_params(
        nn.Conv2d(c, m, k, groups=groups, bias=bias))


@pytest.mark.parametrize("c,m,k,groups,size,stride", [(3, 32, 3, 1, 224, 2), (32, 32, 3, 32, 112, 1),
                                                      (32, 64, 1, 1, 112, 1), (12, 24, 5, 4, 17, 3)])
def test_conv_macs_match_flop_counter(c, m, k, groups, size, stride):
    layer = nn.Conv2d(c, m, k, stride=stride, groups=groups, padding=k // 2)
    out = layer(torch.zeros(1, c, size, size))
    measured = measure_macs(layer, (1, c, size, size))
    assert conv2d_macs(c, m, k, tuple(out.shape[-2:]), groups) == measured
    # Independent arithmetic: every output value costs K*K*C/groups multiply-adds.
    assert measured == out.numel() * k * k * c // groups


def test_paper_example_first_mobilenet_layer():
    """MobileNetV1's first layer: 3x3x3x32 conv, stride 2, 224 -> 112: 10.8 M mult-adds, 864
    weights (the paper's Table 1 shapes)."""
    assert conv2d_params(3, 32, 3, bias=False) == 864
    assert conv2d_macs(3, 32, 3, 112) == 10_838_016


def test_linear_counts():
    assert linear_params(1024, 1000) == count_params(nn.Linear(1024, 1000))
    assert linear_macs(1024, 1000, batch_size=2) == measure_macs(nn.Linear(1024, 1000), (2, 1024))


def test_summary_rows_add_up_and_shares_sum_to_one():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 16, 1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    summary = summarize(model, (1, 3, 10, 10))
    assert [l.kind for l in summary.layers] == ["Conv2d", "BatchNorm2d", "Conv2d", "Conv2d",
                                                "Linear"]
    assert sum(l.params for l in summary.layers) == summary.total_params == count_params(model)
    assert sum(l.macs for l in summary.layers) == summary.total_macs
    assert summary.layers[2].macs == 8 * 9 * 100  # depthwise: K*K per channel per pixel
    assert summary.layers[2].output_shape == (1, 8, 10, 10)
    assert abs(sum(summary.share(l) for l in summary.layers) - 1) < 1e-9
    assert summary.by_kind()["Conv2d"][1] == 3 * 8 * 9 * 100 + 8 * 9 * 100 + 8 * 16 * 100
    text = str(summary)
    assert "share of MACs" in text and "total" in text
    assert "<table>" in summary._repr_html_()
    assert len(summarize(model, (1, 3, 10, 10), include_zero_cost=True).layers) == 8


@pytest.mark.parametrize("call, message", [
    (lambda: conv2d_params(3, 16, 3, groups=2), "groups=2 must divide in_channels=3"),
    (lambda: conv2d_params(0, 16, 3), "in_channels must be a positive int"),
    (lambda: conv2d_macs(3, 16, 0, 10), "kernel_size must be >= 1"),
    (lambda: conv2d_macs(3, 16, 3, (10, 10, 10)), "output_size must be an int or a pair"),
    (lambda: measure_macs("model", (1, 3)), "expects an nn.Module"),
    (lambda: measure_macs(nn.Linear(2, 2), (1, 0)), "positive sizes"),
])
def test_bad_input_names_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()
