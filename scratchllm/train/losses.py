"""Loss functions the trainer can minimise, and what one returns.

A loss function takes the model and one micro-batch and returns the loss *summed* over the
batch's units (scored target tokens for next-token prediction, examples for a classifier), so
that the trainer can divide by the units of the whole step, across micro-batches and processes,
and get the exact mean (see ``Trainer``). ``units(batch)`` counts them before the forward pass.

Auxiliary terms (a router's balance loss, a distillation term) are named parts of the total,
summed the same way; the trainer logs each as ``loss_<name>``, per unit. ``metrics`` are figures
that are not minimised (an expert's share of the tokens), summed the same way and logged by name.

Layers may leave auxiliary losses of their own in a training forward pass (the mixture of
experts' router, ``model/moe.py``): a layer with ``pop_auxiliary()`` hands over (losses, figures),
each a mean over the batch's tokens, a loss with its weight; ``with_auxiliary`` adds them
(``next_token_loss``, distillation).

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
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


LossFunction = Callable[[nn.Module, Batch], "Loss | torch.Tensor"]


def loss_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over the scored targets of ``y`` (B, T), in float32."""
    logits = model(x)  # (B, T, vocab)
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")


def next_token_loss(model: nn.Module, batch: Batch) -> Loss:
    """The language-modelling loss: cross-entropy of every scored next token, summed; plus the
    weighted auxiliary losses the model's layers left (``with_auxiliary``), then with ``ce`` a term."""
    x, y = batch
    ce = loss_sum(model, x, y)
    loss = with_auxiliary(model, batch, Loss(ce))
    return Loss(loss.total, {"ce": ce, **loss.terms}, loss.metrics) if loss.terms or loss.metrics else loss


def with_auxiliary(model: nn.Module, batch: Batch, loss: Loss) -> Loss:
    """``loss`` (summed over the batch's scored tokens) plus the auxiliary losses the model's layers
    left in the forward pass that made it (``auxiliary_loss``), summed over those tokens the same
    way, each logged as a term; ``loss`` unchanged, with no terms, for a model that leaves none."""
    extra = auxiliary_loss(model)
    if not extra.terms and not extra.metrics:
        return loss
    units = scored_tokens(batch)  # the layers' means, summed over the units like the cross-entropy
    return Loss(loss.total + extra.total * units,
                {**loss.terms, **{name: value * units for name, value in extra.terms.items()}},
                {**loss.metrics, **{name: value * units for name, value in extra.metrics.items()}})


def auxiliary_loss(model: nn.Module) -> Loss:
    """What the model's layers left in their last training forward pass (``pop_auxiliary``), as
    means per token: total = sum of weight * loss, a term per loss name (added over layers,
    unweighted) and the figures. Empty for a model that has none.

    >>> auxiliary_loss(nn.Linear(2, 2))
    Loss(total=tensor(0.), terms={}, metrics={})
    """
    total, terms, metrics = torch.zeros(()), {}, {}
    for module in model.modules():
        pop = getattr(module, "pop_auxiliary", None)
        if pop is None:
            continue
        losses, figures = pop()
        for name, (value, weight) in losses.items():
            total = total + weight * value
            terms[name] = terms.get(name, 0) + value
        metrics.update(figures)
    return Loss(total, terms, metrics)


def scored_tokens(batch: Batch) -> int:
    """The units of a next-token batch: its targets that are not ``IGNORE_INDEX`` (padding)."""
    return int((batch[1] != IGNORE_INDEX).sum())


def as_loss(value: Loss | torch.Tensor) -> Loss:
    """A loss function may return a bare tensor: its total, with no named terms."""
    return value if isinstance(value, Loss) else Loss(value)
