"""course_lib.data: offline, deterministic, correctly scaled."""
import pytest
import torch

from course_lib.data import SAMPLE_IMAGES, load_digits, sample_image


def test_digits_split_is_seeded_stratified_and_scaled():
    a, b = load_digits(seed=3), load_digits(seed=3)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_train, load_digits(seed=4).y_train)
    assert a.x_train.shape[1:] == (1, 8, 8) and a.x_train.dtype == torch.float32
    assert len(a.x_train) + len(a.x_test) == 1797
    assert 0.0 <= a.x_train.min() and a.x_train.max() == 1.0
    counts = torch.bincount(a.y_test, minlength=10)
    assert counts.min() >= 40  # stratified: every digit well represented in the test set


def test_digits_resize():
    d = load_digits(size=32)
    assert d.x_train.shape[1:] == (1, 32, 32) and d.x_train.max() <= 1.0


@pytest.mark.parametrize("name", SAMPLE_IMAGES)
def test_sample_images(name):
    image = sample_image(name)
    assert image.dim() == 3 and image.shape[0] == 3 and min(image.shape[1:]) >= 400
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.05
    small = sample_image(name, size=(48, 64), grayscale=True)
    assert small.shape == (1, 48, 64)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown sample image 'lena'"):
        sample_image("lena")
    with pytest.raises(ValueError, match="size"):
        load_digits(size=0)
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=1.5)
