"""A small, deterministic training loop shared by the chapters and exercises (classification on
digits in chapter 7, reconstruction in chapter 8).

Determinism: the model is expected to be built after ``torch.manual_seed(seed)`` (see
:func:`seeded`); batches are shuffled by a generator seeded with ``seed``; everything runs on CPU
unless a device is given. Progress goes to stdout (not stderr: nbgrader zeroes a test cell that
writes to stderr).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm


def seeded(seed: int) -> torch.Generator:
    """Seed torch's global RNG (model initialisation) and return a generator for the data."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass
class History:
    """Per-epoch records of a :func:`fit` run."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_metric: list[float] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False

    @property
    def epochs(self) -> int:
        return len(self.train_loss)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
             batch_size: int = 512) -> float:
    """Mean loss over a dataset, in eval mode (BatchNorm uses running statistics)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        total += loss_fn(model(xb), yb).item() * len(xb)
        count += len(xb)
    model.train(was_training)
    return total / max(count, 1)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Classification accuracy in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size].to(device))
        correct += (logits.argmax(1).cpu() == y[i:i + batch_size]).sum().item()
    model.train(was_training)
    return correct / max(len(x), 1)


def fit(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, *,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        epochs: int, batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 0.0,
        seed: int = 0, x_val: torch.Tensor | None = None, y_val: torch.Tensor | None = None,
        metric: Callable[[nn.Module, torch.Tensor, torch.Tensor], float] | None = None,
        input_transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        max_seconds: float | None = None, progress: bool = True,
        device: str | torch.device = "cpu") -> History:
    """Train with Adam on (x_train, y_train) for ``epochs`` epochs; returns a :class:`History`.

    ``y_train`` is the target (labels for classification, ``x_train`` itself for an autoencoder).
    ``input_transform(batch, generator)`` alters each input batch (e.g. adds noise for a denoising
    autoencoder) with the seeded generator. ``max_seconds`` stops after the epoch in which the time
    budget runs out (recorded in ``stopped_early``).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if len(x_train) != len(y_train):
        raise ValueError(f"x_train has {len(x_train)} samples but y_train has {len(y_train)}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if (x_val is None) != (y_val is None):
        raise ValueError("pass both x_val and y_val, or neither")
    generator = torch.Generator().manual_seed(seed)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    history = History()
    start = time.perf_counter()
    bar = tqdm(range(epochs), desc="training", unit="epoch", file=sys.stdout,
               disable=not progress, mininterval=1.0)
    for _ in bar:
        order = torch.randperm(len(x_train), generator=generator)
        running, seen = 0.0, 0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            xb, yb = x_train[idx], y_train[idx]
            if input_transform is not None:
                xb = input_transform(xb, generator)
            xb, yb = xb.to(device), yb.to(device)
            loss = loss_fn(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.item() * len(idx)
            seen += len(idx)
        history.train_loss.append(running / seen)
        postfix = {"loss": f"{history.train_loss[-1]:.4f}"}
        if x_val is not None:
            history.val_loss.append(evaluate(model, x_val, y_val, loss_fn))
            postfix["val_loss"] = f"{history.val_loss[-1]:.4f}"
            if metric is not None:
                history.val_metric.append(metric(model, x_val, y_val))
                postfix["val_metric"] = f"{history.val_metric[-1]:.3f}"
        bar.set_postfix(postfix)
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            history.stopped_early = True
            break
    bar.close()
    history.seconds = time.perf_counter() - start
    model.eval()
    return history
