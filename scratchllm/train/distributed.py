"""Data-parallel training across processes with PyTorch's DistributedDataParallel (DDP).

``torchrun --nproc_per_node=N -m scratchllm train ...`` starts N copies of the program and sets
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in each one's environment. Every process holds the
whole model, reads its own share of the batches, and after the backward pass DDP averages the
gradients across processes (an all-reduce), so all copies take the same optimizer step:

    g = (1 / N) * sum_r g_r        (what one process would get from the N batches together)

The backend is gloo on CPU and nccl on CUDA. Only rank 0 writes checkpoints, logs and plots.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from scratchllm.errors import ScratchLLMError


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    sharded: bool = False  # the model is sharded (FSDP): every rank must run every forward pass

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def takes(self, index: int) -> bool:
        """Whether this rank evaluates item ``index`` of a shared list: ranks take turns, except
        that sharded ranks run every forward pass together (each takes all, see ``eval_sum``)."""
        return self.sharded or index % self.world_size == self.rank

    def eval_sum(self, *values: float) -> list[float]:
        """Sums over the items ``takes`` gave each rank: all-reduced, or as they are when every
        rank took every item."""
        return list(values) if self.sharded else all_reduce_sum(self, *values)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda, mps or cpu, whichever this machine has (in that order)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ScratchLLMError("train.device=cuda but torch sees no CUDA GPU; use train.device=auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ScratchLLMError("train.device=mps but this machine has no MPS; use train.device=auto or cpu")
    return torch.device(name)


def setup_distributed(device_name: str) -> DistributedContext:
    """Join the process group when started by torchrun, else describe a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world_size == 1:
        return DistributedContext(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def teardown_distributed(ctx: DistributedContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(ctx: DistributedContext, *values: float) -> list[float]:
    """Sum each value over all processes (the identity for a single process)."""
    if not ctx.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_flag(ctx: DistributedContext, flag: bool) -> bool:
    """Rank 0's value of ``flag`` on every process (to stop all of them together)."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([int(flag)], device=ctx.device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def seed_rank_dropout(seed: int, step: int, rank: int) -> None:
    """Seed torch's RNG from (seed, step, rank) before a step under DDP.

    Every rank starts from the same seed (so the model starts the same everywhere), which would
    give every rank the same dropout masks; reseeding per (step, rank) gives each its own, and a
    resumed run redraws exactly the masks it would have drawn without saving every rank's RNG.

    >>> seed_rank_dropout(1337, 5, 0); a = torch.rand(2)
    >>> seed_rank_dropout(1337, 5, 1); b = torch.rand(2)
    >>> seed_rank_dropout(1337, 5, 0); bool((torch.rand(2) == a).all()), bool((a == b).all())
    (True, False)
    """
    torch.manual_seed(hash((seed, step, rank)))


def barrier(ctx: DistributedContext) -> None:
    if ctx.enabled:
        dist.barrier()
