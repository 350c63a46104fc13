"""``scratchllm chat --checkpoint RUN``: a conversation in the terminal with an instruction-tuned model."""

from __future__ import annotations

import argparse
import sys

from scratchllm.commands._model import add_model_source

HELP = "type a message and press Enter; /reset forgets the conversation, /quit (or Ctrl-D) ends it"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "chat",
        help="talk with an instruction-tuned model (made by `finetune instruct`), streaming its answers",
        description="A conversation with the model of --checkpoint: each line you type is a user message, and the "
        "answer streams as it is chosen. The prompt is written in the template the model was tuned with (stored "
        "in its checkpoint by `scratchllm finetune instruct`); the whole conversation is the prompt, its oldest "
        "turns left out when it outgrows the context. Reads standard input, so it can be piped. " + HELP + ".",
    )
    add_model_source(p, "an instruction-tuned run or checkpoint")
    p.add_argument("--template", default=None, metavar="NAME",
                   help="override the stored template (alpaca or chat); a model never tuned here uses alpaca")
    p.add_argument("--system", default=None, metavar="TEXT", help="a system text opening the conversation")
    p.add_argument("--max-new-tokens", type=int, default=256, metavar="N", help="the longest answer (default 256)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy, as the book answers (default 0)")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="sample among the K most likely")
    p.add_argument("--top-p", type=float, default=None, metavar="P", help="nucleus sampling: smallest set with mass P")
    p.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scratchllm.commands._model import load_model_source, source_name
    from scratchllm.commands._text import user_text
    from scratchllm.errors import ScratchLLMError
    from scratchllm.finetune.templates import (
        DEFAULT_TEMPLATE,
        Conversation,
        Exchange,
        checkpoint_template,
        get_template,
    )
    from scratchllm.generate import check_sampling

    check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    stored = checkpoint_template(args.checkpoint) if args.checkpoint else None  # a classifier is refused, by name
    template = get_template(args.template) if args.template else stored or get_template(DEFAULT_TEMPLATE)
    model, tokenizer = load_model_source(args, decoding=True)
    if tokenizer is None:
        raise ScratchLLMError(f"{source_name(args)} holds no tokenizer, so messages cannot be encoded")
    interactive = sys.stdin.isatty()
    if stored is None and not args.template:
        print(f"scratchllm: {source_name(args)} was not instruction-tuned here; writing prompts in the "
              f"{template.name} template", file=sys.stderr)
    if interactive:
        print(f"{template.name} template; {HELP}", file=sys.stderr)
    history: list[Exchange] = []
    turn = 0
    while True:
        if interactive:
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line or line.strip() == "/quit":
            return 0
        message = user_text(line.rstrip("\n"), "the message")
        if message.strip() == "/reset":
            history = []
            continue
        if not message.strip():
            continue
        exchanges = [*history, Exchange(message)]
        ids = None
        while exchanges:  # the oldest turns leave first when the conversation outgrows the context
            ids = template.prompt_ids(tokenizer, Conversation(tuple(exchanges), args.system))
            if len(ids) < model.config.context_length:
                break
            exchanges, ids = exchanges[1:], None
        if ids is None:
            print(f"scratchllm: the message is {len(tokenizer.encode_ordinary(message)):,} tokens, more than the "
                  f"model's context of {model.config.context_length}: say it in fewer words", file=sys.stderr)
            continue
        room = min(args.max_new_tokens, model.config.context_length - len(ids))
        seed = None if args.seed is None else args.seed + turn
        answer = _stream_answer(model, tokenizer, template, ids, room, args, seed)
        history = [*exchanges[:-1], Exchange(message, "", answer)]
        turn += 1


def _stream_answer(model, tokenizer, template, ids: list[int], max_new_tokens: int, args: argparse.Namespace,
                   seed: int | None) -> str:
    """Print the answer as it is chosen and return it as the template cuts it."""
    from scratchllm.finetune.templates import ResponseStream
    from scratchllm.generate import stream
    from scratchllm.inference import TextStream

    stops = template.stop_ids(tokenizer)
    text, shown = TextStream(tokenizer), ResponseStream(template)
    pieces = []
    for token in stream(model, [ids], max_new_tokens, args.temperature, args.top_k, args.top_p, stops, seed):
        if int(token) in stops:
            break
        piece = shown.push(text.push(int(token)))
        pieces.append(piece)
        sys.stdout.write(piece)
        sys.stdout.flush()
        if shown.stopped:
            break
    if not shown.stopped:
        rest = shown.push(text.finish()) + shown.finish()
        pieces.append(rest)
        sys.stdout.write(rest)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return "".join(pieces).strip()
