"""Batches of (input, target) windows over a 1-D array of token ids.

A language model learns to predict token ``t+1`` from tokens ``..t``, so one training example is
a window of ``T + 1`` consecutive tokens: ``x = w[:-1]`` and ``y = w[1:]`` (the targets are the
inputs shifted by one). Two ways to pick windows:

- ``RandomBatches(tokens, batch_size, context_length, seed, rank=0, world_size=1)``: nanoGPT's
  ``get_batch``: each batch takes ``B`` windows at uniformly random starts. Batch number ``g``
  (counting all ranks: ``g = step * world_size + rank``) depends on ``(seed, g)`` only, so a run
  resumed from ``state_dict()`` sees exactly the batches it would have seen, and 2 ranks at step
  ``s`` see what 1 process sees at micro-steps ``2s`` and ``2s + 1``.
- ``SlidingWindows(tokens, context_length, stride, batch_size)``: the book's ``GPTDatasetV1``:
  every window ``tokens[i : i + T + 1]`` for ``i = 0, stride, 2*stride, ... < len - T``, in order
  (or shuffled per epoch); ``stride = T`` covers the text once without overlap, the usual way
  to evaluate.

Both return ``int64`` torch tensors ``x, y`` of shape ``(B, T)``, gathered from the (memory-mapped)
array in one vectorized read, and keep their position in a JSON-able ``state_dict()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from scratchllm.errors import ScratchLLMError


def _check_fits(tokens: np.ndarray, context_length: int, name: str) -> None:
    if context_length < 1:
        raise ScratchLLMError(f"context length must be at least 1, got {context_length}")
    if len(tokens) < context_length + 1:
        raise ScratchLLMError(
            f"{name} has {len(tokens):,} tokens but one window of context {context_length} needs "
            f"{context_length + 1:,}: use a shorter context length or a larger corpus (or validation fraction)"
        )


def gather_windows(tokens: np.ndarray, starts: np.ndarray, context_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows ``tokens[s : s + T + 1]`` for each start, split into inputs and targets shifted by one.

    >>> x, y = gather_windows(np.arange(10), np.array([0, 5]), 3)
    >>> x.tolist(), y.tolist()
    ([[0, 1, 2], [5, 6, 7]], [[1, 2, 3], [6, 7, 8]])
    """
    windows = np.lib.stride_tricks.sliding_window_view(tokens, context_length + 1)[starts]  # (B, T+1), one copy
    windows = torch.from_numpy(windows.astype(np.int64))
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()  # (B, T), (B, T)


class RandomBatches:
    """Endless batches of windows at random starts, deterministic in ``(seed, step, rank)``.

    >>> batches = RandomBatches(np.arange(100, dtype=np.uint16), batch_size=4, context_length=8, seed=1)
    >>> x, y = next(batches)
    >>> x.shape, bool((x[:, 1:] == y[:, :-1]).all())
    (torch.Size([4, 8]), True)
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, context_length: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, name: str = "the corpus"):
        if not 0 <= rank < world_size:
            raise ScratchLLMError(f"rank {rank} is not in 0..{world_size - 1}")
        self.tokens = tokens if isinstance(tokens, np.ndarray) else np.asarray(tokens)
        _check_fits(self.tokens, context_length, name)
        self.batch_size, self.context_length = batch_size, context_length
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.step = 0  # batches this rank has taken

    def starts(self, step: int) -> np.ndarray:
        """The window starts of this rank's batch at ``step``: a pure function of (seed, step, rank)."""
        index = step * self.world_size + self.rank  # the batch's number across all ranks
        rng = np.random.default_rng([self.seed, index])
        return rng.integers(0, len(self.tokens) - self.context_length, size=self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = self.starts(self.step)
        self.step += 1
        return gather_windows(self.tokens, starts, self.context_length)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "random", "seed": self.seed, "step": self.step, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where ``state`` stopped; with another world size, continue after the same global batch."""
        if state.get("kind") != "random" or state.get("seed") != self.seed:
            raise ScratchLLMError(f"batch state {state} was not saved by RandomBatches with seed {self.seed}: "
                                  "resume with the seed of the saved run")
        taken = state["step"] * state["world_size"]  # batches taken across all ranks
        if taken % self.world_size:
            raise ScratchLLMError(f"the saved run took {taken} batches over {state['world_size']} ranks, which "
                                  f"{self.world_size} ranks cannot split evenly: resume with a world size dividing it")
        self.step = taken // self.world_size


class SlidingWindows:
    """All windows at a fixed stride, in batches, one epoch per ``iter()``; resumable mid-epoch.

    >>> windows = SlidingWindows(np.arange(10), context_length=4, stride=2, batch_size=2)
    >>> [x[:, 0].tolist() for x, _ in windows]        # window starts 0, 2, 4
    [[0, 2], [4]]
    """

    def __init__(self, tokens: np.ndarray, context_length: int, stride: int, batch_size: int, *,
                 drop_last: bool = False, shuffle: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
                 name: str = "the corpus"):
        if stride < 1:
            raise ScratchLLMError(f"stride must be at least 1, got {stride}")
        if not 0 <= rank < world_size:
            raise ScratchLLMError(f"rank {rank} is not in 0..{world_size - 1}")
        self.tokens = tokens if isinstance(tokens, np.ndarray) else np.asarray(tokens)
        _check_fits(self.tokens, context_length, name)
        self.context_length, self.stride, self.batch_size = context_length, stride, batch_size
        self.drop_last, self.shuffle, self.seed = drop_last, shuffle, seed
        # The book's range(0, len(ids) - max_length, stride); each rank takes every world_size-th window.
        self.all_starts = np.arange(0, len(self.tokens) - context_length, stride)[rank::world_size]
        if drop_last and len(self.all_starts) < batch_size:
            raise ScratchLLMError(f"{name} gives {len(self.all_starts)} windows, fewer than one batch of {batch_size}"
                                  " with drop_last: use a smaller batch, stride or context length")
        self.epoch, self.position = 0, 0  # position: batches already taken in this epoch

    def __len__(self) -> int:
        n = len(self.all_starts)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _epoch_starts(self) -> np.ndarray:
        if not self.shuffle:
            return self.all_starts
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.all_starts)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        starts = self._epoch_starts()
        while self.position < len(self):
            i = self.position * self.batch_size
            self.position += 1
            yield gather_windows(self.tokens, starts[i: i + self.batch_size], self.context_length)
        self.epoch, self.position = self.epoch + 1, 0

    def rewind(self) -> None:
        """Start this epoch over: the next ``iter()`` begins at the first window."""
        self.position = 0

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "sliding", "epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "sliding":
            raise ScratchLLMError(f"batch state {state} was not saved by SlidingWindows")
        self.epoch, self.position = state["epoch"], state["position"]
