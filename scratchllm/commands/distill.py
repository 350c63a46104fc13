"""``scratchllm distill --teacher C --preset P --data D --out RUN``: train a student on a teacher's
distributions (knowledge distillation), with every setting and flag of ``scratchllm train``."""

from __future__ import annotations

import argparse
from pathlib import Path

DISTILL_FILE = "distill.json"  # the teacher and the loss settings, so that --resume needs no flags


def register(subparsers: argparse._SubParsersAction) -> None:
    from scratchllm.commands.train import add_run_arguments

    p = subparsers.add_parser(
        "distill",
        help="train a smaller student GPT from a trained teacher (knowledge distillation)",
        description="Train the student that --preset/--config/--set describe on prepared data, with the loss "
        "alpha * T^2 * KL(teacher || student at temperature T) + (1 - alpha) * cross-entropy "
        "(scratchllm/compress/distill.py). The data must use the teacher's tokenizer.",
    )
    p.add_argument("--teacher", metavar="CHECKPOINT", help="the teacher: a checkpoint or run folder (newest)")
    p.add_argument("--temperature", type=float, default=2.0, help="softens both distributions (default 2)")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the distillation term (default 0.5)")
    p.add_argument("--teacher-precision", choices=("fp32", "bf16"), default="fp32",
                   help="precision of the teacher's forward passes (default fp32)")
    add_run_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar or evaluation lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scratchllm.checkpoint import find_checkpoint, list_checkpoints, load_checkpoint
    from scratchllm.commands.train import report, resolve_run
    from scratchllm.compress.distill import DistillationLoss, check_pair
    from scratchllm.errors import ScratchLLMError
    from scratchllm.fileio import atomic_write_json, exclusive_lock, read_json
    from scratchllm.train import train

    config, run_dir = resolve_run(args)
    settings = {"teacher": args.teacher, "temperature": args.temperature, "alpha": args.alpha,
                "teacher_precision": args.teacher_precision}
    if args.resume and (run_dir / DISTILL_FILE).is_file():
        settings = read_json(run_dir / DISTILL_FILE, "start the run again with --out")
    if not settings["teacher"]:
        raise ScratchLLMError("give --teacher CHECKPOINT (a trained run or checkpoint folder)")
    teacher_path = find_checkpoint(settings["teacher"])
    teacher, _ = load_checkpoint(teacher_path)
    check_pair(teacher.config, config.model)
    loss = DistillationLoss(teacher, settings["temperature"], settings["alpha"], settings["teacher_precision"])
    with exclusive_lock(run_dir):  # distill.json and the run under one lock (the trainer's nests in it)
        if not args.resume:
            if list_checkpoints(run_dir):
                raise ScratchLLMError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, "
                                      "or choose another --out")
            atomic_write_json(run_dir / DISTILL_FILE, {**settings, "teacher": str(Path(teacher_path).resolve())})
        result = train(config, run_dir, resume=bool(args.resume), progress=not args.quiet, loss=loss)
    report(result, args.quiet)
    return 0
