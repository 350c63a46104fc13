"""``scratchllm model info --preset NAME``: sizes of a model shape, before building it."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from scratchllm.presets import PRESETS

    p = subparsers.add_parser("model", help="facts about a model shape", description=__doc__)
    sub = p.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    info = sub.add_parser(
        "info",
        help="parameters, FLOPs per token and memory of a preset",
        description="Print the parameter count (untied and tied embeddings), FLOPs per token and memory "
        "estimates of a preset, optionally with fields overridden (--set model.n_layers=6).",
    )
    info.add_argument("--preset", required=True, metavar="NAME",
                      help=f"a recipe of scratchllm/presets.py: {', '.join(PRESETS)}")
    info.add_argument("--set", action="append", default=[], metavar="model.KEY=VALUE", dest="overrides",
                      help="override a model field as `train` does (repeatable), e.g. --set model.pos_encoding=rope")
    info.add_argument("--batch-size", type=int, default=1, help="sequences for the KV cache and activations")
    info.set_defaults(func=run_info)


def run_info(args: argparse.Namespace) -> int:
    import torch

    from scratchllm.errors import ScratchLLMError, check_range
    from scratchllm.model import GPT, GPTConfig
    from scratchllm.train.config import parse_override

    check_range("--batch-size", args.batch_size, 1)
    overrides = {}
    for item in args.overrides:
        section, key, value = parse_override(item)
        if section != "model":
            raise ScratchLLMError(f"--set {item}: `model info` takes model.KEY=VALUE settings only")
        overrides[key] = value
    config = GPTConfig.preset(args.preset, **overrides)
    with torch.device("meta"):  # shapes only: even gpt2-xl costs no memory here
        model = GPT(config)
        other = GPT(GPTConfig.from_dict({**config.to_dict(), "tie_embeddings": not config.tie_embeddings}))
    untied, tied = (other, model) if config.tie_embeddings else (model, other)
    T = config.context_length
    mem = model.memory_estimate(batch_size=args.batch_size)
    print(f"preset {args.preset}: " + ", ".join(f"{k}={v}" for k, v in config.to_dict().items()))
    print(f"parameters       {untied.num_params():>15,} untied   {tied.num_params():>15,} tied embeddings")
    print(f"  non-embedding  {model.num_params(non_embedding=True):>15,}")
    print(f"FLOPs per token  {model.flops_per_token(training=True):>15,} training (6N + 12 L d T, T={T})")
    print(f"                 {model.flops_per_token(training=False):>15,} forward")
    print(f"memory (float32, this model{', tied' if config.tie_embeddings else ', untied'}):")
    print(f"  weights        {_size(mem['weights'])} ({_size(mem['weights'] // 2)} in bfloat16)")
    print(f"  training state {_size(mem['training_state'])} (weights, gradients, AdamW moments)")
    print(f"  KV cache       {_size(mem['kv_cache'])} ({args.batch_size} x {T} tokens)")
    print(f"  activations    {_size(mem['activations'])} (training, {args.batch_size} x {T} tokens, approximate)")
    return 0


def _size(n: float) -> str:
    return f"{n / 1e9:,.2f} GB" if n >= 1e9 else f"{n / 1e6:,.1f} MB"
