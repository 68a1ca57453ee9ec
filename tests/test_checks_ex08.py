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
from exercise_helpers import as_student, case_sets, run_all_cases


def failure(check, *args, **kwargs) -> str:
    with pytest.raises(CheckFailed) as info:
        check(*args, **kwargs)
    return str(info.value)


# course_lib's own functions and classes refuse while a student's function runs: the answers
# below are student-style code, private copies, or models built before the check starts.
def reference_downsampled(size, blocks):
    for _ in range(blocks):
        size = (size + 2 - 3) // 2 + 1
    return size


def reference_pca(x_train, x, k):
    flat = x_train.reshape(len(x_train), -1)
    mean = flat.mean(0)
    vh = torch.linalg.svd(flat - mean, full_matrices=False)[2][:k]
    return (((x.reshape(len(x), -1) - mean) @ vh.T) @ vh + mean).reshape(x.shape)


transposed_output_size = as_student(ae.transposed_output_size)


def reference_build(latent):
    """course_lib's reference model, built outside any check (used to train and by number)."""
    return ae.ConvAutoencoder(16, latent, (16, 32), "transposed")


def prebuilt(channels=(16, 32), decoder="transposed"):
    """A build_autoencoder answer that returns models made before the check runs."""
    models = {k: ae.ConvAutoencoder(16, k, channels, decoder) for k in (2, 3, 5, 8, 32)}
    return lambda latent: models[latent]


def train_reference(seed: int = 0, epochs: int = 15):
    """The reference recipe of part 4 (the one behind the notebook's threshold)."""
    torch.set_num_threads(1)
    data = checks.digits()
    seeded(seed)
    model = reference_build(checks.LATENT_DIM)
    history = fit(model, data.x_train, data.x_train, loss_fn=F.mse_loss, epochs=epochs,
                  batch_size=128, lr=6e-3, seed=seed, progress=False)
    return model, history


RECIPE = dict(epochs=15, batch_size=128, lr=6e-3)


def _notebook_builder():
    """The solution notebook's build_autoencoder, as a student's code (nn layers and
    DepthwiseSeparableConv2d; course_lib's ConvAutoencoder would refuse in the check)."""
    from course_lib.separable import DepthwiseSeparableConv2d
    from exercise_variants import solution_sources

    namespace = {"nn": nn, "torch": torch, "DepthwiseSeparableConv2d": DepthwiseSeparableConv2d,
                 "downsampled_size": reference_downsampled}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(solution_sources("ex08_autoencoder")["part2"], namespace)
    return namespace["build_autoencoder"]


student_build = _notebook_builder()


@pytest.fixture(scope="module")
def trained():
    """The student's model trained with RECIPE, as part 4's cell does: the check's own re-training
    (one 15-epoch training serves the fixture and the checks, which find it in their cache)."""
    torch.set_num_threads(1)
    return checks.retrain(student_build, RECIPE, 0)


