"""``scratchllm tour``: walk one sentence through every stage of a GPT, with pictures."""

from __future__ import annotations

import argparse

from scratchllm.commands._text import add_special_flags


def register(subparsers: argparse._SubParsersAction) -> None:
    from scratchllm.tour import DEFAULT_TEXT

    p = subparsers.add_parser(
        "tour",
        help="follow one sentence through the tokenizer, embeddings, attention, blocks and sampling",
        description="Print what happens to one sentence at every stage of the model, in the book's order, and "
        "save pictures (sinusoidal encoding, attention scores and weights, residual stream, next-token "
        "probabilities) into --out. Without --checkpoint it uses a freshly initialized tiny model.",
    )
    p.add_argument("--checkpoint", metavar="PATH", help="a checkpoint or run folder (default: a fresh tiny model)")
    p.add_argument("--text", default=DEFAULT_TEXT, help=f"the sentence to follow (default {DEFAULT_TEXT!r})")
    p.add_argument("--out", default="runs/tour", metavar="DIR", help="folder for the pictures (default runs/tour)")
    add_special_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scratchllm.commands._text import special_mode, user_text
    from scratchllm.tour import tour

    tour(args.checkpoint, user_text(args.text, "--text"), args.out, special=special_mode(args))
    return 0
