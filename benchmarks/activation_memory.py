"""Activation memory with and without ``train.activation_checkpointing``, on the CPU.

Each case runs in a fresh process (glibc returning freed blocks at once): build a GPT and a
batch, note the resident memory, run one forward + backward, and report the high-water mark
above it (ru_maxrss), against
``GPT.memory_estimate``'s activation count (Korthikanti et al.) for the same shape.

    flock /tmp/scratchllm-cpu.lock .venv/bin/python benchmarks/activation_memory.py
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import torch

from scratchllm.model import GPT, GPTConfig
from scratchllm.train.activations import checkpoint_blocks

SHAPE = dict(vocab_size=512, context_length=256, d_model=256, n_heads=8, n_layers=8, dropout=0.0)
BATCH = 16
# glibc hands every block over 64 KB back to the OS when freed (no dynamic mmap threshold), so the
# resident high-water mark follows the live tensors instead of the heap's leftovers
CHILD_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


def measure(checkpointed: bool) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SHAPE))
    if checkpointed:
        checkpoint_blocks(model)
    x = torch.randint(0, SHAPE["vocab_size"], (BATCH, SHAPE["context_length"]))
    before = _rss_mb()
    model(x).float().logsumexp(-1).mean().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # KB -> MB
    print(f"{peak - before:.0f}")


def main() -> None:
    estimate = GPT(GPTConfig(**SHAPE)).memory_estimate(batch_size=BATCH)
    print(f"GPT {SHAPE}, batch {BATCH}: peak resident memory of one forward + backward above the model's")
    print(f"{'case':40s} {'MB':>8s}")
    for flag in (False, True):
        out = subprocess.run([sys.executable, __file__, "--child", str(int(flag))], capture_output=True, text=True,
                             check=True, env=CHILD_ENV).stdout.strip()
        print(f"{'activation checkpointing ' + ('on' if flag else 'off'):40s} {float(out):8.0f}")
    acts = estimate.get("activations") if isinstance(estimate, dict) else None
    print(f"{'reference: memory_estimate activations':40s} {acts / 1e6 if acts else float('nan'):8.0f}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        measure(bool(int(sys.argv[2])))
    else:
        main()
