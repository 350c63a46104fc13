"""The architecture study: attention kinds and position encodings on the same budget.

Three parts, each a table (and PNGs in --out):

1. **Equal budget.** Every variant of ``VARIANTS`` (parts chosen by registered name; add a row to
   add a variant) is the same small GPT (4 layers x 96, 4 heads, context 256) trained on
   byte-level Tiny Shakespeare for the same wall time (--seconds each; the cosine schedule is
   planned from a few timed steps so it ends with the time), seed 1337 for every run (the same
   initial draw and the same batches). Table: held-out bits per byte (the first 32k bytes of the
   validation split, ``score_tokens``), parameters, training tokens/s, and the peak tensor memory of one training
   step (batch 4 x 256, forward and backward, ``scratchllm.profiling.TensorMemory``).
2. **Length generalisation.** Each trained model reads validation windows of 4x the training
   context; the loss at each position, averaged over the windows, is one curve per variant
   (``length.png``). Learned positions stop at their context: their curve ends there.
3. **Long-context cost** (untrained models of the same shape, rotary positions): prefill time
   and peak tensor memory at T = 1k..16k, and the time of one decoded token as the context grows,
   full attention against a sliding window (``prefill.png``, ``decode.png``).

    flock /tmp/scratchllm-cpu.lock .venv/bin/python benchmarks/architectures.py [--quick] [--out DIR]
        [--variants rope,alibi,...] [--seconds 60] [--parts budget,length,cost]
"""

from __future__ import annotations

import argparse
import math
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from reference_files import tinyshakespeare

from scratchllm.checkpoint import load_checkpoint
from scratchllm.data.shards import open_prepared, prepare
from scratchllm.model import GPT, GPTConfig
from scratchllm.model.sliding import window_pattern
from scratchllm.profiling import TensorMemory
from scratchllm.train import load_run_config, score_tokens, train
from scratchllm.viz import plot_curves

SHAPE = dict(n_layers=4, d_model=96, n_heads=4, context_length=256, dropout=0.0, bias=False, gelu="exact",
             tie_embeddings=True)
WINDOW = 64  # the sliding window of the study, a quarter of the training context


@dataclass(frozen=True)
class Variant:
    """One row of the study: a name and the model settings (registered part names) it changes."""

    name: str
    model: dict[str, Any] = field(default_factory=dict)


VARIANTS = [
    Variant("learned", dict(pos_encoding="learned")),
    Variant("sinusoidal", dict(pos_encoding="sinusoidal")),
    Variant("rope", dict(pos_encoding="rope")),
    Variant("alibi", dict(pos_encoding="alibi")),
    Variant("rope+window", dict(pos_encoding="rope", attention="sliding_window", window=WINDOW)),
    Variant("rope+window-nanochat", dict(pos_encoding="rope", attention="sliding_window",
                                         window=window_pattern("nanochat", SHAPE["n_layers"], WINDOW))),
    Variant("rope+window+sinks", dict(pos_encoding="rope", attention="sliding_window", window=WINDOW, sinks=4)),
    Variant("alibi+window", dict(pos_encoding="alibi", attention="sliding_window", window=WINDOW)),
    Variant("rope+strided", dict(pos_encoding="rope", attention="sparse_strided", sparse_stride=16)),
    Variant("rope+fixed", dict(pos_encoding="rope", attention="sparse_fixed", sparse_stride=16, sparse_summary=2)),
]
TRAIN = {"batch_size": 4, "lr": 3e-3, "min_lr": 1e-4, "warmup_steps": 10, "beta2": 0.99, "precision": "fp32",
         "eval_interval": 0, "eval_batches": 1, "eval_at_start": False, "sample_tokens": 0, "plot": False,
         "seed": 1337, "device": "cpu", "peak_flops": 1.0}
SCORED_TOKENS = 32768  # held-out bytes scored per variant (128 windows of 256): the split's first 29%


def pick(names: str | None) -> list[Variant]:
    if not names:
        return VARIANTS
    known = {v.name: v for v in VARIANTS}
    missing = [n for n in names.split(",") if n not in known]
    if missing:
        raise SystemExit(f"unknown variants {missing}; known: {', '.join(known)}")
    return [known[n] for n in names.split(",")]


