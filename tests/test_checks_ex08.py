"""Exercise 8's checks: reference answers (course_lib.autoencoder) pass with nothing on stderr;
realistic wrong answers fail with a message that names the mistake."""
import contextlib
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import course_lib.checks.ex08_autoencoder as checks
from course_lib import autoencoder as ae
from course_lib.checks import CheckFailed
from course_lib.training import fit, seeded


def failure(check, *args, **kwargs) -> str:
    with pytest.raises(CheckFailed) as info:
        check(*args, **kwargs)
    return str(info.value)


def reference_downsampled(size, blocks):
    return ae.downsampled_sizes(size, blocks)[-1] if blocks else size


def reference_pca(x_train, x, k):
    return ae.PCA(k).fit(x_train).reconstruct(x)


def reference_build(latent):
    return ae.ConvAutoencoder(16, latent, (16, 32), "transposed")


@pytest.fixture(scope="module")
def trained():
    """The reference recipe of part 4 (also the one the notebook uses to justify the threshold)."""
    torch.set_num_threads(1)
    data = checks.digits()
    seeded(0)
    model = reference_build(checks.LATENT_DIM)
    history = fit(model, data.x_train, data.x_train, loss_fn=F.mse_loss, epochs=15,
                  batch_size=128, lr=6e-3, seed=0, progress=False)
    return model, history


@pytest.mark.parametrize("hidden", [False, True])
def test_reference_answers_pass_without_stderr(hidden):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        checks.check_downsampled_size(reference_downsampled, hidden=hidden)
        checks.check_transposed_output_size(ae.transposed_output_size, hidden=hidden)
        checks.check_autoencoder(reference_build, hidden=hidden)
        checks.check_autoencoder(lambda k: ae.ConvAutoencoder(16, k, (8, 16), "upsample"),
                                 hidden=hidden)
        checks.check_pca_reconstruct(reference_pca, hidden=hidden)
    assert stderr.getvalue() == ""


def test_threshold_is_between_reference_and_pca(trained):
    model, history = trained
    mse = checks.model_test_mse(model)
    assert mse < checks.MSE_THRESHOLD < checks.reference_pca_mse(checks.LATENT_DIM)
    # the reference PCA MSE is the torch PCA's too (independent implementations agree)
    data = checks.digits()
    assert checks.reference_pca_mse(8) == pytest.approx(
        ae.pca_reconstruction_mse(data.x_train, data.x_test, 8), rel=1e-5)


def test_trained_model_passes_and_by_number(trained):
    model, history = trained
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        checks.check_trained(model)
        checks.check_trained(model, history, hidden=True)
        mse = checks.model_test_mse(model)
        pca = checks.reference_pca_mse(checks.LATENT_DIM)
        needed = next(k for k in range(1, 257) if checks.reference_pca_mse(k) <= mse)
        checks.check_versus_pca(model, pca, needed, 32)
    assert stderr.getvalue() == ""
    assert "smallest k" in failure(checks.check_versus_pca, model, pca, needed - 1, 32)
    assert "not the reverse" in failure(checks.check_versus_pca, model, pca, needed, 0)
    assert "pca_mse" in failure(checks.check_versus_pca, model, pca * 1.1, needed, 32)


def test_untrained_model_fails_with_advice():
    torch.manual_seed(0)
    msg = failure(checks.check_trained, reference_build(checks.LATENT_DIM))
    assert "must be below" in msg and "untrained" in msg
    torch.manual_seed(0)
    msg = failure(checks.check_versus_pca, reference_build(checks.LATENT_DIM),
                  checks.reference_pca_mse(8), 8, 32)
    assert "does not beat PCA" in msg


def test_wrong_latent_size_is_named():
    torch.manual_seed(0)
    assert "codes of 8 numbers" in failure(checks.check_trained, reference_build(4))


def test_downsampled_size_floor_mistake():
    msg = failure(checks.check_downsampled_size, lambda size, n: size // 2 ** n)
    assert "rounds an odd size UP" in msg


def test_transposed_output_size_mistakes():
    no_op = failure(checks.check_transposed_output_size,
                    lambda n, k, s=1, p=0, op=0: (n - 1) * s - 2 * p + k)
    assert "forgot output_padding" in no_op
    conv_formula = failure(checks.check_transposed_output_size,
                           lambda n, k, s=1, p=0, op=0: (n + 2 * p - k) // s + 1)
    assert "ordinary conv" in conv_formula


def test_build_autoencoder_mistakes():
    class NoSeparable(nn.Module):
        def __init__(self, latent):
            super().__init__()
            self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(256, latent))
            self.decoder = nn.Sequential(nn.Linear(latent, 256), nn.Unflatten(1, (1, 16, 16)))

        def forward(self, x):
            return self.decoder(self.encoder(x))

    assert "DepthwiseSeparableConv2d(..., stride=2)" in failure(checks.check_autoencoder,
                                                                NoSeparable)

    def no_output_padding(latent):
        model = reference_build(latent)
        model.decoder[3][0] = nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, bias=False)
        model.decoder[4] = nn.ConvTranspose2d(16, 1, 3, stride=2, padding=1, output_padding=1)
        return model

    msg = failure(checks.check_autoencoder, no_output_padding)
    assert "output_padding=1" in msg and "(6, 1, 16, 16)" in msg

    def no_sigmoid(latent):
        model = reference_build(latent)
        model.decoder[-1] = nn.Identity()
        with torch.no_grad():
            model.decoder[-2].bias.fill_(-5.0)  # make sure the output leaves [0, 1]
        return model

    assert "nn.Sigmoid()" in failure(checks.check_autoencoder, no_sigmoid)

    def stub(latent):
        raise NotImplementedError()

    assert "not implemented yet" in failure(checks.check_autoencoder, stub)


def test_pca_mistakes_are_named():
    def as_given(x_train, x, k):  # the notebook's buggy version
        flat = x_train.reshape(len(x_train), -1)
        vh = torch.linalg.svd(flat - flat.mean(0), full_matrices=False)[2][:k]
        return ((x.reshape(len(x), -1) @ vh.T) @ vh).reshape(x.shape)

    assert "still the bug" in failure(checks.check_pca_reconstruct, as_given)

    def uncentred(x_train, x, k):
        vh = torch.linalg.svd(x_train.reshape(len(x_train), -1), full_matrices=False)[2][:k]
        return ((x.reshape(len(x), -1) @ vh.T) @ vh).reshape(x.shape)

    assert "without centring" in failure(checks.check_pca_reconstruct, uncentred)

    def own_mean(x_train, x, k):
        flat = x_train.reshape(len(x_train), -1)
        vh = torch.linalg.svd(flat - flat.mean(0), full_matrices=False)[2][:k]
        m = x.reshape(len(x), -1).mean(0)
        return (((x.reshape(len(x), -1) - m) @ vh.T) @ vh + m).reshape(x.shape)

    assert "mean of x_train (not of x)" in failure(checks.check_pca_reconstruct, own_mean)
    assert "wrong shape" in failure(checks.check_pca_reconstruct,
                                    lambda a, x, k: reference_pca(a, x, k).flatten(1))
