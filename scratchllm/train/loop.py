"""The training loop, as a ``Trainer`` that is given its pieces: model, batches, loss, parameters.

One optimizer update ("step") sees ``grad_accum_steps`` micro-batches on each of ``world_size``
processes. The loss of the step is the mean over every unit (scored target token, for
next-token prediction) of all of them,

    L = (1 / N) * sum_{micro-batches, ranks} (loss summed over the micro-batch's units)

where N counts the units (targets equal to ``IGNORE_INDEX``, i.e. padding, are not units). Each
micro-batch backpropagates its sum divided by N, so the accumulated gradient is exactly the
gradient of L: N micro-batches equal one batch N times larger (tests/train/test_loop.py).

``scratchllm train`` builds the pieces from a config (``scratchllm.train.run``); from Python any
model, batch source and loss can be trained, with a frozen subset of the parameters:

>>> trainer = Trainer(model, batches, "runs/probe", settings=TrainConfig(max_steps=100),
...                   loss=my_loss, trainable=model.out_head.parameters())      # doctest: +SKIP
>>> trainer.fit().step                                                          # doctest: +SKIP
100
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from scratchllm import checkpoint as ckpt
from scratchllm.errors import ScratchLLMError
from scratchllm.fileio import exclusive_lock
from scratchllm.train.activations import checkpoint_blocks
from scratchllm.train.config import RunConfig, TrainConfig
from scratchllm.train.distributed import (
    DistributedContext,
    all_reduce_sum,
    barrier,
    broadcast_flag,
    seed_rank_dropout,
)
from scratchllm.train.losses import IGNORE_INDEX, Loss, LossFunction, as_loss, next_token_loss, scored_tokens
from scratchllm.train.metrics import MetricsLog, plot_run
from scratchllm.train.optim import lr_at, make_optimizer, set_lr
from scratchllm.train.precision import autocast, matmul_peak_flops, resolve_precision

__all__ = ["CONFIG_FILE", "IGNORE_INDEX", "Evaluator", "TrainResult", "Trainer", "accumulate_gradients",
           "describe_evaluation", "mean_loss_evaluator"]

CONFIG_FILE = "config.toml"

AutocastFactory = Callable[[], contextlib.AbstractContextManager]
# (model, the precision's autocast, the process group) -> {"val_loss": ..., other figures}
Evaluator = Callable[[nn.Module, AutocastFactory, DistributedContext], dict[str, float]]


@dataclass
class TrainResult:
    """What a finished run reports."""

    run_dir: Path
    step: int
    tokens: int
    val_loss: float | None
    best_val_loss: float | None
    seconds: float


def accumulate_gradients(
    model: nn.Module,
    micro_batches: list[Any],
    n_units: int,
    *,
    loss: LossFunction = next_token_loss,
    precision_ctx: AutocastFactory = contextlib.nullcontext,
    world_size: int = 1,
    scaler: torch.amp.GradScaler | None = None,
) -> Loss:
    """Backpropagate the mean loss over ``n_units`` units (all micro-batches, all ranks).

    Returns this process's summed loss and terms. Under DDP (``world_size`` > 1), which averages
    gradients over ranks, each rank's term is scaled by ``world_size`` so the average is the
    global mean, and the gradient all-reduce runs only after the last micro-batch (``no_sync``).
    """
    total = torch.zeros((), dtype=torch.float32)
    terms: dict[str, torch.Tensor] = {}
    metrics: dict[str, torch.Tensor] = {}
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        sync = _without_gradient_sync(model) if world_size > 1 and not last else contextlib.nullcontext()
        with sync:
            with precision_ctx():
                micro = as_loss(loss(model, batch))
            scaled = micro.total * (world_size / n_units)
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        total += micro.total.detach().float().cpu()
        for name, value in micro.terms.items():
            terms[name] = terms.get(name, 0.0) + value.detach().float().cpu()
        for name, value in micro.metrics.items():
            metrics[name] = metrics.get(name, 0.0) + value.detach().float().cpu()
    return Loss(total, terms, metrics)


def _without_gradient_sync(model: nn.Module) -> contextlib.AbstractContextManager:
    """Hold back the gradient reduction of a micro-batch that is not the step's last."""
    if hasattr(model, "no_sync"):  # DistributedDataParallel
        return model.no_sync()
    return _sharding().gradient_sync_off(model)


