"""Pruning: quality against sparsity for every method on one model pretrained here, and what the
structured methods buy in speed.

1. Quality. A model (the baby-shakespeare preset, 4 x 128) is trained on byte-level Tiny Shakespeare
   (or --checkpoint is taken), then pruned by each method at each sparsity, each time from the same
   dense weights, with the same 64 calibration windows of the training split. Every figure is
   ``scratchllm eval``'s bits per byte on the whole validation split. With --recover-steps N the
   structured models are also fine-tuned N steps (``scratchllm.compress.prune.recover``).
2. Speed. Structured pruning at the GPT-2 124M shape (random weights: speed does not depend on
   their values): greedy decode tokens/s with the KV cache (batch 1) and training steps/s
   (batch 4 x 128, AdamW), against the dense model in the same run.

Writes a table to stdout and a PNG of both.

    flock /tmp/scratchllm-cpu.lock .venv/bin/python benchmarks/prune.py [--text tinyshakespeare.txt] \\
        [--steps 1000] [--checkpoint C] [--png docs/images/pruning.png]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from reference_files import tinyshakespeare

from scratchllm.checkpoint import load_checkpoint
from scratchllm.compress.prune import calibration_batches, prune, recover, shrink, sparsity_of
from scratchllm.data.shards import open_prepared, prepare
from scratchllm.generate import generate
from scratchllm.model import GPT, GPTConfig
from scratchllm.train import load_run_config, score_tokens, train
from scratchllm.train.losses import next_token_loss
from scratchllm.train.optim import make_optimizer

UNSTRUCTURED = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
STRUCTURED = [0.25, 0.5, 0.75]
COMMON = ["train.eval_interval=0", "train.sample_tokens=0", "train.plot=false", "train.precision=fp32"]


def quality(model: GPT, tokenizer, data, calibration, recover_steps: int, eval_tokens: int) -> list[dict]:
    dense = {k: v.clone() for k, v in model.state_dict().items()}

    def fresh() -> GPT:
        model.load_state_dict(dense)
        return model

    def bpb(m: GPT) -> float:
        return score_tokens(m, data.val, tokenizer, batch_size=32, max_tokens=eval_tokens).bits_per_byte

    rows = [{"method": "dense", "sparsity": 0.0, "params": model.num_params(), "bpb": bpb(model)}]
    for method, levels in (("magnitude", UNSTRUCTURED), ("wanda", UNSTRUCTURED), ("2:4", [0.5]),
                           ("heads", STRUCTURED), ("neurons", STRUCTURED)):
        for s in levels:
            pruned = prune(fresh(), method, s, calibration)
            row = {"method": method, "sparsity": s, "params": pruned.num_params(), "bpb": bpb(pruned),
                   "zeros": sparsity_of(pruned)}
            if recover_steps and method in ("heads", "neurons"):
                row["recovered_bpb"] = bpb(recover(pruned, data.train, recover_steps, lr=3e-4, batch_size=12))
            rows.append(row)
            print(f"  {method} {s:.2f}: {row['bpb']:.4f} bits/byte", flush=True)
    fresh()
    return rows


def speed(threads: int, decode_tokens: int, train_steps: int) -> list[dict]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dense = GPT(GPTConfig.preset("gpt2-124m", dropout=0.0, context_length=256)).eval()
    rows = []
    for method, s in [("dense", 0.0)] + [(m, s) for m in ("heads", "neurons") for s in STRUCTURED]:
        H, hidden = dense.config.n_heads, dense.config.hidden_dim
        if method == "heads":
            keep = round((1 - s) * H)
            model = shrink(dense, heads=[torch.arange(keep)] * dense.config.n_layers)
        elif method == "neurons":
            keep = round((1 - s) * hidden)
            model = shrink(dense, neurons=[torch.arange(keep)] * dense.config.n_layers)
        else:
            model = dense
        prompt = list(range(16))
        generate(model, [prompt], 4)  # warm up
        start = time.perf_counter()
        generate(model, [prompt], decode_tokens)
        decode = decode_tokens / (time.perf_counter() - start)
        model.train()
        optimizer = make_optimizer(list(model.parameters()), lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95),
                                   device_type="cpu")
        x = torch.randint(0, 50257, (4, 129))
        times = []
        for _ in range(train_steps + 1):
            start = time.perf_counter()
            next_token_loss(model, (x[:, :-1], x[:, 1:])).total.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
        model.eval()
        rows.append({"method": method, "sparsity": s, "params": model.num_params(), "decode": decode,
                     "step_s": sum(times[1:]) / train_steps})
        print(f"  speed {method} {s:.2f}: {decode:.1f} tok/s, {rows[-1]['step_s']:.2f} s/step", flush=True)
    return rows


def plot(rows: list[dict], fast: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    dense = rows[0]["bpb"]
    left.axhline(dense, color="gray", linestyle=":", label=f"dense ({dense:.3f})")
    for method, marker in (("magnitude", "o"), ("wanda", "s"), ("2:4", "*"), ("heads", "^"), ("neurons", "v")):
        points = [(r["sparsity"], r["bpb"]) for r in rows if r["method"] == method]
        left.plot(*zip(*points, strict=True), marker=marker, markersize=9 if method == "2:4" else 6,
                  linestyle="-" if len(points) > 1 else "", label=method)
        recovered = [(r["sparsity"], r["recovered_bpb"]) for r in rows
                     if r["method"] == method and "recovered_bpb" in r]
        if recovered:
            left.plot(*zip(*recovered, strict=True), marker=marker, linestyle="--", alpha=0.6,
                      label=f"{method} + recovery")
    left.set(xlabel="sparsity (fraction of weights; of heads / neurons for the structured)",
             ylabel="validation bits per byte (lower is better)", title="Quality against sparsity")
    left.set_yscale("log")
    left.legend(fontsize=8)
    for method, marker in (("heads", "^"), ("neurons", "v")) if fast else ():
        base = fast[0]
        pts = [r for r in fast if r["method"] in (method, "dense")]
        size = [r["params"] / base["params"] for r in pts]
        right.plot(size, [r["decode"] / base["decode"] for r in pts], marker=marker, label=f"{method}: decode")
        right.plot(size, [base["step_s"] / r["step_s"] for r in pts], marker=marker, linestyle="--",
                   label=f"{method}: training")
    right.set(xlabel="parameters / dense (GPT-2 124M shape)", ylabel="speed / dense",
              title="Structured pruning: speed against size")
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", type=Path, default=None, help="Tiny Shakespeare (default: fetched into the cache)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="prune this byte-level Tiny Shakespeare model instead of training one")
    parser.add_argument("--steps", type=int, default=1000, help="training steps of the model pruned")
    parser.add_argument("--recover-steps", type=int, default=0, help="fine-tune the structured models this long")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--eval-tokens", type=int, default=0, help="score the first N validation tokens (0: all)")
    parser.add_argument("--skip-speed", action="store_true", help="only the quality curve")
    parser.add_argument("--png", type=Path, default=Path("pruning.png"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = prepare(tinyshakespeare(args.text), Path(tmp) / "bytes", vocab_size=257, workers=1)
        data = open_prepared(data_dir)
        if args.checkpoint is None:
            config = load_run_config("baby-shakespeare", base={"model": {"vocab_size": data.vocab_size},
                                                               "data": {"dir": str(data_dir)}},
                                     overrides=[*COMMON, f"train.max_steps={args.steps}"])
            start = time.perf_counter()
            train(config, Path(tmp) / "run", progress=False)
            print(f"trained {args.steps} steps in {time.perf_counter() - start:.0f} s", flush=True)
        model, tokenizer = load_checkpoint(args.checkpoint or Path(tmp) / "run")
        model.eval()
        calibration = calibration_batches(data.train, model.config.context_length, 64, 8, seed=0)
        rows = quality(model, tokenizer, data, calibration, args.recover_steps, args.eval_tokens)
    fast = [] if args.skip_speed else speed(args.threads, args.decode_tokens, args.train_steps)
    plot(rows, fast, args.png)

    print(f"\nquality: {model.config.n_layers} x {model.config.d_model} model, byte-level Tiny Shakespeare, "
          "validation bits per byte (dense in the first row)")
    recovery = any("recovered_bpb" in r for r in rows)
    print("| method | sparsity | parameters | zero weights in blocks | val bits/byte |"
          + (" after recovery |" if recovery else ""))
    print("|---|---:|---:|---:|---:|" + ("---:|" if recovery else ""))
    for r in rows:
        extra = f" {r['recovered_bpb']:.4f} |" if "recovered_bpb" in r else (" |" if recovery else "")
        print(f"| {r['method']} | {r['sparsity']:.2f} | {r['params']:,} | {r.get('zeros', 0):.1%} | {r['bpb']:.4f} |"
              + extra)
    if not fast:
        print(f"\nwrote {args.png} (speed not measured: --skip-speed)")
        return
    print(f"\nspeed: GPT-2 124M shape, {args.threads} threads, decode batch 1 with the KV cache, "
          "training batch 4 x 128 with AdamW")
    print("| method | removed | parameters | decode tok/s | vs dense | train s/step | vs dense |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = fast[0]
    for r in fast:
        print(f"| {r['method']} | {r['sparsity']:.2f} | {r['params']:,} | {r['decode']:.1f} | "
              f"{r['decode'] / base['decode']:.2f}x | {r['step_s']:.2f} | {base['step_s'] / r['step_s']:.2f}x |")
    print(f"\nwrote {args.png}")


if __name__ == "__main__":
    main()
