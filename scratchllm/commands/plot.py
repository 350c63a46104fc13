"""``scratchllm plot RUN_DIR``: draw a run's loss curves as a PNG."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plot",
        help="draw a run's loss curves (PNG)",
        description="Draw train and validation loss against tokens seen, learning rate on a second axis, "
        "from RUN_DIR/metrics.jsonl into RUN_DIR/loss.png (or --out).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by `scratchllm train`")
    p.add_argument("--out", metavar="FILE.png", help="where to write the picture (default RUN_DIR/loss.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scratchllm.train.metrics import plot_run

    print(plot_run(args.run_dir, args.out))
    return 0
