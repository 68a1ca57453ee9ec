"""course_lib.autoencoder against PyTorch's own layers, scikit-learn's PCA and direct counting."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib import autoencoder as ae
from course_lib.separable import DepthwiseSeparableConv2d


@pytest.mark.parametrize("size,blocks", [(16, 2), (7, 1), (15, 3), (32, 4), (9, 0)])
def test_downsampled_sizes_match_strided_convs(size, blocks):
    x = torch.zeros(1, 1, size, size)
    expected = []
    for _ in range(blocks):
        x = F.conv2d(x, torch.zeros(1, 1, 3, 3), stride=2, padding=1)
        expected.append(x.shape[-1])
    assert ae.downsampled_sizes(size, blocks) == expected


@pytest.mark.parametrize("size,k,s,p,op", [(4, 3, 2, 1, 1), (4, 3, 2, 1, 0), (5, 4, 2, 1, 0),
                                           (3, 5, 3, 2, 2), (6, 1, 1, 0, 0)])
def test_transposed_output_size_matches_conv_transpose(size, k, s, p, op):
    layer = nn.ConvTranspose2d(1, 1, k, stride=s, padding=p, output_padding=op)
    assert ae.transposed_output_size(size, k, s, p, op) == layer(torch.zeros(1, 1, size, size)).shape[-1]


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="output_padding"):
        ae.transposed_output_size(4, 3, 2, 1, 2)
    with pytest.raises(ValueError, match="divisible"):
        ae.ConvAutoencoder(image_size=20, channels=(8, 16, 32))
    with pytest.raises(ValueError, match="decoder"):
        ae.ConvAutoencoder(decoder="pixelshuffle")
    with pytest.raises(ValueError, match="16x16"):
        ae.ConvAutoencoder(16)(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="n_components"):
        ae.PCA(300).fit(torch.rand(20, 1, 16, 16))
    with pytest.raises(ValueError, match="fit"):
        ae.PCA(2).encode(torch.rand(3, 4))


@pytest.mark.parametrize("decoder", ae.DECODERS)
@pytest.mark.parametrize("size,channels,latent", [(16, (16, 32), 8), (32, (8, 16, 32), 3)])
def test_autoencoder_shapes_and_structure(decoder, size, channels, latent):
    torch.manual_seed(0)
    model = ae.ConvAutoencoder(size, latent, channels, decoder).eval()
    x = torch.rand(5, 1, size, size)
    z = model.encoder(x)
    assert z.shape == (5, latent)
    y = model(x)
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    separable = [m for m in model.encoder.modules() if isinstance(m, DepthwiseSeparableConv2d)]
    assert len(separable) == len(channels) - 1
    assert all(m.depthwise.stride == (2, 2) for m in separable)
    # the bottleneck's input is the last feature map, flattened
    assert model.encoder[-1].in_features == ae.bottleneck_features(size, channels)
    kinds = {type(m) for m in model.decoder.modules()}
    assert (nn.ConvTranspose2d in kinds) == (decoder == "transposed")
    assert (nn.Upsample in kinds) == (decoder == "upsample")


def test_checkerboard_counts_overlaps():
    """Counting by hand: with kernel 3, stride 2, padding 1 each output row/column is covered by
    1 (even index) or 2 (odd index) input pixels, except the last one (output_padding), so a
    constant image becomes the outer product of those counts; upsample+conv is flat."""
    size = 5
    out = ae.checkerboard_demo(size)
    counts = torch.tensor([1.0 if i % 2 == 0 else 2.0 for i in range(2 * size)])
    counts[-1] = 1.0  # the extra row from output_padding sees only the last input pixel
    torch.testing.assert_close(out["transposed"], counts[:, None] * counts[None, :])
    torch.testing.assert_close(out["upsample"], torch.full((2 * size, 2 * size), 9.0))


def test_pca_matches_sklearn():
    from sklearn.decomposition import PCA as SkPCA

    g = torch.Generator().manual_seed(0)
    x_train, x_test = torch.rand(200, 1, 6, 6, generator=g), torch.rand(30, 1, 6, 6, generator=g)
    ours = ae.PCA(5).fit(x_train)
    sk = SkPCA(5, svd_solver="full").fit(x_train.reshape(200, -1).double().numpy())
    expected = sk.inverse_transform(sk.transform(x_test.reshape(30, -1).double().numpy()))
    torch.testing.assert_close(ours.reconstruct(x_test),
                               torch.as_tensor(expected, dtype=torch.float32).reshape(x_test.shape))
    torch.testing.assert_close(ours.explained_variance,
                               torch.as_tensor(sk.explained_variance_), rtol=1e-6, atol=1e-9)
    expected_mse = F.mse_loss(torch.as_tensor(expected).float(), x_test.reshape(30, -1)).item()
    assert ae.pca_reconstruction_mse(x_train, x_test, 5) == pytest.approx(expected_mse, rel=1e-5)


def test_pca_with_all_components_is_exact():
    x = torch.rand(50, 1, 4, 4)
    torch.testing.assert_close(ae.PCA(16).fit(x).reconstruct(x), x, atol=1e-5, rtol=0)


def test_reconstruction_mse_encode_and_interpolate():
    torch.manual_seed(0)
    model = ae.ConvAutoencoder(16, 4, (8, 16)).train()
    x = torch.rand(7, 1, 16, 16)
    model.eval()
    expected = F.mse_loss(model(x), x).item()
    model.train()
    assert ae.reconstruction_mse(model, x, batch_size=3) == pytest.approx(expected, rel=1e-5)
    assert model.training  # restored
    codes = ae.encode(model, x)
    assert codes.shape == (7, 4)
    path = ae.interpolate(model, x[0], x[1], steps=5)
    assert path.shape == (5, 1, 16, 16)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(path[0], model(x[:1])[0])
        torch.testing.assert_close(path[-1], model(x[1:2])[0])


def test_add_noise_is_seeded_and_clipped():
    x = torch.full((4, 1, 8, 8), 0.5)
    noisy_a = ae.add_noise(0.3)(x, torch.Generator().manual_seed(1))
    noisy_b = ae.add_noise(0.3)(x, torch.Generator().manual_seed(1))
    torch.testing.assert_close(noisy_a, noisy_b)
    assert not torch.equal(noisy_a, x) and noisy_a.min() >= 0 and noisy_a.max() <= 1


def test_short_training_is_deterministic_and_learns():
    from course_lib.data import load_digits
    from course_lib.training import fit, seeded

    d = load_digits(16)
    results = []
    for _ in range(2):
        seeded(3)
        model = ae.ConvAutoencoder(16, 8, (8, 16), "transposed")
        before = ae.reconstruction_mse(model, d.x_test)
        fit(model, d.x_train[:256], d.x_train[:256], loss_fn=F.mse_loss, epochs=3, lr=5e-3,
            seed=3, progress=False)
        results.append(ae.reconstruction_mse(model, d.x_test))
    assert results[0] == results[1]
    assert results[0] < before
