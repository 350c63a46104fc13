"""AdamW with weight decay on matrices only, and a linear-warmup + cosine learning-rate schedule.

Weight decay pulls weights toward zero: ``theta <- theta - lr * wd * theta`` each step, decoupled
from the Adam update (Loshchilov & Hutter). It regularises the matrices (linear layers and
embeddings) that hold the model's capacity; biases and normalisation gains are left alone,
since shrinking them only shifts or rescales activations (nanoGPT and GPT-3 do the same).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


def param_groups(params: nn.Module | Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    """Split parameters (a module's: those that require gradients) into a decayed group
    (dim >= 2) and an undecayed one (dim < 2). A parameter given twice (tied) appears once.

    >>> groups = param_groups(nn.Linear(4, 3).parameters(), weight_decay=0.1)
    >>> [(g["weight_decay"], [tuple(p.shape) for p in g["params"]]) for g in groups]
    [(0.1, [(3, 4)]), (0.0, [(3,)])]
    """
    if isinstance(params, nn.Module):
        params = (p for p in params.parameters() if p.requires_grad)
    params = list({id(p): p for p in params}.values())
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def make_optimizer(
    params: nn.Module | Iterable[nn.Parameter],
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    device_type: str,
) -> torch.optim.AdamW:
    """AdamW over ``param_groups(params)``, using the fused kernel (one kernel for all tensors per step).

    The fused implementation exists for CPU and CUDA in current torch; it removes the per-tensor
    Python overhead that dominates small models.
    """
    fused = device_type in ("cpu", "cuda")
    return torch.optim.AdamW(param_groups(params, weight_decay), lr=lr, betas=betas, fused=fused)


def lr_at(step: int, *, max_lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Learning rate for the optimizer update number ``step`` (0-based).

    Linear warmup from ``max_lr / warmup_steps`` to ``max_lr`` over ``warmup_steps`` updates,
    then half a cosine from ``max_lr`` (at update ``P = max(W - 1, 0)``) down to ``min_lr`` at the last one:

        lr(s) = min_lr + (max_lr - min_lr) * (1 + cos(pi * (s - P) / (S - 1 - P))) / 2

    >>> [round(lr_at(s, max_lr=1.0, min_lr=0.1, warmup_steps=2, max_steps=5), 3) for s in range(5)]
    [0.5, 1.0, 0.775, 0.325, 0.1]
    """
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    peak = max(warmup_steps - 1, 0)
    if max_steps - 1 <= peak:
        return max_lr
    progress = min(1.0, (step - peak) / (max_steps - 1 - peak))
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
