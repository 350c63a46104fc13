"""``scratchllm convert``: Hugging Face GPT-2 folders to scratchllm checkpoints and back."""

from __future__ import annotations

import argparse
from pathlib import Path

from scratchllm.errors import ScratchLLMError
from scratchllm.fileio import atomic_write_json, check_replaceable


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert between Hugging Face GPT-2 folders and scratchllm checkpoints",
        description="--from-hf DIR --out CKPT reads config.json + model.safetensors (+ tokenizer.json, or "
        "vocab.json and merges.txt, when present) into a scratchllm checkpoint; --to-hf CKPT --out DIR writes a "
        "folder that transformers.GPT2LMHeadModel.from_pretrained loads (+ tokenizer.json).",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-hf", metavar="DIR|NAME", help="a Hugging Face GPT-2 folder, or a model name (gpt2, "
                        "gpt2-medium, gpt2-large, gpt2-xl, owner/name) downloaded from the Hub into its cache")
    source.add_argument("--to-hf", metavar="CKPT", help="a scratchllm checkpoint or run folder")
    p.add_argument("--out", required=True, metavar="PATH",
                   help="a new or empty folder to write (or one an earlier convert wrote, with --force)")
    p.add_argument("--force", action="store_true", help="replace a folder an earlier convert wrote")
    p.set_defaults(func=run)


MARKER = "scratchllm-convert.json"  # written into every output folder: its presence lets --force replace it


def check_out(src: Path, out: Path, force: bool) -> None:
    """Refuse an ``--out`` that would replace the source, a folder holding it, or anything convert did not write."""
    if out.resolve() == src.resolve() or out.resolve() in src.resolve().parents:
        raise ScratchLLMError(f"--out {out} would replace the source {src}: give --out a new folder")
    check_replaceable(out, MARKER, "a folder written by scratchllm convert", force=force)


def run(args: argparse.Namespace) -> int:
    from scratchllm.checkpoint import load_checkpoint, save_checkpoint
    from scratchllm.interop import load_hf_gpt2, save_hf_gpt2

    out = Path(args.out)
    check_out(Path(args.from_hf or args.to_hf), out, args.force)
    if args.from_hf:
        from scratchllm.interop.hub import download_model, hf_tokenizer

        src = Path(args.from_hf)
        if not src.exists() and not args.from_hf.startswith((".", "/")):  # a name: fetch it from the Hub
            src = download_model(args.from_hf)
        model = load_hf_gpt2(src)
        tokenizer = hf_tokenizer(src)
        save_checkpoint(out, model, tokenizer)
        atomic_write_json(out / MARKER, {"written_by": "scratchllm convert", "from_hf": str(src)})
        note = ("with its tokenizer" if tokenizer is not None
                else "without a tokenizer (no tokenizer.json, nor vocab.json + merges.txt)")
        print(f"wrote {args.out} ({model.num_params():,} parameters, {note})")
    else:
        model, tokenizer = load_checkpoint(args.to_hf)
        save_hf_gpt2(model, out, tokenizer)
        atomic_write_json(out / MARKER, {"written_by": "scratchllm convert", "to_hf": args.to_hf})
        print(f"wrote {args.out} (config.json, model.safetensors{', tokenizer.json' if tokenizer else ''})")
    return 0
