"""``scratchllm prune --checkpoint C --method M --sparsity S --out P``: a pruned checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

# scratchllm.compress.prune.METHODS, spelled out so that building the CLI does not import torch
METHODS = ("magnitude", "wanda", "2:4", "heads", "neurons")
MARKER = "prune.json"  # written into every pruned checkpoint: what was done, and lets --force replace it


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prune",
        help="remove weights (magnitude, wanda, 2:4) or whole heads/neurons (a smaller model) from a checkpoint",
        description="Prune --checkpoint (scratchllm/compress/prune.py). magnitude, wanda and 2:4 set weights of the "
        "blocks' linear layers to zero (same shapes); heads and neurons remove that fraction of each block's "
        "attention heads or feed-forward neurons, so the saved model is smaller and faster. wanda, 2:4, heads and "
        "neurons score on calibration text (--data), which must suit the checkpoint's tokenizer.",
    )
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a checkpoint folder or a run folder (newest)")
    p.add_argument("--method", required=True, choices=METHODS, help="what to remove")
    p.add_argument("--sparsity", type=float, default=None, metavar="S",
                   help="fraction in [0, 1) of the weights (or heads, neurons) removed; 2:4 is 0.5 by definition")
    p.add_argument("--out", required=True, metavar="DIR", help="the pruned checkpoint folder to write")
    p.add_argument("--data", metavar="NAME|PATH", default=None,
                   help="calibration (and recovery) text: a corpus name, a text file or folder, or prepared data; "
                   "its training split is used")
    p.add_argument("--calibration-samples", type=int, default=64, metavar="N", help="windows scored (default 64)")
    p.add_argument("--calibration-length", type=int, default=None, metavar="T",
                   help="tokens per window (default: the model's context)")
    p.add_argument("--batch-size", type=int, default=8, metavar="B", help="windows per forward pass (default 8)")
    p.add_argument("--recover-steps", type=int, default=0, metavar="N",
                   help="fine-tune the pruned model N steps on --data through the trainer (default 0: none); "
                   "pruned weights stay zero")
    p.add_argument("--recover-lr", type=float, default=1e-4, metavar="LR", help="its peak learning rate (default 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="which calibration windows are drawn (default 0)")
    p.add_argument("--cache-dir", default=None, metavar="DIR", help="where named corpora are downloaded")
    p.add_argument("--force", action="store_true", help="replace a checkpoint an earlier prune wrote")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scratchllm.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
    from scratchllm.compress.prune import NEEDS_CALIBRATION, calibration_batches, prune, recover, sparsity_of
    from scratchllm.errors import ScratchLLMError
    from scratchllm.fileio import atomic_write_json, check_replaceable
    from scratchllm.train.evaluation import corpus_tokens

    sparsity = args.sparsity if args.sparsity is not None else (0.5 if args.method == "2:4" else None)
    if sparsity is None:
        raise ScratchLLMError(f"give --sparsity S in [0, 1) for {args.method} pruning, e.g. --sparsity 0.5")
    found = find_checkpoint(args.checkpoint)
    out = Path(args.out)
    if out.resolve() == found.resolve() or out.resolve() in found.resolve().parents:
        raise ScratchLLMError(f"--out {out} would replace the checkpoint it prunes: give --out a new folder")
    check_replaceable(out, MARKER, "a checkpoint written by scratchllm prune", force=args.force)
    needs_data = args.method in NEEDS_CALIBRATION or args.recover_steps > 0
    if needs_data and args.data is None:
        raise ScratchLLMError(f"{args.method} pruning{' with recovery' if args.recover_steps else ''} needs text: "
                              "give --data (a corpus name such as shakespeare, a text file, or prepared data)")
    model, tokenizer = load_checkpoint(found)
    model.eval()
    before = model.num_params()
    tokens, calibration = None, None
    if needs_data:
        if tokenizer is None:
            raise ScratchLLMError(f"{found} holds no tokenizer/ folder, so --data cannot be encoded")
        tokens = corpus_tokens(args.data, tokenizer, split="train", cache_dir=args.cache_dir)
        seq_len = args.calibration_length or model.config.context_length
        if seq_len > model.config.context_length:
            raise ScratchLLMError(f"--calibration-length {seq_len} exceeds the model's context of "
                                  f"{model.config.context_length}")
        calibration = calibration_batches(tokens, seq_len, args.calibration_samples, args.batch_size, args.seed)
    pruned = prune(model, args.method, sparsity, calibration, progress=not args.quiet)
    if args.recover_steps:
        recover(pruned, tokens, args.recover_steps, lr=args.recover_lr, batch_size=args.batch_size, seed=args.seed,
                progress=not args.quiet)
    save_checkpoint(out, pruned, tokenizer)
    cfg = pruned.config
    report = {"written_by": "scratchllm prune", "source": str(found), "method": args.method, "sparsity": sparsity,
              "zero_fraction": round(sparsity_of(pruned), 6), "parameters_before": before,
              "parameters_after": pruned.num_params(), "n_heads": cfg.n_heads, "ffn_hidden": cfg.hidden_dim,
              "recover_steps": args.recover_steps, "data": args.data}
    atomic_write_json(out / MARKER, report)
    print(f"wrote {out}: {args.method} at {sparsity:g}; {report['zero_fraction']:.1%} of the blocks' linear weights "
          f"are zero; {before:,} -> {pruned.num_params():,} parameters ({cfg.n_heads} heads, {cfg.hidden_dim} "
          "feed-forward neurons per block)")
    return 0
