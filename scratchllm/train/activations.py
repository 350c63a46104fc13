"""Activation checkpointing (``train.activation_checkpointing``): recompute each transformer
block's activations in the backward pass instead of keeping them from the forward.

A block's backward needs what its forward computed (attention scores, the MLP's hidden layer,
the norms' inputs): per block about ``34 * B * T * d_model`` bytes plus ``5 * B * heads * T^2``
(Korthikanti et al.; ``GPT.memory_estimate``). With checkpointing only the block's input
(``B * T * d_model`` floats) is kept; during backward the block's forward runs again, so a step
costs about one more forward (~33% more compute) for activations that shrink to one block's
worth plus each block's input. ``torch.utils.checkpoint`` does the work (non-reentrant, with
the RNG state saved, so dropout draws the same mask again and gradients are unchanged).

Works alone, under DDP and under FSDP: apply it before ``fully_shard``, so that FSDP's
all-gather before a block's backward comes before the recomputation that needs the weights.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def checkpoint_blocks(model: nn.Module) -> nn.Module:
    """Make each block of ``model.trf_blocks`` recompute its activations in backward (in place;
    parameter names and state dicts are unchanged). Only while gradients are being recorded:
    evaluation and generation run the block as it is."""
    for block in model.trf_blocks:
        block.forward = functools.partial(_checkpointed, block, block.forward)
    return model


def _checkpointed(block: nn.Module, forward, *args, **kwargs):
    if not (torch.is_grad_enabled() and block.training):  # evaluation, generation (its KV cache): nothing to save
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)
