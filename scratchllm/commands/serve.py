"""``scratchllm serve --checkpoint PATH|--model NAME``: an OpenAI-compatible server and a chat page for a model."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from scratchllm.commands._model import add_model_source


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a model over OpenAI's API (continuous batching) with a chat page",
        description="Serve --checkpoint (or pretrained --model weights) at http://HOST:PORT: /v1/completions, "
        "/v1/chat/completions (models with a chat template), /v1/models, /health, /metrics, and a chat page at /. "
        "Requests that arrive while others decode join the running batch at the next step. "
        "Binds to 127.0.0.1 unless --host says otherwise.",
    )
    add_model_source(p, "a checkpoint folder or a run folder (newest)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", default=os.environ.get("SCRATCHLLM_API_KEY"), metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on every route but /health and the page (default: "
                   "$SCRATCHLLM_API_KEY; unset = no key)")
    p.add_argument("--name", default=None,
                   help="the model's name in the API (default: the --checkpoint folder's name, or --model)")
    p.add_argument("--max-batch", type=int, default=16, metavar="N", help="sequences decoding at once (default 16)")
    p.add_argument("--max-queue", type=int, default=64, metavar="N",
                   help="sequences waiting for a slot before requests get 429 (default 64)")
    p.add_argument("--max-prompt-tokens", type=int, default=None, metavar="N", help="default: the context - 1")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="most new tokens per choice (default: the context - 1)")
    p.add_argument("--max-n", type=int, default=8, metavar="N", help="most choices per request (default 8)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, metavar="N", help="default 1 MiB")
    p.add_argument("--request-timeout", type=float, default=300.0, metavar="S", help="seconds (default 300)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads for the model (default: torch's choice; 1 is faster on a busy machine)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scratchllm.commands._model import load_model_source, source_name
    from scratchllm.errors import ScratchLLMError, check_range
    from scratchllm.finetune.templates import checkpoint_template
    from scratchllm.serve import ServeConfig, create_app, serve

    for name in ("port", "max_batch", "max_queue", "max_n", "max_body_bytes"):
        check_range(f"--{name.replace('_', '-')}", getattr(args, name), 0 if name in ("port", "max_queue") else 1)
    check_range("--request-timeout", args.request_timeout, 0, low_open=True)
    if args.threads is not None:
        import torch

        check_range("--threads", args.threads, 1)
        torch.set_num_threads(args.threads)
    # None: a base model, as pretrained GPT-2 weights are (its chat endpoint answers 400)
    template = checkpoint_template(args.checkpoint) if args.checkpoint else None
    model, tokenizer = load_model_source(args, decoding=True)
    if tokenizer is None:
        raise ScratchLLMError(f"{source_name(args)} holds no tokenizer, so prompts cannot be encoded")
    name = args.name or (Path(args.checkpoint).resolve().name if args.checkpoint else args.model)
    config = ServeConfig(model_name=name, max_batch=args.max_batch, max_queue=args.max_queue,
                         max_prompt_tokens=args.max_prompt_tokens, max_tokens=args.max_tokens, max_n=args.max_n,
                         max_body_bytes=args.max_body_bytes, request_timeout=args.request_timeout,
                         api_key=args.api_key or None)
    app = create_app(model, tokenizer, config, chat_template=template)
    where = f"[{args.host}]" if ":" in args.host else args.host
    chat = f"chat template {template.name!r}" if template else "no chat template: /v1/completions only"
    print(f"serving {name!r} at http://{where}:{args.port} (chat page at /, API at /v1; {chat})", file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not config.api_key:
        print("warning: listening beyond this machine without --api-key: anyone who reaches it can use it",
              file=sys.stderr)
    try:
        serve(app, args.host, args.port)
    except KeyboardInterrupt:  # Ctrl-C is how a server is stopped: uvicorn has shut down gracefully by now
        print("scratchllm serve: stopped", file=sys.stderr)
    return 0
