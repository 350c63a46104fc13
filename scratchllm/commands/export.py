"""``scratchllm export --checkpoint C --format gguf --out model.gguf``: a file llama.cpp runs."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a checkpoint for llama.cpp (GGUF: f32, f16 or q8_0)",
        description="Write --checkpoint (a GPT-2 shaped model with its tokenizer) as one GGUF file of llama.cpp's "
        "gpt2 architecture: weights, hyper-parameters and the BPE vocabulary with its merges "
        "(scratchllm/interop/gguf.py). Needs the gguf package: pip install 'scratchllm[gguf]'.",
    )
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a checkpoint folder or a run folder (newest)")
    p.add_argument("--format", default="gguf", choices=("gguf",), help="the file format (default gguf)")
    p.add_argument("--type", default="f16", choices=("f32", "f16", "q8_0"),
                   help="how matrices are stored: f32, f16 (default, as llama.cpp's converter) or q8_0 "
                   "(8-bit blocks of 32 with a float16 scale); vectors stay f32")
    p.add_argument("--out", required=True, metavar="FILE", help="the .gguf file to write")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scratchllm.checkpoint import find_checkpoint, load_checkpoint
    from scratchllm.errors import ScratchLLMError
    from scratchllm.interop.gguf import save_gguf

    out = Path(args.out)
    found = find_checkpoint(args.checkpoint)
    if out.is_dir():
        raise ScratchLLMError(f"--out {out} is a folder: give the path of a .gguf file")
    if out.exists() and not args.force:
        raise ScratchLLMError(f"{out} exists: pass --force to replace it, or give --out a new file")
    model, tokenizer = load_checkpoint(found)
    save_gguf(model, out, tokenizer, args.type, name=found.resolve().name)
    print(f"wrote {out} ({args.type}, {model.num_params():,} parameters, {out.stat().st_size / 1e6:.1f} MB)")
    return 0
