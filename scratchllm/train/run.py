"""``scratchllm train``'s run: the trainer's pieces built from a ``RunConfig``.

    prepared data -> GPT(config.model) -> random training windows, validation windows
                  -> Trainer(next-token loss, bits-per-byte evaluation, samples).fit()
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from scratchllm.data.batches import RandomBatches, SlidingWindows
from scratchllm.data.shards import PreparedData, open_prepared
from scratchllm.errors import ScratchLLMError
from scratchllm.generate import generate
from scratchllm.model import GPT
from scratchllm.train.allocator import keep_freed_cpu_memory
from scratchllm.train.config import RunConfig
from scratchllm.train.distributed import DistributedContext, setup_distributed, teardown_distributed
from scratchllm.train.evaluation import score_windows, text_token_bytes
from scratchllm.train.loop import AutocastFactory, Evaluator, Trainer, TrainResult
from scratchllm.train.losses import LossFunction, next_token_loss


def train(config: RunConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
          loss: LossFunction = next_token_loss) -> TrainResult:
    """Train ``config`` on the prepared data in ``config.data.dir``, writing to ``run_dir``.

    With ``resume=True`` the newest checkpoint in ``run_dir`` is loaded and training continues
    exactly where it stopped. Started by torchrun, every process runs this with its own rank.
    ``loss`` replaces the next-token loss (distillation passes its own).
    """
    dist = setup_distributed(config.train.device)
    if dist.device.type == "cpu":
        keep_freed_cpu_memory()
    try:
        return build_trainer(config, run_dir, dist=dist, progress=progress, loss=loss).fit(resume)  # locks run_dir
    finally:
        teardown_distributed(dist)


def build_trainer(config: RunConfig, run_dir: str | Path, *, dist: DistributedContext | None = None,
                  progress: bool = True, loss: LossFunction = next_token_loss) -> Trainer:
    """The ``Trainer`` of a config: its data, a freshly initialised GPT, batches, evaluation and samples."""
    tc, mc = config.train, config.model
    dist = dist or DistributedContext()
    if not config.data.dir:
        raise ScratchLLMError("no data given: pass --data DATA_DIR (made by `scratchllm prepare`)")
    data = open_prepared(config.data.dir)
    if mc.vocab_size < data.vocab_size:
        raise ScratchLLMError(
            f"model.vocab_size={mc.vocab_size} is smaller than the data's vocabulary of {data.vocab_size}; "
            "leave model.vocab_size unset to use the data's"
        )
    torch.manual_seed(tc.seed)
    model = GPT(mc).to(dist.device)
    batches = RandomBatches(data.train, tc.batch_size, mc.context_length, tc.seed,
                            rank=dist.rank, world_size=dist.world_size, name="the training split")
    return Trainer(model, batches, run_dir, settings=tc, loss=loss, evaluate=text_evaluator(data, mc.context_length,
                   tc.batch_size, tc.eval_batches), tokenizer=data.tokenizer, run_config=config,
                   sample=_sampler(data, tc.sample_tokens), progress=progress, dist=dist)


def text_evaluator(data: PreparedData, context_length: int, batch_size: int, max_batches: int) -> Evaluator:
    """Validation loss, perplexity and bits per byte on the first ``max_batches`` batches of
    non-overlapping windows of the validation split (``scratchllm.evaluation``'s definition)."""
    token_bytes = text_token_bytes(data.tokenizer, data.vocab_size)
    windows = SlidingWindows(data.val, context_length, context_length, batch_size, name="the validation split")

    def evaluate(model: nn.Module, precision_ctx: AutocastFactory, dist: DistributedContext) -> dict[str, float]:
        windows.rewind()
        score = score_windows(model, windows, token_bytes, max_batches=max_batches, autocast=precision_ctx, dist=dist)
        return {"val_loss": score.loss, "val_ppl": score.perplexity, "val_bpb": score.bits_per_byte}

    return evaluate


def _sampler(data: PreparedData, n_tokens: int) -> Callable[[nn.Module, int], str]:
    """Text the model writes after the validation split's first token (a private generator: the
    training RNG, and so exact resume, is untouched)."""

    def sample(model: nn.Module, step: int) -> str:
        start = torch.tensor([data.val[:1].tolist()], device=next(model.parameters()).device)
        out = generate(model, start, max_new_tokens=n_tokens, temperature=1.0, seed=step, crop=True)  # eval mode inside
        return data.tokenizer.decode(out[0].tolist())

    return sample
