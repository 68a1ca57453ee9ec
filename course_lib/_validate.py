"""Shared argument validation: every public course_lib function rejects bad input with a
ValueError that names the argument and what was expected, so a student sees *what* is wrong."""
from __future__ import annotations

from typing import Sequence

import torch


def pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """Normalise an int or a 2-sequence of ints (kernel size, stride, ...) to a pair."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or a pair of ints, got a bool")
    if isinstance(value, int):
        return (value, value)
    try:
        items = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be an int or a pair of ints, got {type(value).__name__}") from None
    if len(items) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return (items[0], items[1])


def positive_pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    result = pair(value, name)
    if min(result) < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return result


def non_negative_pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    result = pair(value, name)
    if min(result) < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return result


def positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def tensor_of_rank(x: object, rank: int, name: str, layout: str) -> torch.Tensor:
    """Check that ``x`` is a floating tensor of the given rank; ``layout`` (e.g. "N, C, H, W") goes
    into the message."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape ({layout}), got {type(x).__name__}")
    if x.dim() != rank:
        raise ValueError(
            f"{name} must have {rank} dimensions ({layout}), got shape {tuple(x.shape)}")
    return x


def check_groups(in_channels: int, out_channels: int, groups: int) -> None:
    positive_int(groups, "groups")
    if in_channels % groups:
        raise ValueError(f"groups={groups} must divide in_channels={in_channels}")
    if out_channels % groups:
        raise ValueError(f"groups={groups} must divide out_channels={out_channels}")


def image_batch(x: object, channels: int, layer: str) -> torch.Tensor:
    """A layer's input: an (N, C, H, W) tensor with the channel count the layer was built for."""
    tensor_of_rank(x, 4, "input", "N, C, H, W")
    if x.shape[1] != channels:
        raise ValueError(f"{layer} expects {channels} input channels, "
                         f"got input of shape {tuple(x.shape)}")
    return x
