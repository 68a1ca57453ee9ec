"""torchinfo's footer arithmetic (torchinfo is not installed: the expected values are computed here
from the layer shapes by hand) and autograd's saved activations."""
import torch
from torch import nn

from course_lib import costs, memory, mobilenet


def test_torchinfo_estimate_of_mobilenet_batch_2_from_the_layer_list():
    batch = 2
    with torch.device("meta"):  # shapes only: the estimate needs no arithmetic
        model = mobilenet.MobileNetV1()
        est = memory.torchinfo_estimate(model, (batch, 3, 224, 224))
    specs = mobilenet.layer_specs()
    convs = [s for s in specs if s.kind != "FC"]
    # every conv and its BatchNorm output a (C_out, H, W) map; the FC 1000 logits; x2 gradients
    outputs = sum(2 * s.out_channels * s.out_size ** 2 for s in convs) + 1000
    assert est.forward_backward_bytes == batch * 4 * 2 * outputs
    assert est.input_bytes == batch * 3 * 224 * 224 * 4
    assert est.params_bytes == 4 * costs.count_params(model)
    bn = sum(2 * s.out_channels for s in convs)
    assert est.mult_adds == batch * (mobilenet.total_macs() + 1000 + bn)  # FC bias, BN scale/shift
    assert round(est.forward_backward_bytes / 1e6) == 161  # the seeds' torchinfo figure
    assert f"{est.mult_adds / 1e9:.2f}" == "1.14"


def test_saved_activations_of_a_conv_relu():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
    x = torch.randn(2, 3, 16, 16)
    # the conv keeps its input, the ReLU its output; the weight is a parameter, not counted
    assert memory.saved_activation_bytes(model, x) == 4 * (x.numel() + 2 * 8 * 14 * 14)
