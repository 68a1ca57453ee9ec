"""BatchNorm folding against PyTorch's own eval-mode output (conv then BatchNorm), for full,
depthwise and biased convs and for a whole MobileNetV1."""
import pytest
import torch
from torch import nn

from course_lib import costs, folding, mobilenet
from course_lib.separable import DepthwiseSeparableConv2d


def _trained_statistics(bn: nn.BatchNorm2d, seed: int) -> None:
    """Non-trivial running statistics and affine parameters, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) * 3 + 0.1)
        bn.weight.copy_(torch.randn(bn.num_features, generator=g))
        bn.bias.copy_(torch.randn(bn.num_features, generator=g))


@pytest.mark.parametrize("groups, bias, stride", [(1, False, 1), (1, True, 2), (8, False, 1),
                                                  (2, True, 1)])
def test_fold_equals_conv_then_batchnorm_in_eval_mode(groups, bias, stride):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16 if groups != 8 else 8, 3, stride=stride, padding=1, groups=groups,
                     bias=bias)
    bn = nn.BatchNorm2d(conv.out_channels)
    _trained_statistics(bn, 1)
    reference = nn.Sequential(conv, bn).eval()
    x = torch.randn(2, 8, 11, 11)
    folded = folding.fold_batchnorm(conv, bn)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), reference(x), rtol=1e-5, atol=1e-5)
    assert folded.bias is not None and (conv.bias is not None) == bias  # the original unchanged
    assert type(folded) is type(conv)


def test_fold_a_whole_mobilenet_and_it_loses_every_batchnorm():
    torch.manual_seed(0)
    model = mobilenet.MobileNetV1(alpha=0.25, num_classes=10)
    for i, bn in enumerate(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        _trained_statistics(bn, i)
    model.eval()
    folded = folding.fold_batchnorms(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # a copy: model intact
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    n_bn = sum(2 * m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    n_conv = sum(1 for m in model.modules() if isinstance(m, nn.Conv2d))
    bias = sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    assert n_conv == 27
    assert costs.count_params(folded) == costs.count_params(model) - n_bn + bias


def test_separable_block_pairs_and_bad_input():
    block = DepthwiseSeparableConv2d(4, 6).eval()
    folded = folding.fold_batchnorms(block)
    assert isinstance(folded.bn1, nn.Identity) and isinstance(folded.bn2, nn.Identity)
    with pytest.raises(ValueError, match="6 output channels"):
        folding.fold_batchnorm(nn.Conv2d(3, 6, 1), nn.BatchNorm2d(5))
    with pytest.raises(ValueError, match="BatchNorm2d second"):
        folding.fold_batchnorm(nn.Conv2d(3, 6, 1), nn.ReLU())
    with pytest.raises(ValueError, match="running statistics"):
        folding.fold_batchnorm(nn.Conv2d(3, 6, 1),
                               nn.BatchNorm2d(6, track_running_stats=False))
