"""Where a command's model comes from: ``--checkpoint PATH`` (a checkpoint or run folder) or
``--model NAME`` (pretrained GPT-2 weights by name, downloaded from the Hugging Face Hub)."""

from __future__ import annotations

import argparse
from typing import Any

MODEL_HELP = ("pretrained weights by name instead: gpt2, gpt2-medium, gpt2-large, gpt2-xl, or a Hub repository "
              "owner/name of the GPT-2 architecture (downloaded once into the Hugging Face cache)")


def add_model_source(parser: argparse.ArgumentParser, checkpoint_help: str) -> None:
    """``--checkpoint PATH`` or ``--model NAME``, exactly one of them."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="PATH", help=checkpoint_help)
    source.add_argument("--model", metavar="NAME", help=MODEL_HELP)


def load_model_source(args: argparse.Namespace, *, decoding: bool = False) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of ``--checkpoint`` or ``--model``; ``decoding``: for generation only
    (not training), so its weights take the faster decode layout (``scratchllm.model.lay_out_weights``)."""
    if getattr(args, "model", None):
        from scratchllm.interop.hub import load_pretrained

        model, tokenizer = load_pretrained(args.model)
    else:
        from scratchllm.checkpoint import load_checkpoint

        model, tokenizer = load_checkpoint(args.checkpoint)
    if decoding:
        from scratchllm.model import lay_out_weights

        lay_out_weights(model)
    return model, tokenizer


def check_language_model(model: Any, tokenizer: Any, name: str, needs: str,
                         hint: str = "label texts with `scratchllm classify --checkpoint ... --text ...`") -> None:
    """Refuse a classifier (its replaced head scores classes, not next tokens) and weights with no
    tokenizer, which cannot encode ``needs`` (what the command reads)."""
    from scratchllm.errors import ScratchLLMError

    if model.config.head_size is not None:
        raise ScratchLLMError(f"{name} is a classifier ({model.config.head_size} outputs, not a vocabulary): {hint}")
    if tokenizer is None:
        raise ScratchLLMError(f"{name} holds no tokenizer, so {needs} cannot be encoded")


def source_name(args: argparse.Namespace) -> str:
    """How messages name the model: its path or its name."""
    return args.checkpoint or args.model
