"""course_lib.tradeoffs and timing.interleaved: the lab's network against hand counts, its data
split, its recipe's determinism, the Pareto front on a table worked by hand."""
import pytest
import torch

from course_lib import costs, timing, tradeoffs


def hand_params(alpha):
    c = int(16 * alpha)
    total = 9 * c + 2 * c                                   # stem conv (1 input channel) + BN
    for channels, _ in tradeoffs.BLOCKS:
        out = int(channels * alpha)
        total += 9 * c + 2 * c + c * out + 2 * out          # depthwise, BN, pointwise, BN
        c = out
    return total + 10 * c + 10


def hand_macs(alpha, resolution):
    def down(n):   # 3x3, padding 1, stride 2
        return (n - 1) // 2 + 1
    size, c = down(resolution), int(16 * alpha)
    total = 9 * c * size * size
    for channels, stride in tradeoffs.BLOCKS:
        size = down(size) if stride == 2 else size
        out = int(channels * alpha)
        total += (9 * c + c * out) * size * size
        c = out
    return total + 10 * c


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.35, 0.25])
def test_tiny_mobilenet_counts_by_hand(alpha):
    model = tradeoffs.TinyMobileNet(alpha).eval()
    assert costs.count_params(model) == hand_params(alpha)
    for resolution in (12, 28):
        assert costs.measure_macs(model, (1, 1, resolution, resolution)) == hand_macs(alpha, resolution)
    assert model(torch.zeros(3, 1, 20, 20)).shape == (3, 10)


def test_alpha_is_validated():
    with pytest.raises(ValueError, match="width multiplier"):
        tradeoffs.TinyMobileNet(0.05)


def test_split_is_seeded_and_disjoint():
    a, b = tradeoffs.mnist_split(seed=3), tradeoffs.mnist_split(seed=3)
    assert torch.equal(a.x_train, b.x_train) and len(a.x_train) == tradeoffs.TRAIN_IMAGES
    assert not torch.equal(a.y_train, tradeoffs.mnist_split(seed=4).y_train)
    train = {tuple(v.tolist()) for v in a.x_train.flatten(1)[:, 300:340]}
    assert not any(tuple(v.tolist()) in train for v in a.x_test.flatten(1)[:50, 300:340]
                   if v.abs().sum() > 0)
    assert torch.bincount(a.y_test, minlength=10).min() >= 25   # every digit in the test set
    small = tradeoffs.at_resolution(a.x_test[:4], 12)
    assert small.shape == (4, 1, 12, 12) and 0.0 <= small.min() and small.max() <= 1.0
    with pytest.raises(ValueError, match="add up to at most 5000"):
        tradeoffs.mnist_split(4000, 2000)


def test_recipe_is_deterministic_and_learns():
    split = tradeoffs.mnist_split()
    first, model = tradeoffs.train_and_evaluate(tradeoffs.TinyMobileNet, 0.25, 12, split)
    again, _ = tradeoffs.train_and_evaluate(tradeoffs.TinyMobileNet, 0.25, 12, split)
    assert first == again and first > 0.3     # ten classes: chance is 0.1
    assert not model.training


def test_pareto_front_by_hand():
    rows = [{"ms": 1.0, "accuracy": 0.5}, {"ms": 2.0, "accuracy": 0.7},
            {"ms": 2.0, "accuracy": 0.6},    # dominated by the row above (same time, worse)
            {"ms": 3.0, "accuracy": 0.7},    # dominated (slower, not better)
            {"ms": 4.0, "accuracy": 0.9}, {"ms": 4.0, "accuracy": 0.9}]   # a tie: both stay
    front = tradeoffs.pareto_front(rows)
    assert front == [rows[0], rows[1], rows[4], rows[5]]


def test_interleaved_rotates_and_times_every_round():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    results = timing.interleaved(fns, rounds=3, warmup=1)
    assert calls[:3] == ["a", "b", "c"]                       # warm-up
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(len(r.times_ms) == 3 and r.median_ms >= 0 for r in results.values())
    with pytest.raises(ValueError, match="rounds"):
        timing.interleaved(fns, rounds=0)
