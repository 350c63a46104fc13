"""``scratchllm quantize --checkpoint C --bits 8|4 [--group-size G] [--method rtn|gptq|awq] --out Q``: a
weight-only quantized copy of a checkpoint, which generate, eval and load_checkpoint read as any other."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "quantize",
        help="store a checkpoint's weights as int8 or int4 (round to nearest, GPTQ or AWQ)",
        description="Quantize every linear layer of --checkpoint (the output head too) and its token table: "
        "--bits 8 is int8 with one scale per output channel, --bits 4 is int4 with a scale and zero point per "
        "--group-size inputs, two codes a byte (scratchllm/compress/quantize.py). --method gptq compensates each "
        "column's rounding error on the columns after it, using calibration text (scratchllm/compress/gptq.py); "
        "--method awq scales up the weights of inputs with large activations before rounding "
        "(scratchllm/compress/awq.py). "
        "The result is a checkpoint folder of safetensors + JSON.",
    )
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a checkpoint folder or a run folder (newest)")
    p.add_argument("--bits", required=True, type=int, choices=(8, 4), help="8 (per channel) or 4 (group-wise)")
    p.add_argument("--group-size", type=int, default=None, choices=(32, 64, 128), metavar="32|64|128",
                   help="inputs per int4 scale and zero point (default 128 for --bits 4; not used with 8)")
    p.add_argument("--method", choices=("rtn", "gptq", "awq"), default="rtn",
                   help="rtn: round to nearest (default); gptq: error-compensating; awq: activation-aware "
                        "scales; gptq and awq need --calibration")
    p.add_argument("--calibration", metavar="NAME|PATH",
                   help="GPTQ's calibration text: a corpus name, a text file or folder, or a prepared data folder "
                   "(its training split is used)")
    p.add_argument("--calibration-windows", type=int, default=64, metavar="N",
                   help="context-length windows of calibration text GPTQ reads (default 64)")
    p.add_argument("--batch-size", type=int, default=8, metavar="B", help="calibration windows per forward (default 8)")
    p.add_argument("--keep-embeddings", action="store_true",
                   help="keep the token table in float32 (a tied output head then gets its own quantized copy)")
    p.add_argument("--out", required=True, metavar="PATH", help="the quantized checkpoint folder to write")
    p.add_argument("--force", action="store_true", help="replace a checkpoint already at --out")
    p.add_argument("--cache-dir", default=None, metavar="DIR", help="where named corpora are downloaded")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scratchllm.checkpoint import CONFIG_FILE, find_checkpoint, load_checkpoint, read_task, save_checkpoint
    from scratchllm.compress.gptq import calibration_windows
    from scratchllm.compress.quantize import check_bits
    from scratchllm.compress.quantize_model import quantize_model
    from scratchllm.errors import ScratchLLMError
    from scratchllm.fileio import check_replaceable
    from scratchllm.train.evaluation import corpus_tokens

    group_size = args.group_size or (128 if args.bits == 4 else None)
    check_bits(args.bits, group_size)  # before the checkpoint is read
    if args.method in ("gptq", "awq") and not args.calibration:
        raise ScratchLLMError(f"--method {args.method} needs calibration text: give --calibration CORPUS (a few "
                              "hundred kilobytes of the kind of text the model reads)")
    if args.calibration and args.method == "rtn":
        raise ScratchLLMError("--calibration is read by --method gptq and awq only; round to nearest needs no data")
    source = find_checkpoint(args.checkpoint)
    out = Path(args.out)
    if out.resolve() == source.resolve() or out.resolve() in source.resolve().parents:
        raise ScratchLLMError(f"--out {out} would replace the checkpoint being quantized: give --out a new folder")
    check_replaceable(out, CONFIG_FILE, "a checkpoint", force=args.force)
    model, tokenizer = load_checkpoint(source)
    calibration = None
    if args.method in ("gptq", "awq"):
        if tokenizer is None:
            raise ScratchLLMError(f"{source} holds no tokenizer/ folder, so the calibration text cannot be encoded")
        tokens = corpus_tokens(args.calibration, tokenizer, split="train", cache_dir=args.cache_dir)
        calibration = calibration_windows(tokens, model.config.context_length, args.calibration_windows,
                                          args.batch_size)
    size_before = _stored_bytes(source)
    spec = quantize_model(model, args.bits, group_size, method=args.method, calibration=calibration,
                          batch_size=args.batch_size, embeddings=not args.keep_embeddings, progress=not args.quiet)
    save_checkpoint(out, model, tokenizer, task=read_task(source))
    size_after = _stored_bytes(out)
    group = f", groups of {group_size}" if group_size else ", per output channel"
    print(f"wrote {out}: int{args.bits}{group}, {args.method}, {len(spec['layers'])} linear layers, token table "
          f"{spec['embedding'] or 'kept in float32'}; weights {size_before / 1e6:.1f} MB -> {size_after / 1e6:.1f} MB "
          f"({size_after / size_before:.2f}x)")
    return 0


def _stored_bytes(ckpt: Path) -> int:
    from scratchllm.checkpoint import MODEL_FILE

    return (ckpt / MODEL_FILE).stat().st_size
