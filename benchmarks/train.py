"""Training throughput: scratchllm's training loop against nanoGPT's training step, same machine, same run.

For each shape (baby-shakespeare: 4x128, context 64; shakespeare-small: 6x384, context 256; batch 12)
and precision (fp32, bf16 autocast, and scratchllm's ``auto``), it prints ms/step, tokens/s and MFU
against the matrix-product peak of that precision, measured at the start of the run. Every row runs
``--rounds`` times, interleaved with the others, and reports the median step over all its rounds:
on a shared 2-core machine single steps vary by +-30%, and slow spells then hit every row alike.

- reference: nanoGPT's model and step as its ``train.py`` runs them on a CPU (tied embeddings, no
  biases, exact GELU, ``scaled_dot_product_attention``, AdamW without the fused kernel, gradient
  clipping 1.0), written out below from nanoGPT's published design.
- scratchllm: ``scratchllm.train.train`` itself on byte-level Tiny Shakespeare (what a user runs)
  with the preset's model (the same architecture: no biases, exact GELU, tied head), its tokens/s
  taken from the run's own metrics.jsonl.

Both sides run with the allocator setting scratchllm's training applies on a CPU
(``scratchllm.train.allocator``: freed activations stay in the heap instead of being page-faulted
in again every step), set once at the start, so the comparison is of the training steps alone.

The nanoGPT figures published for the reference machine (an AMX CPU) are printed beside them.

    flock /tmp/scratchllm-cpu.lock .venv/bin/python benchmarks/train.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from reference_files import tinyshakespeare
from torch import nn

from scratchllm.checkpoint import list_checkpoints, read_json
from scratchllm.data.shards import prepare
from scratchllm.model import GPT
from scratchllm.train import load_run_config, train
from scratchllm.train.allocator import keep_freed_cpu_memory
from scratchllm.train.metrics import read_metrics
from scratchllm.train.precision import matmul_peak_flops

SHAPES = {"baby-shakespeare": (4, 4, 128, 64), "shakespeare-small": (6, 6, 384, 256)}  # layers, heads, d, T
BATCH = 12
VOCAB = 258  # byte level: 256 bytes + <|endoftext|> + <|padding|>
# nanoGPT on the reference machine (shared/data/README.md and the issue): ms/step
PUBLISHED = {("baby-shakespeare", "fp32"): 33.6, ("baby-shakespeare", "bf16"): 45.0,
             ("shakespeare-small", "fp32"): 960.0, ("shakespeare-small", "bf16"): 480.0}


class NanoBlock(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(d, bias=False), nn.LayerNorm(d, bias=False)
        self.c_attn, self.attn_proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
        q, k, v = (t.view(B, T, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, d)
        x = x + self.attn_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
    """nanoGPT's GPT (bias=False, dropout 0): learned positions, pre-norm blocks, tied head."""

    def __init__(self, layers: int, heads: int, d: int, context: int) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(VOCAB, d), nn.Embedding(context, d)
        self.blocks = nn.ModuleList(NanoBlock(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d, bias=False)
        self.lm_head = nn.Linear(d, VOCAB, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def reference_step_ms(shape: str, precision: str, steps: int, tokens: torch.Tensor) -> list[float]:
    """Milliseconds of each step of nanoGPT's loop: random windows, forward, backward, clip, AdamW."""
    layers, heads, d, context = SHAPES[shape]
    torch.manual_seed(0)
    model = NanoGPT(layers, heads, d, context)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.99))
    times = []
    for i in range(steps + 3):
        start = time.perf_counter()
        ix = torch.randint(len(tokens) - context, (BATCH,))
        x = torch.stack([tokens[j : j + context] for j in ix])
        y = torch.stack([tokens[j + 1 : j + 1 + context] for j in ix])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(x)
            loss = F.cross_entropy(logits.view(-1, VOCAB), y.view(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 3:
            times.append(1000 * (time.perf_counter() - start))
    return times


def scratchllm_step_ms(shape: str, precision: str, steps: int, data_dir: Path,
                       run_dir: Path) -> tuple[list[float], str]:
    """Milliseconds of each step of ``scratchllm.train`` and the precision it ran in."""
    config = load_run_config(shape, overrides=[
        f"train.max_steps={steps + 3}", f"train.precision={precision}", "train.eval_interval=0",
        "train.eval_batches=1", "train.plot=false", "train.peak_flops=1", "model.dropout=0.0",
        f"data.dir={data_dir}", f"train.batch_size={BATCH}",
    ], base={"model": {"vocab_size": VOCAB}})
    train(config, run_dir, progress=False)
    records = [r for r in read_metrics(run_dir) if "tokens_per_s" in r][3:]
    tokens_per_step = BATCH * config.model.context_length
    used = read_json(list_checkpoints(run_dir)[-1] / "train_state.json")["precision"]
    return [1000 * tokens_per_step / r["tokens_per_s"] for r in records], used


def flops_per_token(shape: str) -> int:
    config = load_run_config(shape, base={"model": {"vocab_size": VOCAB}}).model
    return GPT(config).flops_per_token()


def _row(shape: str, precision: str, who: str, ms: float, base_ms: float, fpt: int, peak: float) -> None:
    """One table row; MFU is against the matmul peak of the precision the row ran in."""
    rate = BATCH * SHAPES[shape][3] / (ms / 1000)
    print(f"{shape:18} {precision:9} {who:22} {ms:8.1f} {rate:9,.0f} {rate * fpt / peak:6.1%} "
          f"{base_ms / ms:14.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--text", type=Path, default=None,
                        help="Tiny Shakespeare (default: fetched once by its canonical URL into the corpus cache)")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--steps", type=int, default=0, help="timed steps per row and round (default 40 baby, 6 small)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of every row, interleaved, so that a slow spell of a shared machine hits all rows")
    args = parser.parse_args()

    cpu = torch.device("cpu")
    keep_freed_cpu_memory()  # what scratchllm.train does on a CPU; nanoGPT's step gets it too
    peaks = {p: matmul_peak_flops(p, cpu, n=2048, repeats=10) for p in ("fp32", "bf16")}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; measured matmul peak (2048^3): "
          f"fp32 {peaks['fp32'] / 1e9:,.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:,.0f} GFLOP/s")
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = prepare(tinyshakespeare(args.text), Path(tmp) / "bytes", vocab_size=257, workers=1)
        tokens = torch.from_numpy(np.fromfile(data_dir / "train.bin", dtype="<u2").astype(np.int64))
        header = (f"{'shape':18} {'precision':9} {'who':22} {'ms/step':>8} {'tokens/s':>9} {'MFU':>6} "
                  f"{'vs nanoGPT here':>15}")
        print(header)
        print("-" * len(header))
        for shape in args.shapes.split(","):
            steps = args.steps or (40 if shape == "baby-shakespeare" else 6)
            fpt = flops_per_token(shape)
            times: dict[tuple[str, str], list[float]] = defaultdict(list)  # (who, precision) -> step ms
            used: dict[str, str] = {}
            for round_ in range(args.rounds):
                for precision in ("fp32", "bf16"):
                    times["nanoGPT", precision] += reference_step_ms(shape, precision, steps, tokens)
                for precision in ("fp32", "bf16", "auto"):
                    run_dir = Path(tmp) / "runs" / f"{shape}-{precision}-{round_}"
                    step_ms, used[precision] = scratchllm_step_ms(shape, precision, steps, data_dir, run_dir)
                    times["scratchllm", precision] += step_ms
            ms = {key: statistics.median(values) for key, values in times.items()}
            base = ms["nanoGPT", "fp32"]
            for precision in ("fp32", "bf16"):
                _row(shape, precision, "nanoGPT step (here)", ms["nanoGPT", precision], base, fpt, peaks[precision])
            for precision in ("fp32", "bf16", "auto"):
                _row(shape, precision, f"scratchllm ({used[precision]})", ms["scratchllm", precision], base, fpt,
                     peaks[used[precision]])
            for precision in ("fp32", "bf16"):
                published = PUBLISHED[(shape, precision)]
                print(f"{shape:18} {precision:9} {'nanoGPT (published)':22} {published:8.1f} "
                      f"{BATCH * SHAPES[shape][3] / published * 1000:9,.0f}   (reference machine, AMX)")
    print(f"ms/step = median over {args.rounds} interleaved rounds; MFU = tokens/s x (6N + 12 L d T) FLOPs per "
          "token / measured matmul peak of the row's precision; 'vs nanoGPT here' = nanoGPT fp32 ms/step / this row's")


if __name__ == "__main__":
    main()
