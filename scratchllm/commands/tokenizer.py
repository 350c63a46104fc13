"""``scratchllm tokenizer train|encode|decode|info``: the BPE tokenizer from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scratchllm.commands._text import add_special_flags, read_stdin, special_mode, user_text
from scratchllm.errors import ScratchLLMError, check_range
from scratchllm.tokenizer import DEFAULT_SPECIAL_TOKENS, BPETokenizer


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tokenizer", help="train and use a byte-level BPE tokenizer")
    group = parser.add_subparsers(dest="tokenizer_command", metavar="ACTION", parser_class=type(parser))
    group.required = True

    train = group.add_parser("train", help="learn a BPE vocabulary from text files")
    train.add_argument("--input", nargs="+", required=True, type=Path, help="UTF-8 text file(s), streamed")
    train.add_argument("--vocab-size", type=int, required=True, help="bytes + merges + special tokens")
    train.add_argument("--out", required=True, type=Path, help="directory to save the tokenizer in")
    train.add_argument("--pattern", default="gpt4", help="split pattern: gpt2, gpt4 or a regex (default gpt4)")
    train.add_argument("--special", nargs="*", default=list(DEFAULT_SPECIAL_TOKENS), help="special tokens")
    train.add_argument("--force", action="store_true", help="replace a different tokenizer already in --out")
    train.set_defaults(func=_train)

    encode = group.add_parser("encode", help="print the token ids of a text")
    encode.add_argument("--tokenizer", required=True, type=Path, help="directory made by `tokenizer train`")
    _add_text_source(encode)
    add_special_flags(encode)
    encode.set_defaults(func=_encode)

    decode = group.add_parser("decode", help="print the text of token ids")
    decode.add_argument("--tokenizer", required=True, type=Path, help="directory made by `tokenizer train`")
    decode.add_argument("ids", nargs="*", help="token ids (default: read them from stdin)")
    decode.set_defaults(func=_decode)

    info = group.add_parser("info", help="vocabulary size, bytes per token on a text, longest tokens")
    info.add_argument("--tokenizer", required=True, type=Path, help="directory made by `tokenizer train`")
    info.add_argument("--input", type=Path, help="a text file to measure compression on")
    info.add_argument("--top", type=int, default=10, help="how many of the longest tokens to show")
    info.set_defaults(func=_info)


def _add_text_source(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--text", help="the text (default: read stdin)")
    source.add_argument("--input", type=Path, help="a UTF-8 text file")


def _read_text(args: argparse.Namespace) -> str:
    if getattr(args, "text", None) is not None:
        return user_text(args.text, "--text")
    if args.input is None:
        return read_stdin()
    try:
        return args.input.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ScratchLLMError(f"cannot read {args.input}: {err}") from err


def _train(args: argparse.Namespace) -> int:
    tok = BPETokenizer.train(args.input, args.vocab_size, pattern=args.pattern, special_tokens=args.special)
    path = tok.save(args.out, force=args.force)
    print(f"saved {tok} to {path}")
    return 0


def _encode(args: argparse.Namespace) -> int:
    tok = BPETokenizer.load(args.tokenizer)
    ids = tok.encode_user_text(_read_text(args), special_mode(args))
    print(" ".join(map(str, ids)))
    return 0


def _decode(args: argparse.Namespace) -> int:
    tok = BPETokenizer.load(args.tokenizer)
    words = args.ids or sys.stdin.read().split()
    try:
        ids = [int(word) for word in words]
    except ValueError as err:
        raise ScratchLLMError(f"token ids must be integers: {err}") from err
    sys.stdout.write(tok.decode(ids) + "\n")
    return 0


def _info(args: argparse.Namespace) -> int:
    check_range("--top", args.top, 1)
    tok = BPETokenizer.load(args.tokenizer)
    print(f"vocab size: {tok.vocab_size} (256 bytes, {len(tok.merges)} merges, {len(tok.special_tokens)} special)")
    print(f"pattern: {tok.pattern_name or tok.pattern}")
    print(f"special tokens: {tok.special_tokens}")
    print(f"fingerprint: {tok.fingerprint()}")
    if args.input is not None:
        text = _read_text(args)
        ids = tok.encode_ordinary(text)
        print(
            f"{args.input}: {len(text.encode('utf-8')):,} bytes -> {len(ids):,} tokens, "
            f"{len(text.encode('utf-8')) / max(len(ids), 1):.2f} bytes per token"
        )
    longest = sorted((t for _, _, t in tok.merges), key=lambda t: (-len(tok.token_bytes(t)), t))[: args.top]
    print("longest tokens:")
    for t in longest:
        print(f"  {t:>7}  {tok.token_bytes(t)!r}")
    return 0
