"""Convolutional autoencoders built from depthwise-separable blocks (chapter 8).

* :class:`ConvAutoencoder` - an undercomplete autoencoder: a full 3x3 stride-2 stem conv, strided
  depthwise-separable blocks (``course_lib.separable.DepthwiseSeparableConv2d``) that halve the
  image, a linear bottleneck of ``latent_dim`` numbers, and a mirrored decoder whose upsampling is
  either transposed convolutions (``decoder="transposed"``) or nearest upsampling followed by a
  separable conv (``decoder="upsample"``, the fix for checkerboard artifacts).
* :func:`downsampled_sizes` / :func:`transposed_output_size` / :func:`bottleneck_features` - the
  shape arithmetic of the bottleneck.
* :func:`checkerboard_demo` - why transposed convs with stride 2 and kernel 3 leave a checkerboard:
  push a constant image through all-ones weights and count the overlaps.
* :class:`PCA` / :func:`pca_reconstruction_mse` - the linear baseline at the same code size.
* :func:`reconstruction_mse`, :func:`encode`, :func:`interpolate` - evaluation helpers.
* :func:`add_noise` - the corruption for the denoising variant (an ``input_transform`` for
  ``course_lib.training.fit``).

Training goes through :func:`course_lib.training.fit` with ``y_train = x_train`` and an MSE loss.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from course_lib import _validate as v
from course_lib.conv import conv_output_size
from course_lib.separable import DepthwiseSeparableConv2d

DECODERS = ("upsample", "transposed")


# --------------------------------------------------------------------------- shape arithmetic
def downsampled_sizes(size: int, num_blocks: int, kernel_size: int = 3, stride: int = 2,
                      padding: int = 1) -> list[int]:
    """Spatial size after each of ``num_blocks`` strided convs (3x3, stride 2, padding 1 halves
    an even size and rounds an odd one up: 7 -> 4)."""
    v.positive_int(size, "size")
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 0:
        raise ValueError(f"num_blocks must be an int >= 0, got {num_blocks!r}")
    sizes = []
    for _ in range(num_blocks):
        if size + 2 * padding < kernel_size:
            raise ValueError(f"the image shrinks below the kernel after {len(sizes)} blocks")
        size = conv_output_size(size, kernel_size, stride, padding)
        sizes.append(size)
    return sizes


def transposed_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0,
                           output_padding: int = 0, dilation: int = 1) -> int:
    """Length of a transposed convolution's output along one axis (as ``nn.ConvTranspose2d``):
    ``(size - 1) * stride - 2 * padding + dilation * (kernel_size - 1) + output_padding + 1``."""
    for value, name in ((size, "size"), (kernel_size, "kernel_size"), (stride, "stride"),
                        (dilation, "dilation")):
        v.positive_int(value, name)
    if output_padding < 0 or output_padding >= max(stride, dilation):
        raise ValueError(f"output_padding must be in [0, max(stride, dilation)), "
                         f"got {output_padding}")
    return (size - 1) * stride - 2 * padding + dilation * (kernel_size - 1) + output_padding + 1


def bottleneck_features(image_size: int, channels: Sequence[int]) -> int:
    """Numbers in the encoder's last feature map, the input of the linear bottleneck: one stride-2
    stage per entry of ``channels`` (the stem, then the separable blocks), so
    ``channels[-1] * s * s``."""
    if len(channels) < 1:
        raise ValueError("channels needs at least the stem width")
    side = downsampled_sizes(image_size, len(channels))[-1]
    return channels[-1] * side * side


# --------------------------------------------------------------------------------- the model
def _upsample(in_channels: int, out_channels: int, decoder: str, last: bool) -> nn.Module:
    """One x2 upsampling stage. ``last``: the output layer (plain conv, no BatchNorm/ReLU)."""
    if decoder == "transposed":
        # kernel 3, stride 2, padding 1 needs output_padding 1 to exactly double the size
        conv = nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1,
                                  output_padding=1, bias=last)
        return conv if last else nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU())
    if last:
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                             nn.Conv2d(in_channels, out_channels, 3, padding=1))
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                         DepthwiseSeparableConv2d(in_channels, out_channels))


class ConvAutoencoder(nn.Module):
    """Undercomplete convolutional autoencoder for (N, in_channels, S, S) images in [0, 1].

    Encoder (MobileNet-style): a full 3x3 stride-2 stem conv (in_channels -> channels[0]; on one
    input channel a separable stem would make every map a scaled copy of one filtered image), then
    one stride-2 depthwise-separable block
    per further entry of ``channels``, flatten, linear to ``latent_dim``. Decoder, the mirror image:
    linear back to the last feature map, one x2 upsampling stage per encoder stage (``decoder``
    picks transposed convs or nearest upsampling + separable conv), the last one producing
    ``in_channels``, then a sigmoid. ``image_size`` must be divisible by ``2 ** len(channels)`` so
    the decoder can mirror the encoder exactly.
    """

    def __init__(self, image_size: int = 16, latent_dim: int = 16,
                 channels: Sequence[int] = (16, 32), decoder: str = "upsample",
                 in_channels: int = 1):
        super().__init__()
        v.positive_int(image_size, "image_size")
        v.positive_int(latent_dim, "latent_dim")
        v.positive_int(in_channels, "in_channels")
        channels = tuple(channels)
        if not channels:
            raise ValueError("channels needs at least the stem width, got ()")
        for c in channels:
            v.positive_int(c, "channels entry")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        stages = len(channels)
        if image_size % (2 ** stages):
            raise ValueError(f"image_size={image_size} must be divisible by 2**{stages} "
                             f"({stages} stride-2 stages)")
        self.image_size, self.latent_dim, self.decoder_kind = image_size, latent_dim, decoder
        side = downsampled_sizes(image_size, stages)[-1]
        self.feature_shape = (channels[-1], side, side)
        features = bottleneck_features(image_size, channels)

        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(channels[0]), nn.ReLU()]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers.append(DepthwiseSeparableConv2d(c_in, c_out, stride=2))
        layers += [nn.Flatten(), nn.Linear(features, latent_dim)]
        self.encoder = nn.Sequential(*layers)

        up: list[nn.Module] = [nn.Linear(latent_dim, features), nn.ReLU(),
                               nn.Unflatten(1, self.feature_shape)]
        widths = channels[::-1] + (in_channels,)
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            up.append(_upsample(c_in, c_out, decoder, last=i == stages - 1))
        up.append(nn.Sigmoid())
        self.decoder = nn.Sequential(*up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v.tensor_of_rank(x, 4, "input", "N, C, H, W")
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"ConvAutoencoder was built for {self.image_size}x{self.image_size} "
                             f"images, got input of shape {tuple(x.shape)}")
        return self.decoder(self.encoder(x))


# ------------------------------------------------------------------------------- checkerboard
@torch.no_grad()
def checkerboard_demo(size: int = 6) -> dict[str, torch.Tensor]:
    """Upsample a constant ``size x size`` image x2 both ways, with every weight set to 1.

    Returns ``{"transposed": ..., "upsample": ...}``, (2*size, 2*size) maps. The transposed conv
    (kernel 3, stride 2, padding 1, output_padding 1) scatters each input pixel onto a 3x3 patch
    with step 2, so output pixels receive 1, 2 or 4 contributions: a checkerboard even though the
    input is flat. Nearest upsampling then a 3x3 conv (replicate padding, so borders are not
    darkened) sums 9 equal neighbours everywhere: flat.
    """
    v.positive_int(size, "size")
    x = torch.ones(1, 1, size, size)
    transposed = nn.ConvTranspose2d(1, 1, 3, stride=2, padding=1, output_padding=1, bias=False)
    transposed.weight.fill_(1.0)
    conv = nn.Conv2d(1, 1, 3, padding=1, padding_mode="replicate", bias=False)
    conv.weight.fill_(1.0)
    upsampled = F.interpolate(x, scale_factor=2, mode="nearest")
    return {"transposed": transposed(x)[0, 0], "upsample": conv(upsampled)[0, 0]}


# ------------------------------------------------------------------------------------------ PCA
class PCA:
    """Principal component analysis in torch (exact SVD of the centred data).

    ``encode`` gives the ``n_components`` coordinates of an image along the top principal
    directions; ``decode`` maps them back. It is the best *linear* code of that size in the
    mean-squared sense, the baseline an autoencoder should beat.
    """

    def __init__(self, n_components: int):
        self.n_components = v.positive_int(n_components, "n_components")
        self.mean: torch.Tensor | None = None
        self.components: torch.Tensor | None = None  # (n_components, D), orthonormal rows
        self.explained_variance: torch.Tensor | None = None

    def fit(self, x: torch.Tensor) -> "PCA":
        flat = _flatten(x, "x")
        if self.n_components > min(flat.shape):
            raise ValueError(f"n_components={self.n_components} exceeds min(samples, features)="
                             f"{min(flat.shape)}")
        flat = flat.double()  # float64: the SVD of a few thousand pixels is cheap and exact
        self.mean = flat.mean(0)
        _, s, vh = torch.linalg.svd(flat - self.mean, full_matrices=False)
        self.components = vh[:self.n_components]
        self.explained_variance = s[:self.n_components] ** 2 / (len(flat) - 1)
        return self

    def _fitted(self) -> None:
        if self.mean is None:
            raise ValueError("call fit(x) before encode/decode")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self._fitted()
        return ((_flatten(x, "x").double() - self.mean) @ self.components.T).float()

    def decode(self, codes: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """Back to images of ``shape`` (N, C, H, W) (or any shape with N * D elements)."""
        self._fitted()
        return (codes.double() @ self.components + self.mean).float().reshape(tuple(shape))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), x.shape)


def _flatten(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"{name} must be a tensor of shape (N, ...), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    return x.reshape(len(x), -1)


def pca_reconstruction_mse(x_train: torch.Tensor, x_test: torch.Tensor,
                           n_components: int) -> float:
    """Per-pixel MSE on ``x_test`` of a PCA with ``n_components`` fitted on ``x_train``."""
    pca = PCA(n_components).fit(x_train)
    return F.mse_loss(pca.reconstruct(x_test), x_test).item()


# ------------------------------------------------------------------------------------ helpers
@torch.no_grad()
def reconstruction_mse(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> float:
    """Per-pixel mean squared error of ``model(x)`` against ``x``, in eval mode."""
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        total += F.mse_loss(model(xb), xb, reduction="sum").item()
    model.train(was_training)
    return total / x.numel()


@torch.no_grad()
def encode(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Latent codes ``model.encoder(x)`` in eval mode, shape (N, latent_dim)."""
    was_training = model.training
    model.eval()
    codes = model.encoder(x)
    model.train(was_training)
    return codes


