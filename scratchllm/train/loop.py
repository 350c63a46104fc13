"""The training loop: next-token cross-entropy, gradient accumulation, AdamW, evaluation, checkpoints.

One optimizer update ("step") sees ``grad_accum_steps`` micro-batches on each of ``world_size``
processes. The loss of the step is the mean cross-entropy over every scored target token of all
of them,

    L = (1 / N) * sum_{micro-batches, ranks} sum_{scored tokens t} -log p(y_t | x_{<=t})

where N counts the scored tokens (targets equal to ``IGNORE_INDEX``, i.e. padding, are skipped).
Each micro-batch backpropagates its sum divided by N, so the accumulated gradient is exactly the
gradient of L: N micro-batches equal one batch N times larger (tests/train/test_loop.py).
"""

from __future__ import annotations

import contextlib
import math
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from scratchllm import checkpoint as ckpt
from scratchllm.data.batches import RandomBatches, SlidingWindows
from scratchllm.data.shards import open_prepared
from scratchllm.errors import ScratchLLMError
from scratchllm.model import GPT
from scratchllm.train.allocator import keep_freed_cpu_memory
from scratchllm.train.config import RunConfig
from scratchllm.train.distributed import (
    DistributedContext,
    all_reduce_sum,
    barrier,
    broadcast_flag,
    seed_rank_dropout,
    setup_distributed,
    teardown_distributed,
)
from scratchllm.train.metrics import MetricsLog, plot_run
from scratchllm.train.optim import lr_at, make_optimizer, set_lr
from scratchllm.train.precision import autocast, matmul_peak_flops, resolve_precision

IGNORE_INDEX = -100  # F.cross_entropy's default: targets with this id are not scored
CONFIG_FILE = "config.toml"


@dataclass
class TrainResult:
    """What a finished run reports."""

    run_dir: Path
    step: int
    tokens: int
    val_loss: float | None
    best_val_loss: float | None
    seconds: float


def loss_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over the scored targets of ``y`` (B, T), in float32."""
    logits = model(x)  # (B, T, vocab)
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")


def accumulate_gradients(
    model: nn.Module,
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
    n_scored: int,
    *,
    precision_ctx: Any = contextlib.nullcontext,
    world_size: int = 1,
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    """Backpropagate the mean loss over ``n_scored`` target tokens (all micro-batches, all ranks).

    Returns this process's summed loss. Under DDP (``world_size`` > 1), which averages gradients
    over ranks, each rank's term is scaled by ``world_size`` so the average is the global mean,
    and the gradient all-reduce runs only after the last micro-batch (``no_sync`` before it).
    """
    total = torch.zeros((), dtype=torch.float32)
    for i, (x, y) in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        sync = model.no_sync() if world_size > 1 and not last else contextlib.nullcontext()
        with sync:
            with precision_ctx():
                micro_loss = loss_sum(model, x, y)
            scaled = micro_loss * (world_size / n_scored)
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        total += micro_loss.detach().float().cpu()
    return total


@torch.no_grad()
def evaluate(model: nn.Module, windows: SlidingWindows, max_batches: int, ctx: DistributedContext,
             precision_ctx: Any = contextlib.nullcontext) -> float:
    """Mean validation cross-entropy (nats per token) over the first ``max_batches`` batches of
    ``windows`` (0 = all of them). Rank r scores batches r, r + world_size, ...; the sums are
    then added up, so every world size scores exactly the same tokens."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    windows.load_state_dict({"kind": "sliding", "epoch": 0, "position": 0})
    for i, (x, y) in enumerate(windows):
        if max_batches and i >= max_batches:
            break
        if i % ctx.world_size != ctx.rank:
            continue
        with precision_ctx():
            total += loss_sum(model, x.to(ctx.device), y.to(ctx.device)).item()
        count += int((y != IGNORE_INDEX).sum())
    model.train(was_training)
    total, count = all_reduce_sum(ctx, total, count)
    return total / count