def _sharding():
    """``scratchllm.train.sharding``, imported when a run shards: torch's FSDP takes seconds to import."""
    from scratchllm.train import sharding

    return sharding


def mean_loss_evaluator(val_batches: Iterable[Any], loss: LossFunction = next_token_loss,
                        units: Callable[[Any], int] = scored_tokens, max_batches: int = 0) -> Evaluator:
    """An evaluator for any loss: its mean per unit over (the first ``max_batches`` of)
    ``val_batches``, which must start over each time it is iterated (a list, a DataLoader)."""

    @torch.no_grad()
    def evaluate(model: nn.Module, precision_ctx: AutocastFactory, dist: DistributedContext) -> dict[str, float]:
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        for i, batch in enumerate(val_batches):
            if max_batches and i >= max_batches:
                break
            if not dist.takes(i):
                continue
            with precision_ctx():
                total += float(as_loss(loss(model, _to(batch, dist.device))).total)
            count += units(batch)
        model.train(was_training)
        total, count = dist.eval_sum(total, count)
        if not count:
            raise ScratchLLMError("the validation batches hold nothing to score")
        return {"val_loss": total / count, "val_ppl": math.exp(min(total / count, 700.0))}

    return evaluate


def describe_evaluation(record: dict[str, float]) -> str:
    """One line for an evaluation's figures.

    >>> describe_evaluation({"val_loss": 1.5, "val_ppl": 4.4817, "val_bpb": 2.25, "val_accuracy": 0.5})
    'val loss 1.5000, perplexity 4.48, 2.250 bits/byte, accuracy 0.5000'
    """
    known = {"val_loss": "val loss {:.4f}", "val_ppl": "perplexity {:.2f}", "val_bpb": "{:.3f} bits/byte"}
    return ", ".join(known.get(name, name.removeprefix("val_") + " {:.4f}").format(value)
                     for name, value in record.items())


