"""Loss functions the trainer can minimise, and what one returns.

A loss function takes the model and one micro-batch and returns the loss *summed* over the
batch's units (scored target tokens for next-token prediction, examples for a classifier), so
that the trainer can divide by the units of the whole step, across micro-batches and processes,
and get the exact mean (see ``Trainer``). ``units(batch)`` counts them before the forward pass.

Auxiliary terms (a router's balance loss, a distillation term) are named parts of the total,
summed the same way; the trainer logs each as ``loss_<name>``, per unit.

>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Embedding(5, 5))
>>> batch = (torch.tensor([[1, 2]]), torch.tensor([[2, IGNORE_INDEX]]))
>>> scored_tokens(batch), next_token_loss(model, batch).total.shape
(1, torch.Size([]))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100  # F.cross_entropy's default: targets with this id are not scored

Batch = Any  # whatever the batch source yields; next-token batches are (inputs, targets) (B, T) pairs


@dataclass
class Loss:
    """A micro-batch's loss: ``total`` (summed over its units) is minimised; ``terms`` are logged."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


LossFunction = Callable[[nn.Module, Batch], "Loss | torch.Tensor"]


def loss_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over the scored targets of ``y`` (B, T), in float32."""
    logits = model(x)  # (B, T, vocab)
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")


def next_token_loss(model: nn.Module, batch: Batch) -> Loss:
    """The language-modelling loss: cross-entropy of every scored next token, summed."""
    x, y = batch
    return Loss(loss_sum(model, x, y))


def scored_tokens(batch: Batch) -> int:
    """The units of a next-token batch: its targets that are not ``IGNORE_INDEX`` (padding)."""
    return int((batch[1] != IGNORE_INDEX).sum())


def as_loss(value: Loss | torch.Tensor) -> Loss:
    """A loss function may return a bare tensor: its total, with no named terms."""
    return value if isinstance(value, Loss) else Loss(value)