def step_seconds(config: GPTConfig, batch: int, steps: int = 3) -> float:
    """Seconds of one training step (forward, backward, AdamW), after one warm-up step."""
    torch.manual_seed(0)
    model = GPT(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, config.vocab_size, (batch, config.context_length))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = F.cross_entropy(model(x).flatten(0, 1), x.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def training_peak_bytes(config: GPTConfig, batch: int) -> int:
    """Peak tensor memory of one forward and backward pass at batch x context (weights not counted)."""
    torch.manual_seed(0)
    model = GPT(config).train()
    x = torch.randint(0, config.vocab_size, (batch, config.context_length))
    with TensorMemory() as mem:
        F.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
    return mem.peak


@torch.no_grad()
def loss_by_position(model: GPT, tokens: np.ndarray, length: int, n_windows: int) -> np.ndarray:
    """Mean next-token loss (nats) at each position 0..length-2 of ``n_windows`` windows (fixed starts)."""
    starts = np.random.default_rng(0).integers(0, len(tokens) - length - 1, n_windows)
    total = np.zeros(length)
    for s in starts:
        ids = torch.from_numpy(tokens[s : s + length + 1].astype(np.int64))[None]
        logits = model(ids[:, :-1])
        total += F.cross_entropy(logits[0], ids[0, 1:], reduction="none").numpy()
    return total / n_windows


def budget_and_length(args, variants: list[Variant], out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = prepare(tinyshakespeare(args.text), Path(tmp) / "bytes", vocab_size=257, workers=1)
        data = open_prepared(data_dir)
        rows, curves = [], {}
        for variant in variants:
            model_settings = {**SHAPE, "vocab_size": data.vocab_size, **variant.model}
            config = GPTConfig(**model_settings)
            per_step = step_seconds(config, TRAIN["batch_size"])
            steps = max(10, int(args.seconds / per_step))
            run_config = load_run_config(base={"model": model_settings, "data": {"dir": str(data_dir)},
                                               "train": {**TRAIN, "max_steps": steps, "max_seconds": args.seconds}})
            result = train(run_config, Path(tmp) / variant.name, progress=False)
            model, tokenizer = load_checkpoint(Path(tmp) / variant.name)
            model.eval()
            bpb = score_tokens(model, data.val, tokenizer, batch_size=16, max_tokens=SCORED_TOKENS).bits_per_byte
            peak = training_peak_bytes(config, TRAIN["batch_size"])
            rows.append((variant.name, bpb, model.num_params(), result.tokens / result.seconds, peak, result.step))
            print(f"  {variant.name}: {result.step} steps in {result.seconds:.0f} s, val {bpb:.4f} bits/byte",
                  flush=True)
            length = 4 * SHAPE["context_length"] if model.max_positions is None else model.max_positions
            losses = loss_by_position(model, np.asarray(data.val), length, args.windows)
            curves[variant.name] = losses
    print(f"\n### Equal budget: {args.seconds:.0f} s of training each, byte-level Tiny Shakespeare, seed 1337\n")
    print("| variant | held-out bits/byte | parameters | train tokens/s | peak memory, one step | steps |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, bpb, n, tps, peak, steps in rows:
        print(f"| {name} | {bpb:.4f} | {n:,} | {tps:,.0f} | {peak / 2**20:.0f} MiB | {steps} |")

    ctx = SHAPE["context_length"]
    print(f"\n### Length generalisation: trained at {ctx}, mean loss (bits/byte) by position band, "
          f"{args.windows} validation windows of {4 * ctx}\n")
    bands = [(0, ctx), (ctx, 2 * ctx), (2 * ctx, 3 * ctx), (3 * ctx, 4 * ctx)]
    print("| variant | " + " | ".join(f"{a}-{b}" for a, b in bands) + " | 2x / in-context |")
    print("|---|" + "---:|" * (len(bands) + 1))
    for name, losses in curves.items():
        bits = losses / math.log(2)
        cells = [f"{bits[a:b].mean():.3f}" if len(bits) >= b else "(stops)" for a, b in bands]
        ratio = f"{bits[ctx:2 * ctx].mean() / bits[:ctx].mean() - 1:+.1%}" if len(bits) >= 2 * ctx else "n/a"
        print(f"| {name} | " + " | ".join(cells) + f" | {ratio} |")
    smooth = 16  # positions per point: the raw per-position loss of 32 windows is noisy
    plot_curves({name: (np.arange(len(v) // smooth) * smooth + smooth / 2,
                        (v[: len(v) // smooth * smooth].reshape(-1, smooth).mean(1) / math.log(2)))
                 for name, v in curves.items()},
                out / "length.png", xlabel="position in the window", ylabel="loss, bits per byte",
                title=f"Trained at context {ctx}, read at {4 * ctx} (learned positions stop at {ctx})",
                vline=ctx, vline_label="training context")


def timed(fn, repeats: int = 1) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@torch.inference_mode()
def long_context_cost(args, out: Path) -> None:
    lengths = [1024, 2048, 4096] if args.quick else [1024, 2048, 4096, 8192, 16384]
    kinds = {"full attention": dict(), f"sliding window {4 * WINDOW}": dict(attention="sliding_window",
                                                                               window=4 * WINDOW)}
    prefill: dict[str, dict[int, tuple[float, int]]] = {}
    decode: dict[str, dict[int, float]] = {}
    for kind, settings in kinds.items():
        torch.manual_seed(0)
        shape = {**SHAPE, "context_length": max(lengths), "vocab_size": 257, "pos_encoding": "rope"}
        model = GPT(GPTConfig(**shape, **settings)).eval()
        prefill[kind], decode[kind] = {}, {}
        for T in lengths:
            ids = torch.randint(0, 257, (1, T), generator=torch.Generator().manual_seed(T))
            seconds = timed(lambda ids=ids, model=model: model(ids, last_only=True))
            with TensorMemory() as mem:
                model(ids, last_only=True)
            prefill[kind][T] = (seconds, mem.peak)
            cache = model.new_cache(1, T + 16)
            model(ids, cache=cache, last_only=True)
            step, times = ids[:, -1:], []
            for _ in range(16):  # the median of 16 steps: the machine is shared
                start = time.perf_counter()
                model(step, cache=cache, last_only=True)
                times.append(time.perf_counter() - start)
            decode[kind][T] = float(np.median(times))
            cache_bytes = sum(layer.k.numel() + layer.v.numel() for layer in cache.layers) * 4
            print(f"  {kind} T={T}: prefill {seconds:.2f} s, peak {mem.peak / 2**20:.0f} MiB, "
                  f"decode {decode[kind][T] * 1e3:.1f} ms/token, cache {cache_bytes / 2**20:.1f} MiB", flush=True)
            decode[kind][T] = (decode[kind][T], cache_bytes)
    print("\n### Long-context cost: 4 x 96, rotary, batch 1, untrained weights\n")
    print("| T | " + " | ".join(f"{k}: prefill s | peak MiB | decode ms/token | cache MiB" for k in kinds) + " |")
    print("|---:|" + "---:|---:|---:|---:|" * len(kinds))
    for T in lengths:
        cells = []
        for kind in kinds:
            (s, peak), (d, cache) = prefill[kind][T], decode[kind][T]
            cells.append(f"{s:.2f} | {peak / 2**20:.0f} | {d * 1e3:.1f} | {cache / 2**20:.1f}")
        print(f"| {T} | " + " | ".join(cells) + " |")
    plot_curves({f"{k}: prefill s": (lengths, [prefill[k][T][0] for T in lengths]) for k in kinds},
                out / "prefill.png", xlabel="tokens", ylabel="prefill seconds", log_x=True, log_y=True,
                title="Prefill time, 4 x 96, rotary, batch 1")
    plot_curves({f"{k}": (lengths, [decode[k][T][0] * 1e3 for T in lengths]) for k in kinds},
                out / "decode.png", xlabel="tokens of context", ylabel="ms per decoded token", log_x=True,
                title="One new token with the KV cache as the context grows")
    plot_curves({f"{k}": (lengths, [decode[k][T][1] / 2**20 for T in lengths]) for k in kinds},
                out / "cache.png", xlabel="tokens of context", ylabel="KV cache, MiB", log_x=True,
                title="KV cache memory: full attention keeps every token, the window a ring")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", type=Path, default=None, help="Tiny Shakespeare (default: fetched into the cache)")
    parser.add_argument("--out", type=Path, default=Path("docs/images/architectures"))
    parser.add_argument("--variants", default=None, help="comma-separated names from VARIANTS (default: all)")
    parser.add_argument("--seconds", type=float, default=60.0, help="training wall time per variant")
    parser.add_argument("--windows", type=int, default=32, help="validation windows for the loss by position")
    parser.add_argument("--parts", default="budget,cost", help="budget (with length generalisation), cost")
    parser.add_argument("--quick", action="store_true", help="10 s per variant, 8 windows, T up to 4k")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.windows = 10.0, 8
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    parts = args.parts.split(",")
    if "budget" in parts:
        budget_and_length(args, pick(args.variants), args.out)
    if "cost" in parts:
        long_context_cost(args, args.out)
    print(f"\nfigures in {args.out}")


if __name__ == "__main__":
    main()
