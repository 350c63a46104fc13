"""Helpers for the training tests: a tiny model's settings and the CLI in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
