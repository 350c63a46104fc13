"""``scratchllm eval --checkpoint C --corpus X``: loss, perplexity and bits per byte on any text."""

from __future__ import annotations

import argparse
import json

from scratchllm.commands._model import add_model_source, check_language_model


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="score a checkpoint on a corpus: loss, perplexity, bits per byte",
        description="Score --checkpoint on a corpus: the mean next-token loss (nats/token), perplexity and bits per "
        "byte over its text tokens, in non-overlapping windows of the model's context (scratchllm.train.evaluation). "
        "Bits per byte compares models with different tokenizers.",
    )
    add_model_source(p, "a checkpoint folder or a run folder (newest)")
    p.add_argument("--corpus", required=True, metavar="NAME|PATH",
                   help="a corpus name (shakespeare, ...), a text file or folder, or a prepared data folder")
    p.add_argument("--split", default="val", choices=("val", "train", "all"),
                   help="which part, split as `prepare` splits it (default val: text the run never trained on)")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                   help="the validation fraction the corpus was prepared with (default 0.1)")
    p.add_argument("--max-tokens", type=int, default=0, metavar="N", help="score at most N tokens (default: all)")
    p.add_argument("--batch-size", type=int, default=8, metavar="B", help="windows per forward pass (default 8)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                   help="default: the precision the checkpoint was trained in, else fp32")
    p.add_argument("--cache-dir", default=None, metavar="DIR", help="where named corpora are downloaded")
    p.add_argument("--json", action="store_true", help="print one JSON object (loss, perplexity, bits_per_byte, "
                   "tokens, bytes) on stdout, nothing else")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scratchllm.checkpoint import STATE_FILE, find_checkpoint, load_checkpoint, read_json
    from scratchllm.errors import ScratchLLMError
    from scratchllm.interop.hub import load_pretrained
    from scratchllm.train.evaluation import corpus_tokens, score_tokens

    if args.batch_size < 1 or args.max_tokens < 0:
        raise ScratchLLMError("--batch-size must be at least 1 and --max-tokens at least 0")
    if args.model:
        found, (model, tokenizer) = args.model, load_pretrained(args.model)
        trained_in = "fp32"
    else:
        found = find_checkpoint(args.checkpoint)
        model, tokenizer = load_checkpoint(found)
        state = found / STATE_FILE
        trained_in = read_json(state).get("precision", "fp32") if state.is_file() else "fp32"
    check_language_model(model, tokenizer, str(found), "the corpus")
    precision = args.precision or trained_in
    tokens = corpus_tokens(args.corpus, tokenizer, split=args.split, val_fraction=args.val_fraction,
                           cache_dir=args.cache_dir)
    score = score_tokens(model, tokens, tokenizer, batch_size=args.batch_size, precision=precision,
                         max_tokens=args.max_tokens, progress=not args.json)
    if args.json:
        print(json.dumps(score.to_dict()))
    else:
        print(f"{found} on {args.corpus} ({args.split}, {precision}): loss {score.loss:.4f} nats/token, perplexity "
              f"{score.perplexity:.2f}, {score.bits_per_byte:.4f} bits per byte over {score.tokens:,} tokens "
              f"({score.bytes:,} bytes)")
    return 0
