"""``scratchllm classify --checkpoint RUN --text "..."``: the label a fine-tuned classifier gives a text."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "classify",
        help="label a text with a classifier made by `finetune classify`",
        description="Print the label that the classifier in --checkpoint (made by `scratchllm finetune classify`) "
        "gives each --text, and its probability.",
    )
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a classifier run or checkpoint folder")
    p.add_argument("--text", required=True, action="append", help="the text to label (repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scratchllm.finetune.classify import load_classifier, predict

    model, tokenizer, task = load_classifier(args.checkpoint)
    for text, (label, prob) in zip(args.text, predict(model, tokenizer, task, args.text), strict=True):
        print(f"{label}\t{prob:.4f}" + (f"\t{text}" if len(args.text) > 1 else ""))
    return 0
