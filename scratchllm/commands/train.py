"""``scratchllm train``: train a GPT on prepared token shards, or resume a run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchLLMError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a GPT on prepared data (or --resume a run)",
        description="Train a GPT on token shards made by `scratchllm prepare`. Settings come from "
        "defaults <- --preset <- --config FILE.toml <- --set section.key=value; the resolved config is "
        "saved as RUN_DIR/config.toml. Under torchrun each process trains one data-parallel rank.",
    )
    add_run_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar or evaluation lines")
    p.set_defaults(func=run)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The settings of a run, shared by every command that trains (train, distill)."""
    from scratchllm.presets import PRESETS

    p.add_argument("--preset", choices=list(PRESETS), metavar="NAME",
                   help=f"a recipe to start from (scratchllm/presets.py): {', '.join(PRESETS)}")
    p.add_argument("--config", metavar="FILE", help="a TOML run config ([model], [train], [data] tables)")
    p.add_argument("--data", metavar="DATA_DIR", help="prepared data folder (scratchllm prepare --out)")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder: config.toml, metrics.jsonl, checkpoints/, loss.png")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest checkpoint "
                   "(--set may change train.max_steps, train.max_seconds and the evaluation/checkpoint settings)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. train.lr=3e-4 or model.n_layers=6 (repeatable)")


def run(args: argparse.Namespace) -> int:
    from scratchllm.train import train

    config, run_dir = resolve_run(args)
    result = train(config, run_dir, resume=bool(args.resume), progress=not args.quiet)
    report(result, args.quiet)
    return 0


def resolve_run(args: argparse.Namespace) -> tuple[Any, Path]:
    """The run config and folder that ``add_run_arguments``' flags name (a resumed run's saved config)."""
    from scratchllm.data.shards import open_prepared
    from scratchllm.train.config import RunConfig, explicit_settings, load_run_config, resume_config
    from scratchllm.train.loop import CONFIG_FILE

    if args.resume:
        run_dir = Path(args.resume)
        if args.out and Path(args.out) != run_dir:
            raise ScratchLLMError("give either --resume RUN_DIR or --out RUN_DIR, not two different folders")
        if not (run_dir / CONFIG_FILE).is_file():
            raise ScratchLLMError(f"{run_dir} is not a run folder (no {CONFIG_FILE}); start a run with --out")
        given = explicit_settings(args.preset, args.config, args.overrides)
        if args.data:
            given["data"]["dir"] = args.data
        config = resume_config(RunConfig.load(run_dir / CONFIG_FILE), given, run_dir)
        saved = Path(config.data.dir)
        if not saved.is_absolute() and not (saved / "manifest.json").is_file():  # runs saved before paths were absolute
            raise ScratchLLMError(f"{run_dir}'s data folder {saved} is relative to where the run started and is not "
                                  f"found from {Path.cwd()}: pass --data DATA_DIR")
    else:
        if not args.out:
            raise ScratchLLMError("give --out RUN_DIR for a new run (or --resume RUN_DIR to continue one)")
        run_dir = Path(args.out)
        data_dir = args.data or explicit_settings(args.preset, args.config, args.overrides)["data"].get("dir")
        if not data_dir:
            raise ScratchLLMError("give --data DATA_DIR (made by `scratchllm prepare`)")
        vocab_size = open_prepared(data_dir).vocab_size
        config = load_run_config(args.preset, args.config, args.overrides,
                                 base={"model": {"vocab_size": vocab_size}, "data": {"dir": str(data_dir)}})
        if not (args.preset or args.config or getattr(args, "quiet", False)):
            _say_what_it_builds(config)
    # absolute, so that --resume works from any folder
    config.data.dir = str(Path(config.data.dir).resolve())
    return config, run_dir


def report(result: Any, quiet: bool) -> None:
    """The line a finished run prints."""
    if not quiet:
        val = "" if result.val_loss is None else f", val loss {result.val_loss:.4f} (best {result.best_val_loss:.4f})"
        print(f"trained {result.step} steps, {result.tokens:,} tokens in {result.seconds:.1f} s{val}; "
              f"run folder {result.run_dir}")


def _say_what_it_builds(config: Any) -> None:
    """With no --preset or --config the defaults build GPT-2 small's shape: say so before minutes pass."""
    import sys

    import torch

    from scratchllm.model import GPT

    with torch.device("meta"):  # shapes only
        params = GPT(config.model).num_params()
    m = config.model
    print(f"no --preset or --config: training the default model, {params / 1e6:.0f}M parameters ({m.n_layers} layers, "
          f"d_model {m.d_model}, context {m.context_length}), slow on a CPU; for a first run pass --preset "
          "baby-shakespeare (the list: scratchllm/presets.py)", file=sys.stderr, flush=True)
