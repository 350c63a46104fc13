"""``scratchllm generate --checkpoint PATH --prompt TEXT``: continue a text, printing as it goes."""

from __future__ import annotations

import argparse
import sys

from scratchllm.commands._model import add_model_source
from scratchllm.commands._text import add_special_flags


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="continue a prompt with a trained model, streaming the text",
        description="Continue --prompt with the model and tokenizer of --checkpoint, printing each token as it "
        "is chosen. Stops at <|endoftext|> or after --max-new-tokens. --temperature 0 is greedy.",
    )
    add_model_source(p, "a checkpoint folder or a run folder (newest)")
    p.add_argument("--prompt", required=True, help="the text to continue")
    p.add_argument("--max-new-tokens", type=int, default=200, metavar="N",
                   help="at most this many tokens (default 200); a learned-position model reads its last "
                   "context_length tokens once the text outgrows its context")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy; higher = more random (default 0.8)")
    p.add_argument("--top-k", type=int, default=200, metavar="K", help="sample among the K most likely (default 200)")
    p.add_argument("--top-p", type=float, default=None, metavar="P", help="nucleus sampling: smallest set with mass P")
    p.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    add_special_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scratchllm.commands._model import check_language_model, load_model_source, source_name
    from scratchllm.commands._text import special_mode, user_text
    from scratchllm.errors import ScratchLLMError
    from scratchllm.generate import check_sampling, stream
    from scratchllm.inference import TextStream
    from scratchllm.tokenizer import ENDOFTEXT

    prompt = user_text(args.prompt, "--prompt")
    check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p)  # before any output
    model, tokenizer = load_model_source(args, decoding=True)
    check_language_model(model, tokenizer, source_name(args), "the prompt")
    ids = tokenizer.encode_user_text(prompt, special_mode(args), "--prompt")
    if not ids:
        raise ScratchLLMError("the prompt is empty; give at least one character")
    eot = tokenizer.special_tokens.get(ENDOFTEXT)
    stops = [eot] if eot is not None else []
    text = TextStream(tokenizer)  # a token can end inside a UTF-8 character
    sys.stdout.write(prompt)
    sys.stdout.flush()
    tokens = stream(model, [ids], args.max_new_tokens, args.temperature, args.top_k, args.top_p, stops, args.seed,
                    crop=True)
    for token in tokens:
        if int(token) in stops:
            break
        sys.stdout.write(text.push(int(token)))
        sys.stdout.flush()
    sys.stdout.write(text.finish() + "\n")
    return 0
