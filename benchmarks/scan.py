"""The state-space layer's costs, each against its reference in the same run.

1. Training through the scan at T = 2048: forward + backward of the selective scan (the
   recurrence of ``scratchllm.model.mamba``) by the parallel scan against the sequential loop
   (mamba-minimal's way: one step per position, autograd through all of them), and against
   mamba.py's pure-PyTorch ``PScan`` if its file is given (``--mambapy``; not a dependency).
2. Generation: ms per new token and the bytes of generation state after a context of 256 ...
   4096 tokens, for a pure Mamba stack (a fixed-size state) and the baseline GPT (its KV cache).
3. Equal wall time: the baseline GPT, a Mamba stack, a hybrid (Mamba and attention layers
   alternating) and a mixture-of-experts GPT, each trained for ``--seconds`` on byte-level Tiny
   Shakespeare, scored on its validation split in bits per byte (``scratchllm eval``'s definition).

    flock /tmp/scratchllm-cpu.lock .venv/bin/python benchmarks/scan.py [--mambapy pscan.py] [--seconds 60]

mamba.py's file: ``git show HEAD:mambapy/pscan.py > /tmp/pscan.py`` in a clone of
github.com/alxndrTL/mamba.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from reference_files import tinyshakespeare

from scratchllm.checkpoint import load_checkpoint
from scratchllm.data.shards import open_prepared, prepare
from scratchllm.model import GPT, GPTConfig
from scratchllm.model.mamba import linear_scan
from scratchllm.train import load_run_config, score_tokens, train


def timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# -- 1. the scan in training ------------------------------------------------------------------


def scan_inputs(batch: int, T: int, d_inner: int, d_state: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    delta = torch.nn.functional.softplus(torch.randn(batch, T, d_inner, generator=gen) - 3)
    A = -torch.rand(d_inner, d_state, generator=gen) * 4
    x, B, C = (torch.randn(batch, T, n, generator=gen) for n in (d_inner, d_state, d_state))
    return x, delta, A, B, C


def train_step(scan, inputs: tuple[torch.Tensor, ...]) -> None:
    """Forward and backward of y = selective_scan(x, delta, A, B, C) through ``scan``(a, b) -> h."""
    x, delta, A, B, C = (t.detach().requires_grad_() for t in inputs)
    a = torch.exp(delta.unsqueeze(-1) * A)
    b = (delta * x).unsqueeze(-1) * B.unsqueeze(2)
    y = torch.einsum("btdn,btn->btd", scan(a, b), C)
    y.square().mean().backward()


def sequential_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The reference: h_t = a_t h_{t-1} + b_t one position at a time. The steps are unbound first:
    indexing a[:, t] in the loop, as mamba-minimal does, makes each step's backward write a
    gradient the size of all of a (O(T^2) in the backward; 92 s here at 1 x 128 x 16)."""
    h, hs = torch.zeros_like(b[:, 0]), []
    for a_t, b_t in zip(a.unbind(1), b.unbind(1), strict=True):
        h = a_t * h + b_t
        hs.append(h)
    return torch.stack(hs, dim=1)


