"""LoRA against full fine-tuning at equal steps, on the book's chapter-6 task (appendix E).

Each row fine-tunes the same pretrained checkpoint as a classifier for the same epochs (so the
same steps, batches and order) in a fresh process, so that its peak memory is its own:

- ``all``: every weight trains (full fine-tuning);
- ``last-block``: the book's chapter-6 recipe (last block, final norm, new head);
- ``lora``: LoRA adapters on every linear layer, the new head's included, rank and alpha 16
  (the book's appendix E: 96.67% test with GPT-2 124M, 2,666,528 trainable parameters).

Printed per row: test accuracy, trainable parameters, the process's peak resident memory (max
RSS: torch, the data, the model, activations), the training state counted exactly (fp32 weights,
plus a gradient and AdamW's two moments per trainable parameter), and training throughput in real
(unpadded) tokens per second.

    .venv/bin/python benchmarks/lora.py --checkpoint runs/pretrained \\
        --data ../shared/data/sms-spam/SMSSpamCollection --columns label,text --balance
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import tempfile
from pathlib import Path

BOOK = {"all": None, "last-block": 0.9567, "lora": 0.9667}


def one_row(args: argparse.Namespace, train: str, queue) -> None:
    import torch

    from scratchllm.checkpoint import load_checkpoint
    from scratchllm.finetune.classify import ClassifySettings, fine_tune
    from scratchllm.finetune.labelled import balance, load_examples, split_examples
    from scratchllm.train.metrics import read_metrics

    if args.threads:
        torch.set_num_threads(args.threads)
    examples = load_examples(args.data, columns=args.columns.split(",") if args.columns else None)
    if args.balance:
        examples = balance(examples, seed=123)
    splits = split_examples(examples, seed=123)
    model, tokenizer = load_checkpoint(args.checkpoint)
    total_params = sum(p.numel() for p in model.parameters())
    lr = args.lora_lr if train == "lora" and args.lora_lr else args.lr
    settings = ClassifySettings(epochs=args.epochs, lr=lr, train=train, lora_rank=args.rank, lora_alpha=args.alpha)
    with tempfile.TemporaryDirectory() as run:
        r = fine_tune(model, tokenizer, splits, run, settings, progress=False)
        rates = [m["tokens_per_s"] for m in read_metrics(run) if "tokens_per_s" in m]  # examples/s per window
    context = model.config.context_length
    mean_tokens = sum(min(len(tokenizer.encode_ordinary(t)), context) for t, _ in splits[0]) / len(splits[0])
    queue.put({"train": train, "lr": lr, "test": r.test_accuracy, "params": r.trainable_params,
               "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "state_mb": 4 * (total_params + 3 * r.trainable_params) / 2**20,
               "tokens_per_s": sum(rates) / len(rates) * mean_tokens, "seconds": r.seconds})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a pretrained checkpoint or run folder")
    parser.add_argument("--data", default="sms-spam")
    parser.add_argument("--columns", default=None)
    parser.add_argument("--balance", action="store_true")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=5e-5, help="full and last-block rows (the book's 5e-5)")
    parser.add_argument("--lora-lr", type=float, default=None, help="the LoRA row's (default: --lr)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--rows", nargs="+", default=["all", "last-block", "lora"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    ctx = multiprocessing.get_context("spawn")  # a fresh process per row: its own peak memory
    results = []
    for train in args.rows:
        queue = ctx.Queue()
        proc = ctx.Process(target=one_row, args=(args, train, queue))
        proc.start()
        results.append(queue.get())
        proc.join()
        print(f"  {train}: test {results[-1]['test']:.2%} in {results[-1]['seconds']:.0f} s", flush=True)
    print(f"\n{args.epochs} epochs each (equal steps), {args.threads} thread(s), {platform.processor() or 'cpu'}")
    print("| train | lr | trainable params | test accuracy | peak memory (max RSS) | weights + grads + AdamW "
          "| tokens/s | book's test |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        book = f"{BOOK[r['train']]:.2%}" if BOOK.get(r["train"]) else "-"
        print(f"| {r['train']} | {r['lr']:g} | {r['params']:,} | {r['test']:.2%} | {r['peak_mb']:,.0f} MB | "
              f"{r['state_mb']:,.1f} MB | {r['tokens_per_s']:,.0f} | {book} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
