"""``scratchllm demo``: tokenizer, data, a trained GPT, its evaluation, samples and pictures, in one command."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="train a small GPT end to end in about 10 minutes (start here)",
        description="Train a BPE tokenizer on the corpus, prepare token shards, train a small GPT for about "
        "--minutes (the schedule is planned from a measured step time), evaluate it on held-out text (bits per "
        "byte), write samples.txt, loss.png and attention.png into --out, and say how to continue.",
    )
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="run folder to create (default runs/demo)")
    p.add_argument("--minutes", type=float, default=10.0, help="time budget, all steps included (default 10)")
    p.add_argument("--corpus", default="shakespeare",
                   help="shakespeare (default: the complete works, whole works held out), another named corpus, "
                        "or a .txt/.jsonl/.parquet file, folder or glob")
    p.add_argument("--preset", default="demo", metavar="NAME",
                   help="the recipe (scratchllm/presets.py): demo (default), demo-tiny (a quick check), or any other")
    p.add_argument("--cache-dir", default=None,
                   help="download cache (default: $SCRATCHLLM_DATA_DIR or ~/.cache/scratchllm)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scratchllm.demo import run_demo

    run_demo(args.out, args.minutes, args.corpus, preset=args.preset, cache_dir=args.cache_dir,
             progress=not args.quiet)
    return 0
