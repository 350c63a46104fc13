"""``scratchllm attention``: save a trained model's attention weights on a text as heatmaps."""

from __future__ import annotations

import argparse

from scratchllm.commands._text import add_special_flags


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "attention",
        help="save per-layer, per-head attention heatmaps for a text",
        description="Run --text through the model in --checkpoint and save DIR/attention-layer<L>.png (one panel "
        "per head: row = query token, column = the token it reads) and DIR/attention.png (all layers and heads).",
    )
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a checkpoint or run folder")
    p.add_argument("--text", required=True, help="the text to look at (a sentence reads best)")
    p.add_argument("--out", default="runs/attention", metavar="DIR",
                   help="folder for the PNGs (default runs/attention)")
    add_special_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scratchllm.checkpoint import load_checkpoint
    from scratchllm.commands._text import special_mode, user_text
    from scratchllm.errors import ScratchLLMError
    from scratchllm.viz import save_attention_maps

    model, tokenizer = load_checkpoint(args.checkpoint)
    if tokenizer is None:
        raise ScratchLLMError(f"{args.checkpoint} holds no tokenizer/ folder, so --text cannot be encoded: use a "
                              "checkpoint written by `scratchllm train` or `scratchllm demo`")
    text = user_text(args.text, "--text")
    for path in save_attention_maps(model, tokenizer, text, args.out, special=special_mode(args)):
        print(path)
    return 0
