"""``scratchllm prepare``: tokenize a corpus once into token shards for training."""

from __future__ import annotations

import argparse
import time

from scratchllm.data.shards import open_prepared, prepare


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="tokenize a corpus into memory-mapped token shards",
        description="Tokenize a corpus once into DATA_DIR/{train,val}.bin with a manifest and the tokenizer. "
        "With no --tokenizer, a BPE tokenizer is trained on the training split first.",
    )
    p.add_argument("--corpus", default="shakespeare",
                   help="shakespeare (default), tinyshakespeare, the-verdict, tinystories, a URL, "
                        "or a .txt/.jsonl/.parquet file, folder or glob")
    p.add_argument("--out", required=True, metavar="DATA_DIR", help="folder to write (replaced atomically)")
    p.add_argument("--tokenizer", metavar="DIR", help="an existing tokenizer folder (default: train one)")
    p.add_argument("--vocab-size", type=int, default=4096,
                   help="ids of the tokenizer to train, special tokens included; 256 = byte level (default 4096)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="validation share: the tail of a one-file corpus, or whole files (default 0.1)")
    p.add_argument("--workers", type=int, default=None, help="encoding processes (default: all CPUs)")
    p.add_argument("--cache-dir", default=None,
                   help="download cache (default: $SCRATCHLLM_DATA_DIR or ~/.cache/scratchllm)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out = prepare(args.corpus, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                  val_fraction=args.val_fraction, workers=args.workers, cache_dir=args.cache_dir)
    data = open_prepared(out)
    seconds = time.perf_counter() - started
    m = data.manifest
    chars = sum(s["characters"] for s in m["splits"].values())
    print(f"prepared {m['corpus']} into {out} in {seconds:.1f} s ({chars / seconds / 1e6:.2f} M chars/s)")
    for name, s in m["splits"].items():
        print(f"  {name:5s} {s['tokens']:>12,} tokens  {s['documents']:>8,} documents  {s['characters']:>13,} chars")
    print(f"  vocabulary {data.vocab_size:,} ({m['dtype']}), split: {m['split_rule']}")
    # a shape that fits the data: a small corpus overfits GPT-2 small long before it trains it
    preset = "baby-shakespeare" if m["splits"]["train"]["tokens"] < 50_000_000 else "gpt2-124m"
    print(f"next: scratchllm train --data {out} --out runs/NAME --preset {preset}")
    return 0
