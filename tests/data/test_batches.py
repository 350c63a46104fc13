"""Batches: shifted targets, determinism, resume, ranks, and the book's sliding windows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scratchllm.data.batches import RandomBatches, SlidingWindows
from scratchllm.errors import ScratchLLMError


def _tokens(n: int, dtype=np.uint16, path=None) -> np.ndarray:
    values = np.random.default_rng(0).integers(0, 60_000, size=n).astype(dtype)
    if path is None:
        return values
    values.tofile(path)
    return np.memmap(path, dtype=dtype, mode="r")


def _starts_of(tokens: np.ndarray, x: torch.Tensor) -> list[int]:
    """Find where each row of x starts in tokens (the rows are slices; the values make them unique)."""
    T = x.shape[1]
    found = []
    for row in x.numpy():
        hits = [s for s in range(len(tokens) - T + 1) if np.array_equal(tokens[s: s + T], row)]
        assert len(hits) >= 1
        found.append(hits[0])
    return found


def test_random_batches_are_shifted_windows_of_the_memmap(tmp_path):
    tokens = _tokens(500, path=tmp_path / "t.bin")
    x, y = next(RandomBatches(tokens, batch_size=6, context_length=16, seed=3))
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (6, 16)
    assert x.is_contiguous() and y.is_contiguous()
    for row, start in zip(range(6), _starts_of(tokens, x), strict=True):
        assert y[row].tolist() == tokens[start + 1: start + 17].tolist()


def test_random_batches_cover_every_start_including_the_last():
    tokens = np.arange(40, dtype=np.uint32)
    batches = RandomBatches(tokens, batch_size=64, context_length=8, seed=0)
    seen = set()
    for _ in range(20):
        x, y = next(batches)
        seen |= set(x[:, 0].tolist())
    assert seen == set(range(40 - 8))  # starts 0..31: the last window ends on the last token
    assert int(y.max()) <= 39


def test_random_batches_are_deterministic_and_resume_exactly():
    tokens = _tokens(10_000)
    a = RandomBatches(tokens, 4, 32, seed=7)
    first = [next(a) for _ in range(5)]
    state = json.loads(json.dumps(a.state_dict()))  # what a checkpoint stores
    rest = [next(a) for _ in range(5)]
    b = RandomBatches(tokens, 4, 32, seed=7)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(first, [next(b) for _ in range(5)], strict=True))
    resumed = RandomBatches(tokens, 4, 32, seed=7)
    resumed.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(rest, [next(resumed) for _ in range(5)], strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other = next(RandomBatches(tokens, 4, 32, seed=8))
    assert not torch.equal(other[0], first[0][0])
    with pytest.raises(ScratchLLMError, match="seed"):
        RandomBatches(tokens, 4, 32, seed=8).load_state_dict(state)


def test_two_ranks_see_the_micro_batches_of_one_process():
    tokens = _tokens(5_000)
    single = RandomBatches(tokens, 3, 16, seed=1)
    ranks = [RandomBatches(tokens, 3, 16, seed=1, rank=r, world_size=2) for r in range(2)]
    for _ in range(4):  # step s: rank r gets micro-batch 2s + r of the single process
        for r in range(2):
            assert torch.equal(next(ranks[r])[0], next(single)[0])
    # Resuming 2 ranks' state in 1 process continues after the same global batch.
    continued = RandomBatches(tokens, 3, 16, seed=1)
    continued.load_state_dict(ranks[0].state_dict())
    assert torch.equal(next(continued)[0], next(single)[0])


def test_too_small_a_corpus_says_how_many_tokens_it_has_and_needs():
    with pytest.raises(ScratchLLMError, match="validation split has 64 tokens but one window of context 64 needs 65"):
        RandomBatches(np.arange(64), 2, 64, name="the validation split")
    with pytest.raises(ScratchLLMError, match="has 10 tokens"):
        SlidingWindows(np.arange(10), 10, 1, 1)
    RandomBatches(np.arange(65), 2, 64)  # exactly one window fits


def _book_windows(ids: list[int], max_length: int, stride: int) -> list[tuple[list[int], list[int]]]:
    """The book's GPTDatasetV1 loop, verbatim in spirit: the reference for SlidingWindows."""
    out = []
    for i in range(0, len(ids) - max_length, stride):
        out.append((ids[i: i + max_length], ids[i + 1: i + max_length + 1]))
    return out


@pytest.mark.parametrize("n,T,stride,B", [(50, 4, 4, 3), (50, 4, 1, 8), (23, 5, 7, 2), (6, 5, 1, 4), (100, 8, 3, 5)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_sliding_windows_match_the_books_dataset(n, T, stride, B, drop_last):
    ids = list(range(1000, 1000 + n))
    ref = _book_windows(ids, T, stride)
    if drop_last and len(ref) < B:
        with pytest.raises(ScratchLLMError, match="fewer than one batch"):
            SlidingWindows(np.array(ids), T, stride, B, drop_last=drop_last)
        return
    windows = SlidingWindows(np.array(ids), T, stride, B, drop_last=drop_last)
    got = [(x.tolist(), y.tolist()) for bx, by in windows for x, y in zip(bx, by, strict=True)]
    keep = len(ref) // B * B if drop_last else len(ref)
    assert got == ref[:keep]
    assert len(windows) == -(-keep // B)
    assert [(x.tolist(), y.tolist()) for bx, by in windows for x, y in zip(bx, by, strict=True)] == got  # epoch 2


def test_sliding_windows_resume_mid_epoch_and_shuffle():
    tokens = _tokens(300)
    a = SlidingWindows(tokens, 8, 4, 5, shuffle=True, seed=2)
    it = iter(a)
    [next(it) for _ in range(3)]
    state = json.loads(json.dumps(a.state_dict()))
    rest = [x for x, _ in it]
    b = SlidingWindows(tokens, 8, 4, 5, shuffle=True, seed=2)
    b.load_state_dict(state)
    assert all(torch.equal(p, q) for p, q in zip(rest, [x for x, _ in b], strict=True))
    plain = {tuple(x.tolist()) for bx, _ in SlidingWindows(tokens, 8, 4, 5) for x in bx}
    epoch1 = [tuple(x.tolist()) for bx, _ in a for x in bx]  # a is now in its second epoch
    assert set(epoch1) == plain and len(epoch1) == len(plain)


def test_sliding_windows_split_across_ranks():
    tokens = np.arange(200)
    whole = [x for bx, _ in SlidingWindows(tokens, 8, 8, 4) for x in bx[:, 0].tolist()]
    parts = [x for r in range(3) for bx, _ in SlidingWindows(tokens, 8, 8, 4, rank=r, world_size=3)
             for x in bx[:, 0].tolist()]
    assert sorted(parts) == whole