def bytes_per_token(tokenizer: Any, tokens: Any, sample: int = 1_000_000) -> float:
    """UTF-8 bytes per token over (the first ``sample`` of) ``tokens``: turns a loss in nats per
    token into bits per byte, ``loss / ln 2 / bytes_per_token``, comparable across tokenizers."""
    ids = tokens[:sample].tolist()
    return len(tokenizer.decode_bytes(ids)) / max(len(ids), 1)


def _is_out_of_memory(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in text or "out of memory" in text


def train(config: RunConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train ``config`` on the prepared data in ``config.data.dir``, writing to ``run_dir``.

    With ``resume=True`` the newest checkpoint in ``run_dir`` is loaded and training continues
    exactly where it stopped. Started by torchrun, every process runs this with its own rank.
    """
    ctx = setup_distributed(config.train.device)
    if ctx.device.type == "cpu":
        keep_freed_cpu_memory()
    try:
        return _Run(config, Path(run_dir), ctx, progress).fit(resume)
    finally:
        teardown_distributed(ctx)


class _Run:
    """The state of one training run; ``fit`` is the loop."""

    def __init__(self, config: RunConfig, run_dir: Path, ctx: DistributedContext, progress: bool):
        self.config, self.run_dir, self.ctx, self.progress = config, run_dir, ctx, progress
        tc, mc = config.train, config.model
        if not config.data.dir:
            raise ScratchLLMError("no data given: pass --data DATA_DIR (made by `scratchllm prepare`)")
        self.data = open_prepared(config.data.dir)
        if mc.vocab_size < self.data.vocab_size:
            raise ScratchLLMError(
                f"model.vocab_size={mc.vocab_size} is smaller than the data's vocabulary of {self.data.vocab_size}; "
                "leave model.vocab_size unset to use the data's"
            )
        torch.manual_seed(tc.seed)
        self.model = GPT(mc).to(ctx.device)
        self.batches = RandomBatches(self.data.train, tc.batch_size, mc.context_length, tc.seed,
                                     rank=ctx.rank, world_size=ctx.world_size, name="the training split")
        self.val_windows = SlidingWindows(self.data.val, mc.context_length, mc.context_length, tc.batch_size,
                                          name="the validation split")
        self.optimizer = make_optimizer(self.model, lr=tc.lr, weight_decay=tc.weight_decay,
                                        betas=(tc.beta1, tc.beta2), device_type=ctx.device.type)
        self.step, self.tokens = 0, 0
        self.val_loss: float | None = None
        self.best_val_loss: float | None = None
        self.bytes_per_token = bytes_per_token(self.data.tokenizer, self.data.val)
        self.precision = tc.precision
        self.scaler: torch.amp.GradScaler | None = None

    # -- setup ------------------------------------------------------------------------------

    def _start(self, resume: bool) -> None:
        tc = self.config.train
        self._resume_state: dict[str, Any] = {}
        if resume:
            self._load_newest_checkpoint()
        elif ckpt.list_checkpoints(self.run_dir):
            raise ScratchLLMError(f"{self.run_dir} already holds a run: continue it with --resume {self.run_dir}, "
                                  "or choose another --out")
        else:
            shape = (tc.batch_size, self.config.model.context_length)
            self.precision = resolve_precision(tc.precision, self.model, shape, self.ctx.device)
        if self.precision == "fp16":
            self.scaler = torch.amp.GradScaler("cuda")
            if self._resume_state.get("grad_scaler"):
                self.scaler.load_state_dict(self._resume_state["grad_scaler"])
        self.forward_model: nn.Module = self.model
        if tc.compile:
            self.forward_model = torch.compile(self.model)
        if self.ctx.enabled:
            device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            self.forward_model = nn.parallel.DistributedDataParallel(self.forward_model, device_ids=device_ids)
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.config.save(self.run_dir / CONFIG_FILE)
        self.metrics = MetricsLog(self.run_dir, resume_step=self.step if resume else 0) if self.ctx.is_main else None
        self.peak_flops = tc.peak_flops or matmul_peak_flops(self.precision, self.ctx.device)
        self.flops_per_token = self.model.flops_per_token()

    def _load_newest_checkpoint(self) -> None:
        found = ckpt.list_checkpoints(self.run_dir)
        if not found:
            raise ScratchLLMError(f"{self.run_dir} has no checkpoint to resume from; start it again without --resume")
        path = found[-1]
        ckpt.load_model_weights(self.model, path)
        state = ckpt.load_training_state(path, self.optimizer)
        self._resume_state = state
        self.step, self.tokens = state["step"], state["tokens"]
        self.val_loss, self.best_val_loss = state.get("val_loss"), state.get("best_val_loss")
        self.precision = state["precision"]
        self.batches.load_state_dict(state["data"])
        ckpt.set_rng_state(state["rng"])

    # -- the loop ---------------------------------------------------------------------------

    def fit(self, resume: bool) -> TrainResult:
        tc = self.config.train
        self._start(resume)
        begin = time.perf_counter()
        if not resume and tc.eval_at_start and tc.eval_interval:
            self._evaluate()
        bar = tqdm(total=tc.max_steps, initial=self.step, disable=not (self.progress and self.ctx.is_main),
                   desc="train", unit="step", dynamic_ncols=True)
        window_start, window_tokens = time.perf_counter(), 0
        training_seconds, last = 0.0, self.step >= tc.max_steps
        while not last:
            lr = lr_at(self.step, max_lr=tc.lr, min_lr=tc.min_lr, warmup_steps=tc.warmup_steps,
                       max_steps=tc.max_steps)
            step_start = time.perf_counter()
            loss, step_tokens = self._train_step(lr)
            training_seconds += time.perf_counter() - step_start
            self.step += 1
            self.tokens += step_tokens
            window_tokens += step_tokens
            bar.update(1)
            # Every rank must agree to stop, so rank 0's clock decides.
            out_of_time = tc.max_seconds > 0 and broadcast_flag(self.ctx, training_seconds >= tc.max_seconds)
            last = self.step >= tc.max_steps or out_of_time
            if out_of_time and self.step < tc.max_steps and self.ctx.is_main:
                tqdm.write(f"train.max_seconds={tc.max_seconds:g} reached at step {self.step} of {tc.max_steps}")
            if self.step % tc.log_interval == 0 or last:
                elapsed = time.perf_counter() - window_start
                tok_s = window_tokens / elapsed if elapsed > 0 else 0.0
                mfu = tok_s * self.flops_per_token / self.peak_flops
                self._log(step=self.step, loss=loss, lr=lr, tokens=self.tokens, tokens_per_s=round(tok_s, 1),
                          mfu=round(mfu, 4))
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}", mfu=f"{mfu:.1%}",
                                refresh=False)
                window_start, window_tokens = time.perf_counter(), 0
            evaluated = False
            if (tc.eval_interval and self.step % tc.eval_interval == 0) or last:
                self._evaluate()
                evaluated = True
            if (tc.save_every and self.step % tc.save_every == 0) or last:
                self._save(with_val=evaluated)
            if evaluated:  # evaluation and saving are not training time
                window_start, window_tokens = time.perf_counter(), 0
        bar.close()
        seconds = time.perf_counter() - begin
        if self.ctx.is_main:
            self.metrics.close()
            if tc.plot:
                plot_run(self.run_dir)
        return TrainResult(self.run_dir, self.step, self.tokens, self.val_loss, self.best_val_loss, seconds)

    def _train_step(self, lr: float) -> tuple[float, int]:
        """One optimizer update; returns the step's mean loss over all ranks and the tokens it saw."""
        tc, device = self.config.train, self.ctx.device
        set_lr(self.optimizer, lr)
        if self.ctx.enabled and self.config.model.dropout > 0:
            seed_rank_dropout(tc.seed, self.step, self.ctx.rank)
        micro = [tuple(t.to(device, non_blocking=True) for t in next(self.batches)) for _ in range(tc.grad_accum_steps)]
        n_local = sum(int((y != IGNORE_INDEX).sum()) for _, y in micro)
        (n_scored,) = all_reduce_sum(self.ctx, n_local)
        try:
            local_sum = accumulate_gradients(
                self.forward_model, micro, int(n_scored), world_size=self.ctx.world_size, scaler=self.scaler,
                precision_ctx=lambda: autocast(self.precision, device),
            )
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not _is_out_of_memory(err):
                raise
            raise ScratchLLMError(
                f"a micro-batch of {tc.batch_size} x {self.config.model.context_length} tokens does not fit in "
                f"{device.type} memory: lower train.batch_size and raise train.grad_accum_steps by the same factor "
                "(same effective batch)"
            ) from None
        (global_sum,) = all_reduce_sum(self.ctx, float(local_sum))
        loss = global_sum / n_scored
        if not math.isfinite(loss):
            self._stop_on_bad_loss(loss)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if tc.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, int(n_scored)

    def _stop_on_bad_loss(self, loss: float) -> None:
        found = ckpt.list_checkpoints(self.run_dir)
        kept = f"the last good checkpoint is {found[-1]}" if found else "no checkpoint had been written yet"
        raise ScratchLLMError(
            f"the training loss became {loss} at step {self.step + 1}; stopped before applying it, {kept}. "
            "Lower train.lr, keep train.grad_clip on, or use train.precision=fp32, then --resume or start again"
        )

    # -- evaluation, logging, checkpoints -----------------------------------------------------

    def _evaluate(self) -> None:
        tc = self.config.train
        self.val_loss = evaluate(self.forward_model, self.val_windows, tc.eval_batches, self.ctx,
                                 lambda: autocast(self.precision, self.ctx.device))
        if self.best_val_loss is None or self.val_loss < self.best_val_loss:
            self.best_val_loss = self.val_loss
        record = {"step": self.step, "val_loss": self.val_loss, "val_ppl": math.exp(min(self.val_loss, 700)),
                  "tokens": self.tokens}
        record["val_bpb"] = self.val_loss / math.log(2) / self.bytes_per_token
        self._log(**record)
        if self.ctx.is_main and self.progress:
            tqdm.write(f"step {self.step}: val loss {self.val_loss:.4f}, perplexity {record['val_ppl']:.2f}, "
                       f"{record['val_bpb']:.3f} bits/byte")
            if tc.sample_tokens:  # the model's own words, indented under the figures
                text = self._sample(tc.sample_tokens)
                text = "".join(c if c.isprintable() or c == "\n" else "\ufffd" for c in text)  # no control codes
                tqdm.write(textwrap.indent(text, "    | ", lambda line: True))

    def _sample(self, n_tokens: int) -> str:
        from scratchllm.generate import generate

        start = torch.tensor([self.data.val[:1].tolist()], device=self.ctx.device)
        self.model.eval()
        # a private generator: sampling must not shift the training RNG (exact resume)
        out = generate(self.model, start, max_new_tokens=n_tokens, temperature=1.0, seed=self.step, crop=True)
        self.model.train()
        return self.data.tokenizer.decode(out[0].tolist())

    def _log(self, **record: Any) -> None:
        if self.metrics is not None:
            self.metrics.log(**record)

    def _save(self, with_val: bool) -> None:
        if self.ctx.is_main:
            state = {
                "step": self.step,
                "tokens": self.tokens,
                "val_loss": self.val_loss if with_val else None,
                "best_val_loss": self.best_val_loss,
                "precision": self.precision,
                "world_size": self.ctx.world_size,
                "scheduler": {"name": "warmup_cosine", "lr": self.optimizer.param_groups[0]["lr"]},
                "rng": ckpt.rng_state(),
                "data": self.batches.state_dict(),
            }
            if self.scaler is not None:
                state["grad_scaler"] = self.scaler.state_dict()
            ckpt.save_checkpoint(ckpt.checkpoint_path(self.run_dir, self.step), self.model, self.data.tokenizer,
                                 optimizer=self.optimizer, train_state=state)
            ckpt.prune_checkpoints(self.run_dir, self.config.train.keep_last)
        barrier(self.ctx)