def load_mambapy_scan(path: Path):
    spec = importlib.util.spec_from_file_location("mambapy_pscan", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PScan.apply  # (B, L, D, N) a and b -> h


def scan_table(args) -> None:
    scans = {"sequential loop": sequential_scan, "parallel scan (ours)": linear_scan}
    if args.mambapy:
        scans["mamba.py PScan"] = load_mambapy_scan(args.mambapy)
    print(f"\n1. forward + backward of the selective scan, T = {args.T} (median of {args.repeats})")
    print("| batch x d_inner x d_state | " + " | ".join(scans) + " | loop / ours |")
    print("|---|" + "---:|" * (len(scans) + 1))
    for batch, d_inner in args.shapes:
        inputs = scan_inputs(batch, args.T, d_inner, 16)
        h = {name: scan(*[t.detach() for t in _ab(inputs)]) for name, scan in scans.items()}
        for name in h:  # every scan computes the same states
            torch.testing.assert_close(h[name], h["sequential loop"], rtol=1e-4, atol=1e-5, msg=name)
        seconds = {name: timed(lambda scan=scan, inputs=inputs: train_step(scan, inputs), args.repeats)
                   for name, scan in scans.items()}
        cells = " | ".join(f"{1e3 * s:.0f} ms" for s in seconds.values())
        ratio = seconds["sequential loop"] / seconds["parallel scan (ours)"]
        print(f"| {batch} x {d_inner} x 16 | {cells} | {ratio:.1f}x |")


def _ab(inputs):
    x, delta, A, B, C = inputs
    return torch.exp(delta.unsqueeze(-1) * A), (delta * x).unsqueeze(-1) * B.unsqueeze(2)


# -- 2. generation state ----------------------------------------------------------------------


@torch.inference_mode()
def decode_cost(model: GPT, context: int, steps: int = 16) -> tuple[float, int]:
    """ms per new token after ``context`` tokens (prefilled in chunks of 512), and the bytes the
    generation state holds for them (keys and values written so far, or the fixed-size state)."""
    idx = torch.randint(0, model.config.vocab_size, (1, context + steps), generator=torch.Generator().manual_seed(0))
    cache = model.new_cache(1, context + steps)
    for start in range(0, context, 512):
        model(idx[:, start : min(start + 512, context)], cache=cache, last_only=True)
    begin = time.perf_counter()
    for t in range(context, context + steps):
        model(idx[:, t : t + 1], cache=cache, last_only=True)
    ms = 1e3 * (time.perf_counter() - begin) / steps
    return ms, model.memory_estimate(seq_len=context)["kv_cache"]  # what a cache of this context holds


def decode_table(args) -> None:
    shape = dict(vocab_size=256, d_model=128, n_heads=4, dropout=0.0, context_length=max(args.contexts) + 64)
    models = {
        "GPT (4 attention layers, rope)": GPT(GPTConfig(**shape, n_layers=4, pos_encoding="rope")).eval(),
        "Mamba (8 mamba blocks)": GPT(GPTConfig(**shape, n_layers=8, block="mamba", pos_encoding="none")).eval(),
    }
    print("\n2. one new token after a context of C tokens: ms/token, and generation state (KB)")
    print("| model | params | " + " | ".join(f"C = {c}" for c in args.contexts) + " |")
    print("|---|---:|" + "---:|" * len(args.contexts))
    for name, model in models.items():
        cells = []
        for context in args.contexts:
            ms, nbytes = decode_cost(model, context)
            cells.append(f"{ms:.1f} ms, {nbytes / 1024:,.0f} KB")
        print(f"| {name} | {model.num_params():,} | " + " | ".join(cells) + " |")


# -- 3. equal wall time -----------------------------------------------------------------------

VARIANTS = {
    "GPT (baseline: 4 x (attention + GELU))": [],
    "Mamba (8 mamba blocks, no positions)": ["model.n_layers=8", "model.block=mamba", 'model.pos_encoding="none"'],
    "hybrid (mamba, attention, mamba, attention; each + GELU)": ['model.attention=["mamba", "multihead"]'],
    "MoE (4 x (attention + 4 GELU experts, top-1))": ["model.ffn=moe", "model.n_experts=4", "model.moe_top_k=1"],
}


def training_table(args) -> None:
    common = ["train.eval_interval=0", "train.sample_tokens=0", "train.plot=false", "train.precision=fp32",
              "train.max_steps=100000", f"train.max_seconds={args.seconds}", "train.warmup_steps=50",
              "train.min_lr=1e-3", "train.lr=1e-3", "model.context_length=128", "train.batch_size=12"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = prepare(tinyshakespeare(args.text), Path(tmp) / "bytes", vocab_size=257, workers=1)
        data = open_prepared(data_dir)
        base = {"model": {"vocab_size": data.vocab_size}, "data": {"dir": str(data_dir)}}
        for i, (name, extra) in enumerate(VARIANTS.items()):
            config = load_run_config("baby-shakespeare", overrides=[*common, *extra], base=base)
            result = train(config, Path(tmp) / f"run{i}", progress=False)
            model, tokenizer = load_checkpoint(Path(tmp) / f"run{i}")
            bpb = score_tokens(model, data.val, tokenizer, batch_size=16).bits_per_byte
            rows.append((name, model.num_params(), result.step, result.tokens / result.seconds, bpb))
    print(f"\n3. {args.seconds:g} s of training each (constant lr 1e-3 after 50 warmup steps, batch 12 x 128 bytes), "
          "byte-level Tiny Shakespeare, validation bits/byte")
    print("| model | params | steps | tokens/s | val bits/byte |")
    print("|---|---:|---:|---:|---:|")
    for name, params, steps, tok_s, bpb in rows:
        print(f"| {name} | {params:,} | {steps} | {tok_s:,.0f} | {bpb:.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mambapy", type=Path, default=None, help="mamba.py's pscan.py, run as a second reference")
    parser.add_argument("--T", type=int, default=2048)
    parser.add_argument("--shapes", type=lambda s: [tuple(map(int, p.split("x"))) for p in s.split(",")],
                        default=[(1, 128), (4, 128)], help="batch x d_inner of the scan, e.g. 1x128,4x256")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--contexts", type=lambda s: [int(c) for c in s.split(",")], default=[256, 1024, 4096])
    parser.add_argument("--seconds", type=float, default=60.0, help="training time per model in part 3")
    parser.add_argument("--text", type=Path, default=None, help="Tiny Shakespeare (default: fetched into the cache)")
    parser.add_argument("--parts", default="1,2,3", help="which parts to run, e.g. 1,2")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads")
    parts = args.parts.split(",")
    if "1" in parts:
        scan_table(args)
    if "2" in parts:
        decode_table(args)
    if "3" in parts:
        training_table(args)


if __name__ == "__main__":
    main()