def test_reference_answers_pass_without_stderr():
    """Visible and hidden cases (the hidden ones read from the solution notebook)."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        run_all_cases("ex08_autoencoder", [
            (checks.check_downsampled_size, reference_downsampled),
            (checks.check_transposed_output_size, transposed_output_size),
            (checks.check_autoencoder, prebuilt()),
            (checks.check_autoencoder, prebuilt((8, 16), "upsample")),
            (checks.check_pca_reconstruct, reference_pca),
        ])
    assert stderr.getvalue() == ""


def test_course_lib_autoencoder_is_refused():
    msg = failure(checks.check_autoencoder, reference_build)
    assert "not course_lib's ConvAutoencoder" in msg
    assert "PCA itself" in failure(checks.check_pca_reconstruct,
                                   lambda a, x, k: ae.PCA(k).fit(a).reconstruct(x))


@pytest.mark.slow   # three 15-epoch trainings
def test_recorded_reference_runs_justify_the_threshold():
    """The numbers the notebook shows instead of training (checks.REFERENCE_TEST_MSE) are what
    the reference recipe gives, and the threshold sits between them and PCA."""
    for seed, recorded in checks.REFERENCE_TEST_MSE.items():
        model, _ = train_reference(seed)
        assert ae.reconstruction_mse(model, checks.digits().x_test) == pytest.approx(recorded,
                                                                                     rel=0.05)
    assert max(checks.REFERENCE_TEST_MSE.values()) < checks.MSE_THRESHOLD \
        < checks.reference_pca_mse(checks.LATENT_DIM)


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
        for kwargs in case_sets("ex08_autoencoder", "check_trained"):
            checks.check_trained(student_build, RECIPE, model, history, **kwargs)
        mse = checks.model_test_mse(model)
        pca = checks.reference_pca_mse(checks.LATENT_DIM)
        needed = next(k for k in range(1, 257) if checks.reference_pca_mse(k) <= mse)
        checks.check_versus_pca(model, pca, needed, 32)
    assert stderr.getvalue() == ""
    assert "smallest k" in failure(checks.check_versus_pca, model, pca, needed - 1, 32)
    assert "not the reverse" in failure(checks.check_versus_pca, model, pca, needed, 0)
    assert "pca_mse" in failure(checks.check_versus_pca, model, pca * 1.1, needed, 32)


def test_model_trained_on_other_data_fails(trained):
    """A `model` much better on the test images than RECIPE gives on the training images alone
    (e.g. trained on train + test) fails, though the re-trained model passes."""
    model, history = trained
    data = checks.digits()
    cheat = student_build(checks.LATENT_DIM)
    cheat.load_state_dict(model.state_dict())
    with contextlib.redirect_stderr(io.StringIO()):
        fit(cheat, data.x_test, data.x_test, loss_fn=F.mse_loss, epochs=15, batch_size=64,
            lr=3e-3, seed=1, progress=False)
    assert checks.model_test_mse(cheat) < checks.OWN_MODEL_TOLERANCE * checks.model_test_mse(model)
    msg = failure(checks.check_trained, student_build, RECIPE, cheat, history)
    assert "must not train it" in msg


def test_recipe_and_history_are_checked(trained):
    from types import SimpleNamespace

    model, history = trained
    assert "name the result of fit(...) `history`" in failure(
        checks.check_trained, student_build, RECIPE, model, None)
    assert "did not go down" in failure(checks.check_trained, student_build, RECIPE, model,
                                        SimpleNamespace(train_loss=[0.01, 0.02]))
    assert "RECIPE['epochs']" in failure(checks.check_trained, student_build,
                                         dict(RECIPE, epochs=500), model, history)


def test_short_recipe_is_told_to_train_longer(trained):
    """A 2-epoch recipe does not reach the threshold: the advice says so. With the model and
    history of a longer training, the advice says to train `model` with RECIPE itself."""
    short = dict(RECIPE, epochs=2)
    model, history = checks.retrain(student_build, short, 0)
    msg = failure(checks.check_trained, student_build, short, model, history)
    assert "must be below" in msg and "train longer" in msg
    msg = failure(checks.check_trained, student_build, short, *trained)
    assert "must be below" in msg and "with exactly RECIPE" in msg
    torch.manual_seed(0)
    msg = failure(checks.check_versus_pca, reference_build(checks.LATENT_DIM),
                  checks.reference_pca_mse(8), 8, 32)
    assert "does not beat PCA" in msg


def test_too_many_parameters_are_refused():
    def big(latent):
        model = student_build(latent)
        model.decoder[0] = nn.Linear(latent, 32 * 16)
        model.encoder.append(nn.Linear(latent, 4096))
        model.encoder.append(nn.Linear(4096, latent))
        return model
    assert "a few tens of thousands" in failure(checks.check_autoencoder, big)


def test_transposed_hints_are_not_ambiguous():
    """(4, 3, 2, 1, 1): output_padding added twice and padding subtracted once both give 9, so
    neither is named there; (6, 3, 3, 2, 1) tells them apart."""
    right = lambda n, k, s=1, p=0, op=0: (n - 1) * s - 2 * p + k + op  # noqa: E731
    twice = failure(checks.check_transposed_output_size,
                    lambda n, k, s=1, p=0, op=0: right(n, k, s, p, op) + op)
    assert "(4, 3, 2, 1, 1)" in twice and "Hint" not in twice
    twice = failure(checks.check_transposed_output_size,
                    lambda n, k, s=1, p=0, op=0: right(n, k, s, p, op) + (op if p != op else 0))
    assert "added once, not twice" in twice
    once = failure(checks.check_transposed_output_size,
                   lambda n, k, s=1, p=0, op=0: right(n, k, s, p, op)
                   + (p if (n, k, s, p, op) == (6, 3, 3, 2, 1) else 0))
    assert "BOTH ends" in once


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

    models = prebuilt()

    def no_output_padding(latent):
        model = models(latent)
        model.decoder[3][0] = nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, bias=False)
        model.decoder[4] = nn.ConvTranspose2d(16, 1, 3, stride=2, padding=1, output_padding=1)
        return model

    msg = failure(checks.check_autoencoder, no_output_padding)
    assert "output_padding=1" in msg and "(6, 1, 16, 16)" in msg

    models = prebuilt()

    def no_sigmoid(latent):
        model = models(latent)
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


def test_wrong_latent_size_is_named(trained):
    _, history = trained
    torch.manual_seed(0)
    assert "codes of 8 numbers" in failure(checks.check_trained, student_build, RECIPE,
                                           reference_build(4), history)


def test_part5_messages_never_let_the_answers_be_recovered(trained):
    """Part 5 is by number too: the leak test of tests/test_checks_integrity.py over its inputs."""
    from test_checks_integrity import recoverable, wrong_inputs

    model, _ = trained
    mse = checks.model_test_mse(model)
    right = [checks.reference_pca_mse(checks.LATENT_DIM),
             next(k for k in range(1, 257) if checks.reference_pca_mse(k) <= mse), 16 * 16 // 8]
    with contextlib.redirect_stdout(io.StringIO()):
        checks.check_versus_pca(model, *right)
    for i, value in enumerate(right):
        for given in wrong_inputs(value, whole=isinstance(value, int), seed=i):
            answers = list(right)
            answers[i] = given
            msg = failure(checks.check_versus_pca, model, *answers)
            found = recoverable(msg, value, given)
            assert found is None, f"answer {i} = {given!r}: {msg!r} shows {found}"


def test_while_autograded_the_retraining_is_never_taken_from_the_cache(trained, monkeypatch):
    """At home a re-run reuses the check's training (the cache); while a notebook is autograded
    the check trains again every time, so nothing planted in the cache (by student code running
    between two calls of the check) is ever used, and the check itself leaves the module's
    dicts as they were (the grader's re-check guards them)."""
    from types import SimpleNamespace

    planted = (torch.nn.Identity(), SimpleNamespace(train_loss=[1.0, 0.0]))
    key = (id(student_build), tuple(sorted(RECIPE.items())), 0)
    assert checks.retrain(student_build, RECIPE, 0) is trained  # at home: the cached training
    monkeypatch.setitem(checks._RETRAINED, key, planted)
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    before = dict(checks._RETRAINED)
    model, history = checks.retrain(student_build, RECIPE, 0)
    assert model is not planted[0] and history is not planted[1]
    assert history.train_loss == trained[1].train_loss  # the same seeded training, done again
    assert checks._RETRAINED == before
