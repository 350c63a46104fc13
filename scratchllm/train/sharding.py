"""Sharded data parallelism (``train.parallel = "fsdp"``): PyTorch's FSDP2, applied to our model.

Under DDP every rank holds the whole model, its gradients and its AdamW state (16 bytes per
parameter in fp32). ``fully_shard`` keeps 1/world_size of each on every rank instead: before a
block's forward (and backward) its parameters are all-gathered, after its backward the gradients
are reduce-scattered (averaged, as DDP averages), and each rank's optimizer updates only its own
shard. The sharding is PyTorch's (``torch.distributed.fsdp.fully_shard``); this module applies
it one transformer block at a time, as FSDP's documentation advises (one all-gather per block,
overlapping the next block's compute), and moves the full state between the shards and our
single-directory checkpoint, so a run sharded over N ranks resumes on any number of ranks, and
``generate``, ``eval`` and the rest read its checkpoints like any other.

The checkpoint holds full tensors, gathered to rank 0's CPU memory when saving (and read whole by
every rank when resuming): simple, pickle-free and reshardable, up to models whose weights and
AdamW state fit in one host's memory (about 16 bytes per parameter: 25 GB for gpt2-xl).
``torch.distributed.checkpoint`` writes per-rank shards instead, but its metadata file is a
pickle, which scratchllm never asks a user to load.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard

from scratchllm.model import contiguous_weights

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard_model(model: nn.Module) -> nn.Module:
    """Shard ``model`` in place over the default process group: each of its transformer blocks
    (``model.trf_blocks``) as one unit, then the rest (embeddings, final norm, head) as the root.
    Its parameters become ``DTensor`` shards; build the optimizer after."""
    contiguous_weights(model)  # FSDP shards rows of row-major parameters only
    for block in model.trf_blocks:
        fully_shard(block)
    fully_shard(model)
    return model


@contextlib.contextmanager
def gradient_sync_off(model: nn.Module) -> Iterator[None]:
    """FSDP's ``no_sync``: micro-batches before the last keep their gradients unreduced."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict on rank 0's CPU, {} on the other ranks; every rank must call it."""
    return get_model_state_dict(model, options=FULL)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's full state on rank 0's CPU in ``optimizer.state_dict()``'s layout for the
    unsharded model (parameters numbered in group order), so DDP, FSDP and one process read and
    write the same file; {} on the other ranks. Every rank must call it."""
    by_name = get_optimizer_state_dict(model, optimizer, options=FULL)
    if not by_name:
        return {}
    index = {name: i for i, name in enumerate(n for group in by_name["param_groups"] for n in group["params"])}
    return {
        "state": {index[name]: value for name, value in by_name["state"].items()},
        "param_groups": [{**group, "params": [index[n] for n in group["params"]]} for group in by_name["param_groups"]],
    }


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, model_state: dict[str, torch.Tensor],
                    optimizer_state: dict[str, Any] | None = None) -> None:
    """Scatter full states (as ``full_model_state``/``full_optimizer_state`` give, read on every
    rank) into a sharded model and its optimizer."""
    set_model_state_dict(model, model_state, options=StateDictOptions(full_state_dict=True, strict=True))
    if optimizer is None or optimizer_state is None:
        return
    names = _parameter_names(model, optimizer)
    by_name = {
        "state": {names[i]: value for i, value in optimizer_state["state"].items()},
        "param_groups": [{**group, "params": [names[i] for i in group["params"]]}
                         for group in optimizer_state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def _parameter_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each optimizer parameter, in the numbering of ``optimizer.state_dict()``."""
    name_of = {id(p): name for name, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]