@torch.no_grad()
def interpolate(model: nn.Module, x_a: torch.Tensor, x_b: torch.Tensor,
                steps: int = 8) -> torch.Tensor:
    """Decode ``steps`` evenly spaced points on the straight line between the codes of two images
    ``x_a`` and ``x_b`` (each (C, H, W)); returns (steps, C, H, W), the ends reconstruct a and b."""
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    if x_a.shape != x_b.shape or x_a.dim() != 3:
        raise ValueError(f"x_a and x_b must be two (C, H, W) images, got {tuple(x_a.shape)} and "
                         f"{tuple(x_b.shape)}")
    was_training = model.training
    model.eval()
    z = model.encoder(torch.stack([x_a, x_b]))
    t = torch.linspace(0.0, 1.0, steps).unsqueeze(1)
    images = model.decoder((1 - t) * z[0] + t * z[1])
    model.train(was_training)
    return images


def add_noise(std: float = 0.3):
    """An ``input_transform`` for :func:`course_lib.training.fit`: Gaussian noise of ``std``
    from the training generator (so runs are reproducible), clipped to [0, 1]."""
    if std < 0:
        raise ValueError(f"std must be >= 0, got {std}")

    def transform(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(batch.shape, generator=generator) * std
        return (batch + noise).clamp(0.0, 1.0)

    return transform
