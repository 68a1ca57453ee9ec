"""course_lib.training: deterministic, learns, respects its time budget, prints to stdout only."""
import contextlib
import io

import pytest
import torch
from torch import nn

from course_lib.training import accuracy, evaluate, fit, seeded


def toy_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()  # linearly separable
    return x, y


def make_model(seed: int) -> nn.Module:
    seeded(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))


def test_same_seed_same_history():
    x, y = toy_problem()
    runs = [fit(make_model(1), x, y, loss_fn=nn.functional.cross_entropy, epochs=3, seed=5,
                progress=False).train_loss for _ in range(2)]
    assert runs[0] == runs[1]
    other = fit(make_model(1), x, y, loss_fn=nn.functional.cross_entropy, epochs=3, seed=6,
                progress=False).train_loss
    assert other != runs[0]  # the data order depends on the seed


def test_learns_and_records_validation():
    x, y = toy_problem()
    model = make_model(0)
    before = accuracy(model, x, y)
    history = fit(model, x, y, loss_fn=nn.functional.cross_entropy, epochs=30, lr=1e-2,
                  x_val=x, y_val=y, metric=accuracy, progress=False)
    assert history.epochs == 30 and len(history.val_loss) == 30 and len(history.val_metric) == 30
    assert history.train_loss[-1] < 0.5 * history.train_loss[0]
    assert accuracy(model, x, y) > max(before, 0.9)
    assert history.val_loss[-1] == pytest.approx(
        evaluate(model, x, y, nn.functional.cross_entropy), rel=1e-6)


def test_input_transform_sees_every_batch_and_time_budget_stops():
    x, y = toy_problem()
    seen = []

    def transform(batch, generator):
        seen.append(len(batch))
        return batch + 0.01 * torch.randn(batch.shape, generator=generator)

    history = fit(make_model(0), x, y, loss_fn=nn.functional.cross_entropy, epochs=50,
                  batch_size=64, input_transform=transform, max_seconds=0.0, progress=False)
    assert history.stopped_early and history.epochs == 1
    assert sum(seen) == len(x)


def test_progress_goes_to_stdout_not_stderr():
    x, y = toy_problem()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        fit(make_model(0), x, y, loss_fn=nn.functional.cross_entropy, epochs=2)
    assert "training" in out.getvalue() and err.getvalue() == ""


@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=0), "epochs must be a positive int"),
    (dict(epochs=1, x_val=torch.zeros(2, 4)), "pass both x_val and y_val"),
    (dict(epochs=1, batch_size=0), "batch_size"),
])
def test_bad_arguments(kwargs, message):
    x, y = toy_problem()
    with pytest.raises(ValueError, match=message):
        fit(make_model(0), x, y, loss_fn=nn.functional.cross_entropy, **kwargs)
    with pytest.raises(ValueError, match="samples"):
        fit(make_model(0), x, y[:10], loss_fn=nn.functional.cross_entropy, epochs=1)
