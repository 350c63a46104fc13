"""Helpers for the training tests: a tiny model's settings, the CLI in a fresh process, and the
oracle of one step's gradient (padded micro-batches, torch's mean cross-entropy over all of them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from scratchllm.model import GPT, GPTConfig
from scratchllm.train.losses import IGNORE_INDEX
from scratchllm.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]

# model and schedule small enough for ~2 ms steps on one core
TINY = [
    "model.n_layers=2", "model.n_heads=2", "model.d_model=32", "model.context_length=16", "model.dropout=0.0",
    "train.batch_size=4", "train.warmup_steps=5", "train.eval_batches=4", "train.lr=3e-3",
    "train.precision=fp32", "train.peak_flops=1e11", "train.plot=false",
]


def child_env(threads: int = 1) -> dict[str, str]:
    """One thread per process: deterministic, and quiet on a shared 2-core machine."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}


def run_cli(*args: str, threads: int = 1) -> subprocess.CompletedProcess:
    """``python -m scratchllm ARGS`` in a fresh process."""
    return subprocess.run([sys.executable, "-m", "scratchllm", *args], env=child_env(threads), capture_output=True,
                          text=True, timeout=300)


def set_args(*overrides: str) -> list[str]:
    """``--set`` arguments for the tiny settings followed by ``overrides``."""
    return [arg for item in (*TINY, *overrides) for arg in ("--set", item)]


# padded (unscored) targets per micro-batch: (row, columns); the last one has a row with nothing to score
PADDING = [[(0, slice(9, None))], [(1, slice(6, None)), (0, slice(0, 2))], [(0, slice(3, None)), (1, slice(None))],
           [(1, slice(10, None))]]


def padded_micro_batches(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` (at most 4) micro-batches of 2 x 12 tokens, each with its own amount of padding."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for pads in PADDING[:n]:
        x = torch.randint(0, 64, (2, 12), generator=gen)
        y = torch.randint(0, 64, (2, 12), generator=gen)
        for row, cols in pads:
            y[row, cols] = IGNORE_INDEX
        batches.append((x, y))
    return batches


def mean_loss_gradients(model, batches) -> tuple[float, dict[str, torch.Tensor]]:
    """The oracle: torch's mean cross-entropy over every scored token of all the batches at once."""
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="mean")  # -100 is ignored
    names, params = zip(*model.named_parameters(), strict=True)
    return loss.item(), dict(zip(names, torch.autograd.grad(loss, params), strict=True))


def small_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, context_length=16, d_model=32, n_heads=2, n_layers=2, dropout=0.0,
                         tie_embeddings=True))


ONE_STEP = dict(max_steps=1, grad_clip=0.0, warmup_steps=0, eval_interval=0, eval_at_start=False, precision="fp32",
                peak_flops=1e11, plot=False, sample_tokens=0)


def capture_gradients(trainer, model) -> dict[str, torch.Tensor]:
    """The gradients the optimizer is about to apply, filled in at its step."""
    grads: dict[str, torch.Tensor] = {}
    trainer.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: grads.update({n: p.grad.clone() for n, p in model.named_parameters()}))
    return grads


def torchrun_train(*args: str) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 -m scratchllm train ARGS`` (2 gloo processes, one thread each)."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "scratchllm", "train", *args], env=child_env(), capture_output=True, text=True,
                          timeout=300)


def curves(run_dir) -> tuple[list[float], list[float]]:
    """The training losses and validation losses a run logged."""
    records = read_metrics(run_dir)
    return [r["loss"] for r in records if "loss" in r], [r["val_loss"] for r in records if "val_loss" in r]


def assert_resume_is_exact(data, tmp_path, common: list[str]) -> None:
    """Under torchrun: 20 steps in one go (``tmp_path/whole``) equal 10 steps and a resume to 20
    (``tmp_path/split``), to the last bit."""
    for run, steps in (("whole", 20), ("split", 10)):
        result = torchrun_train("--data", str(data), "--out", str(tmp_path / run), *common,
                                "--set", f"train.max_steps={steps}")
        assert result.returncode == 0, result.stderr[-3000:]
    rest = torchrun_train("--resume", str(tmp_path / "split"), "--quiet", "--set", "train.max_steps=20")
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert curves(tmp_path / "split") == curves(tmp_path / "whole")  # exact float equality
