"""How well a model predicts text: loss, perplexity and bits per byte, one definition for all.

Training's validation passes, the demo's final figure and ``scratchllm eval`` all call
``score_windows``, so their numbers mean the same thing. The text is cut into windows of the
model's context; every target token that is text (special tokens such as ``<|endoftext|>`` are
not) is scored:

    loss          = (sum of -ln p(y_t | x_{<=t}) over the scored tokens) / (number of them)  nats/token
    perplexity    = exp(loss)
    bits per byte = (sum of -ln p over the scored tokens) / ln 2 / (UTF-8 bytes of those tokens)

Bits per byte compares models with different tokenizers: a tokenizer with longer tokens has a
higher loss per token but the same text to predict.

>>> score = Score.from_sums(nats=693.1, tokens=1000, n_bytes=4000)
>>> round(score.loss, 4), round(score.perplexity, 3), round(score.bits_per_byte, 4)
(0.6931, 2.0, 0.25)
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from scratchllm.data.batches import SlidingWindows
from scratchllm.errors import ScratchLLMError
from scratchllm.train.distributed import DistributedContext
from scratchllm.train.losses import IGNORE_INDEX, loss_sum
from scratchllm.train.precision import autocast as precision_autocast


@dataclass(frozen=True)
class Score:
    """A model's loss on some text, and the size of what was scored."""

    loss: float  # mean nats per scored token
    perplexity: float
    bits_per_byte: float
    tokens: int  # scored target tokens
    bytes: int  # their UTF-8 bytes

    @classmethod
    def from_sums(cls, nats: float, tokens: int, n_bytes: int) -> Score:
        if tokens == 0 or n_bytes == 0:
            raise ScratchLLMError("there is no text to score: give a longer text than the model's context")
        loss = nats / tokens
        return cls(loss, math.exp(min(loss, 700.0)), nats / math.log(2) / n_bytes, int(tokens), int(n_bytes))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def text_token_bytes(tokenizer: Any, vocab_size: int) -> torch.Tensor:
    """(vocab_size,) UTF-8 bytes of each token id; 0 for special tokens and ids the tokenizer lacks,
    which are therefore never scored.

    >>> from scratchllm.tokenizer import BPETokenizer
    >>> text_token_bytes(BPETokenizer([], special_tokens={"<|endoftext|>": 256}), 258)[[97, 256, 257]].tolist()
    [1, 0, 0]
    """
    lengths = torch.zeros(vocab_size, dtype=torch.long)
    specials = set(tokenizer.special_tokens.values())
    for i in range(min(vocab_size, tokenizer.vocab_size)):
        if i not in specials:
            lengths[i] = len(tokenizer.token_bytes(i))
    return lengths


@torch.no_grad()
def score_windows(
    model: nn.Module,
    windows: Iterable[tuple[torch.Tensor, torch.Tensor]],
    token_bytes: torch.Tensor,
    *,
    max_batches: int = 0,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    dist: DistributedContext | None = None,
    progress: bool = False,
) -> Score:
    """Score the (inputs, targets) batches of ``windows`` (the first ``max_batches``; 0 = all).

    Under DDP rank r scores batches r, r + world_size, ... and the sums are added up, so every
    world size scores exactly the same tokens.
    """
    dist = dist or DistributedContext()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nats, tokens, n_bytes = 0.0, 0, 0
    total = len(windows) if hasattr(windows, "__len__") else None
    if total is not None and max_batches:
        total = min(total, max_batches)
    for i, (x, y) in enumerate(tqdm(windows, total=total, desc="eval", unit="batch", disable=not progress,
                                    dynamic_ncols=True)):
        if max_batches and i >= max_batches:
            break
        if not dist.takes(i):
            continue
        lengths = token_bytes[y.clamp(min=0)]  # (B, T)
        y = y.masked_fill(lengths == 0, IGNORE_INDEX)  # special tokens are not text
        with autocast():
            nats += loss_sum(model, x.to(device), y.to(device)).item()
        scored = y != IGNORE_INDEX
        tokens += int(scored.sum())
        n_bytes += int(lengths[scored].sum())
    model.train(was_training)
    nats, tokens, n_bytes = dist.eval_sum(nats, tokens, n_bytes)
    return Score.from_sums(nats, int(tokens), int(n_bytes))


def score_tokens(
    model: nn.Module,
    tokens: np.ndarray | list[int],
    tokenizer: Any,
    *,
    batch_size: int = 8,
    precision: str = "fp32",
    max_tokens: int = 0,
    progress: bool = False,
) -> Score:
    """Score token ids (the first ``max_tokens`` + 1 of them; 0 = all) in non-overlapping windows
    of the model's context.

    >>> from scratchllm.model import GPT, GPTConfig
    >>> from scratchllm.tokenizer import BPETokenizer
    >>> model, tokenizer = GPT(GPTConfig.preset("tiny", vocab_size=256, context_length=8)), BPETokenizer([])
    >>> score = score_tokens(model, tokenizer.encode("To be, or not to be"), tokenizer)
    >>> score.tokens, score.bytes        # two windows of 8 (the last 3 tokens make no full window)
    (16, 16)
    """
    context = model.config.context_length
    tokens = np.asarray(tokens)
    if max_tokens:
        tokens = tokens[: max_tokens + 1]
    windows = SlidingWindows(tokens, context, context, batch_size, name="the text")
    device = next(model.parameters()).device
    return score_windows(model, windows, text_token_bytes(tokenizer, model.config.vocab_size),
                         autocast=lambda: precision_autocast(precision, device), progress=progress)


SPLITS = ("val", "train", "all")


def corpus_tokens(corpus: str | os.PathLike, tokenizer: Any, *, split: str = "val", val_fraction: float = 0.1,
                  cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """The ids of a corpus's ``split``, as ``prepare`` would make them with ``tokenizer``.

    ``corpus`` is a corpus name, a text file or folder (split as ``prepare`` splits it, so ``val``
    is the text a model trained on the corpus never saw), or a prepared data folder (its shards,
    which must have been made with ``tokenizer``).
    """
    from scratchllm.data.corpora import Source, split_corpus
    from scratchllm.data.shards import encode_sources, open_prepared

    if split not in SPLITS:
        raise ScratchLLMError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if (Path(corpus) / "manifest.json").is_file():
        data = open_prepared(corpus, tokenizer)
        return {"val": data.val, "train": data.train}.get(split, np.concatenate([data.train, data.val]))
    parts = split_corpus(corpus, val_fraction, cache_dir)
    sources: list[Source] = {"val": parts.val, "train": parts.train}.get(split, parts.train + parts.val)
    return encode_sources(sources, tokenizer)