def _to(batch: Any, device: torch.device) -> Any:
    """A batch (tensors, or tuples/lists/dicts of them) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def _is_out_of_memory(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in text or "out of memory" in text


class Trainer:
    """Trains ``model`` on ``train_batches`` into ``run_dir`` (checkpoints, metrics.jsonl, loss.png).

    - ``train_batches``: an iterator of micro-batches; with ``state_dict``/``load_state_dict``
      (as ``RandomBatches`` has) a resumed run continues exactly where it stopped.
    - ``loss(model, batch)``: a ``Loss`` (or tensor) summed over the batch's units, and
      ``units(batch)`` their number (see ``scratchllm.train.losses``).
    - ``trainable``: the parameters that train; every other parameter of the model is frozen
      (``requires_grad=False``). Default: those that require gradients.
    - ``evaluate``: an ``Evaluator``; by default the loss's mean over ``val_batches``, if given.
    - ``tokenizer`` is saved with each checkpoint; ``run_config``, with its precision resolved,
      as ``config.toml``; ``sample(model, step)`` returns text shown after each evaluation.
    - ``dist``: the process group of a torchrun launch (default: one process on the model's device).
    - ``task``: saved in each checkpoint's config (``checkpoint.read_task``): what a replaced head
      means, such as a classifier's label names.

    Precision is resolved once, before the first step (``auto`` times the model both ways).
    """

    def __init__(
        self,
        model: nn.Module,
        train_batches: Iterator[Any],
        run_dir: str | Path,
        *,
        settings: TrainConfig,
        loss: LossFunction = next_token_loss,
        units: Callable[[Any], int] = scored_tokens,
        trainable: Iterable[nn.Parameter] | None = None,
        val_batches: Iterable[Any] | None = None,
        evaluate: Evaluator | None = None,
        tokenizer: Any = None,
        run_config: RunConfig | None = None,
        sample: Callable[[nn.Module, int], str] | None = None,
        progress: bool = True,
        dist: DistributedContext | None = None,
        task: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.batches, self.run_dir = model, train_batches, Path(run_dir)
        self.settings, self.loss, self.units = settings, loss, units
        self.tokenizer, self.run_config, self.sample, self.progress = tokenizer, run_config, sample, progress
        self.task = task
        self.dist = dist or DistributedContext(device=next(model.parameters()).device)
        if evaluate is None and val_batches is not None:
            evaluate = mean_loss_evaluator(val_batches, loss, units, settings.eval_batches)
        self.evaluate = evaluate
        if trainable is not None:
            chosen = {id(p) for p in trainable}
            for p in model.parameters():
                p.requires_grad_(id(p) in chosen)
        if settings.activation_checkpointing:  # before sharding: FSDP gathers a block's weights before its recompute
            checkpoint_blocks(model)
        if settings.parallel == "fsdp" and self.dist.enabled:  # before the optimizer: it updates the shards
            _sharding().shard_model(model)
            self.dist = dataclasses.replace(self.dist, sharded=True)
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        if not self.parameters:
            raise ScratchLLMError("no parameter is trainable: pass trainable= or leave some requires_grad=True")
        self.optimizer = make_optimizer(self.parameters, lr=settings.lr, weight_decay=settings.weight_decay,
                                        betas=(settings.beta1, settings.beta2), device_type=self.dist.device.type)
        self.step, self.tokens = 0, 0
        self.val_loss: float | None = None
        self.best_val_loss: float | None = None
        self.precision = settings.precision
        self.scaler: torch.amp.GradScaler | None = None
        self.metrics: MetricsLog | None = None

    # -- setup ------------------------------------------------------------------------------

    def _start(self, resume: bool) -> None:
        tc = self.settings
        resume_state: dict[str, Any] = {}
        if resume:
            resume_state = self._load_newest_checkpoint()
        elif ckpt.list_checkpoints(self.run_dir):
            raise ScratchLLMError(f"{self.run_dir} already holds a run: continue it with --resume {self.run_dir}, "
                                  "or choose another --out")
        else:
            shape = (tc.batch_size, self.model.config.context_length)
            if tc.precision == "auto" and self.progress and self.dist.is_main:
                tqdm.write("train.precision=auto: choosing between fp32 and bf16 (may time a training step in each)")
            self.precision = resolve_precision(tc.precision, self.model, shape, self.dist.device)
            if tc.precision == "auto" and self.progress and self.dist.is_main:
                tqdm.write(f"train.precision=auto: {self.precision}")
        if self.precision == "fp16":
            self.scaler = torch.amp.GradScaler("cuda")
            if resume_state.get("grad_scaler"):
                self.scaler.load_state_dict(resume_state["grad_scaler"])
        self.forward_model: nn.Module = self.model
        if tc.compile:
            self.forward_model = torch.compile(self.model)
        if self.dist.enabled and not self.dist.sharded:
            device_ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            self.forward_model = nn.parallel.DistributedDataParallel(self.forward_model, device_ids=device_ids)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self.run_config is not None:  # the precision the run really uses, not "auto"
                train = dataclasses.replace(self.run_config.train, precision=self.precision)
                dataclasses.replace(self.run_config, train=train).save(self.run_dir / CONFIG_FILE)
            self.metrics = MetricsLog(self.run_dir, resume_step=self.step if resume else 0)
        self.peak_flops = tc.peak_flops or matmul_peak_flops(self.precision, self.dist.device)
        count_flops = getattr(self.model, "flops_per_token", None)
        self.flops_per_token = count_flops() if count_flops else 6 * sum(p.numel() for p in self.model.parameters())

    def _load_newest_checkpoint(self) -> dict[str, Any]:
        path = ckpt.newest_intact_checkpoint(self.run_dir)
        if self.dist.sharded:  # every rank reads the full states and keeps its shards
            _sharding().load_full_state(self.model, self.optimizer, ckpt.read_model_state(path, self.model),
                                        ckpt.read_optimizer_state(path))
            state = ckpt.read_json(path / ckpt.STATE_FILE)
        else:
            ckpt.load_model_weights(self.model, path)
            state = ckpt.load_training_state(path, self.optimizer)
        self.step, self.tokens = state["step"], state["tokens"]
        if self.step > self.settings.max_steps:
            raise ScratchLLMError(f"{self.run_dir} has reached step {self.step}, beyond train.max_steps="
                                  f"{self.settings.max_steps}: give train.max_steps >= {self.step}")
        self.val_loss, self.best_val_loss = state.get("val_loss"), state.get("best_val_loss")
        self.precision = state["precision"]
        if state.get("data") is not None and hasattr(self.batches, "load_state_dict"):
            self.batches.load_state_dict(state["data"])
        ckpt.set_rng_state(state["rng"])
        return state

    # -- the loop ---------------------------------------------------------------------------

    def fit(self, resume: bool = False) -> TrainResult:
        """Train to ``settings.max_steps`` (or ``max_seconds``); with ``resume``, from the newest checkpoint.

        The run folder is locked meanwhile (``fileio.exclusive_lock``): a second process training
        into it fails at once. Under torchrun rank 0 writes the folder, so rank 0 holds the lock.
        """
        with contextlib.ExitStack() as held:
            refused: ScratchLLMError | None = None
            if self.dist.is_main:
                try:
                    held.enter_context(exclusive_lock(self.run_dir))
                except ScratchLLMError as err:
                    refused = err
            if broadcast_flag(self.dist, refused is not None):  # every rank stops, with one line each
                raise refused or ScratchLLMError(f"{self.run_dir} is in use by another process (rank 0 could not "
                                                 "lock it): wait for it to finish, or stop it")
            return self._fit(resume)

    def _fit(self, resume: bool) -> TrainResult:
        tc = self.settings
        self._start(resume)
        begin = time.perf_counter()
        if not resume and tc.eval_at_start and tc.eval_interval:
            self._evaluate()
        bar = tqdm(total=tc.max_steps, initial=self.step, disable=not (self.progress and self.dist.is_main),
                   desc="train", unit="step", dynamic_ncols=True)
        window_start, window_tokens = time.perf_counter(), 0
        training_seconds, last = 0.0, self.step >= tc.max_steps
        while not last:
            lr = lr_at(self.step, max_lr=tc.lr, min_lr=tc.min_lr, warmup_steps=tc.warmup_steps,
                       max_steps=tc.max_steps)
            step_start = time.perf_counter()
            loss, logged, step_tokens = self._train_step(lr)
            training_seconds += time.perf_counter() - step_start
            self.step += 1
            self.tokens += step_tokens
            window_tokens += step_tokens
            bar.update(1)
            # Every rank must agree to stop, so rank 0's clock decides.
            out_of_time = tc.max_seconds > 0 and broadcast_flag(self.dist, training_seconds >= tc.max_seconds)
            last = self.step >= tc.max_steps or out_of_time
            if out_of_time and self.step < tc.max_steps and self.dist.is_main:
                tqdm.write(f"train.max_seconds={tc.max_seconds:g} reached at step {self.step} of {tc.max_steps}")
            if self.step % tc.log_interval == 0 or last:
                elapsed = time.perf_counter() - window_start
                tok_s = window_tokens / elapsed if elapsed > 0 else 0.0
                # per device: each process's share of the throughput against one device's peak
                mfu = tok_s / self.dist.world_size * self.flops_per_token / self.peak_flops
                self._log(step=self.step, loss=loss, lr=lr, tokens=self.tokens, tokens_per_s=round(tok_s, 1),
                          mfu=round(mfu, 4), **logged)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}", mfu=f"{mfu:.1%}",
                                refresh=False)
                window_start, window_tokens = time.perf_counter(), 0
            evaluated = False
            try:
                if (tc.eval_interval and self.step % tc.eval_interval == 0) or last:
                    self._evaluate()
                    evaluated = True
            finally:  # a failed evaluation still leaves this step's checkpoint
                if (tc.save_every and self.step % tc.save_every == 0) or last:
                    self._save(with_val=evaluated)
            if evaluated:  # evaluation and saving are not training time
                window_start, window_tokens = time.perf_counter(), 0
        bar.close()
        seconds = time.perf_counter() - begin
        if self.metrics is not None:
            self.metrics.close()
            if tc.plot:
                plot_run(self.run_dir)
        return TrainResult(self.run_dir, self.step, self.tokens, self.val_loss, self.best_val_loss, seconds)

    def _train_step(self, lr: float) -> tuple[float, dict[str, float], int]:
        """One optimizer update; returns the step's mean loss, its terms (named ``loss_<term>``) and
        metrics per unit over all ranks, and its units."""
        tc, device = self.settings, self.dist.device
        set_lr(self.optimizer, lr)
        if self.dist.enabled and getattr(getattr(self.model, "config", None), "dropout", 0) > 0:
            seed_rank_dropout(tc.seed, self.step, self.dist.rank)
        micro = [_to(next(self.batches), device) for _ in range(tc.grad_accum_steps)]
        (n_units,) = all_reduce_sum(self.dist, sum(self.units(batch) for batch in micro))
        try:
            local = accumulate_gradients(
                self.forward_model, micro, int(n_units), loss=self.loss, world_size=self.dist.world_size,
                scaler=self.scaler, precision_ctx=lambda: autocast(self.precision, device),
            )
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not _is_out_of_memory(err):
                raise
            raise ScratchLLMError(
                f"a micro-batch of {tc.batch_size} sequences does not fit in {device.type} memory: lower "
                "train.batch_size and raise train.grad_accum_steps by the same factor (same effective batch)"
            ) from None
        logged = {**{f"loss_{name}": value for name, value in local.terms.items()}, **local.metrics}
        names = sorted(logged)
        sums = all_reduce_sum(self.dist, float(local.total), *(float(logged[n]) for n in names))
        loss = sums[0] / n_units
        if not math.isfinite(loss):
            self._stop_on_bad_loss(loss)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if tc.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.parameters, tc.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, {n: s / n_units for n, s in zip(names, sums[1:], strict=True)}, int(n_units)

    def _stop_on_bad_loss(self, loss: float) -> None:
        found = ckpt.list_checkpoints(self.run_dir)
        kept = f"the last good checkpoint is {found[-1]}" if found else "no checkpoint had been written yet"
        raise ScratchLLMError(
            f"the training loss became {loss} at step {self.step + 1}; stopped before applying it, {kept}. "
            f"Start a new run (another --out) with a lower train.lr (now {self.settings.lr:g}), train.grad_clip > 0 "
            f"(now {self.settings.grad_clip:g}) or train.precision=fp32 (now {self.precision}): --resume keeps "
            "these settings"
        )

    # -- evaluation, logging, checkpoints -----------------------------------------------------

    def _evaluate(self) -> None:
        if self.evaluate is None:
            return
        record = self.evaluate(self.forward_model, lambda: autocast(self.precision, self.dist.device), self.dist)
        self.val_loss = record["val_loss"]
        if self.best_val_loss is None or self.val_loss < self.best_val_loss:
            self.best_val_loss = self.val_loss
        self._log(step=self.step, **record, tokens=self.tokens)
        if self.dist.is_main and self.progress:
            tqdm.write(f"step {self.step}: {describe_evaluation(record)}")
        # the model's words, under the figures; a sharded model's forward needs every rank
        if self.progress and self.settings.sample_tokens and self.sample is not None and \
                (self.dist.is_main or self.dist.sharded):
            text = self.sample(self.model, self.step)
            text = "".join(c if c.isprintable() or c == "\n" else "\ufffd" for c in text)  # no control codes
            if self.dist.is_main:
                tqdm.write(textwrap.indent(text, "    | ", lambda line: True))

    def _log(self, **record: Any) -> None:
        if self.metrics is not None:
            self.metrics.log(**record)

    def _save(self, with_val: bool) -> None:
        full = {}
        if self.dist.sharded:  # gathering the shards is collective: every rank takes part
            full = {"model_state": _sharding().full_model_state(self.model),
                    "optimizer_state": _sharding().full_optimizer_state(self.model, self.optimizer)}
        if self.dist.is_main:
            state = {
                "step": self.step,
                "tokens": self.tokens,
                "val_loss": self.val_loss if with_val else None,
                "best_val_loss": self.best_val_loss,
                "precision": self.precision,
                "world_size": self.dist.world_size,
                "scheduler": {"name": "warmup_cosine", "lr": self.optimizer.param_groups[0]["lr"]},
                "rng": ckpt.rng_state(),
                "data": self.batches.state_dict() if hasattr(self.batches, "state_dict") else None,
            }
            if self.scaler is not None:
                state["grad_scaler"] = self.scaler.state_dict()
            ckpt.save_checkpoint(ckpt.checkpoint_path(self.run_dir, self.step), self.model, self.tokenizer,
                                 optimizer=self.optimizer, train_state=state, task=self.task, **full)
            ckpt.prune_checkpoints(self.run_dir, self.settings.keep_last)
        barrier(self.dist)
