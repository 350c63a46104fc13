"""Distillation against training from scratch: the same student, the same steps and data.

A teacher (the baby-shakespeare preset) is trained on byte-level Tiny Shakespeare; then a student
a quarter its width is trained twice for the same steps, once on the next-token loss alone and
once distilled from the teacher (``scratchllm.compress.distill``, T = 2, alpha = 0.5). All three
are scored on the validation split with the one bits-per-byte definition (``scratchllm eval``'s).

    flock /tmp/scratchllm-cpu.lock .venv/bin/python benchmarks/distill.py [--text tinyshakespeare.txt]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from reference_files import tinyshakespeare

from scratchllm.checkpoint import load_checkpoint
from scratchllm.compress.distill import DistillationLoss
from scratchllm.data.shards import open_prepared, prepare
from scratchllm.train import load_run_config, score_tokens, train

COMMON = ["train.eval_interval=0", "train.sample_tokens=0", "train.plot=false", "train.precision=fp32"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", type=Path, default=None, help="Tiny Shakespeare (default: fetched into the cache)")
    parser.add_argument("--teacher-steps", type=int, default=1000)
    parser.add_argument("--student-steps", type=int, default=600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = prepare(tinyshakespeare(args.text), Path(tmp) / "bytes", vocab_size=257, workers=1)
        data = open_prepared(data_dir)
        base = {"model": {"vocab_size": data.vocab_size}, "data": {"dir": str(data_dir)}}

        def run(name: str, preset: str, steps: int, extra: list[str], loss=None) -> tuple[float, float, int]:
            config = load_run_config(preset, overrides=[*COMMON, f"train.max_steps={steps}", *extra], base=base)
            start = time.perf_counter()
            train(config, Path(tmp) / name, progress=False, **({"loss": loss} if loss else {}))
            seconds = time.perf_counter() - start
            model, tokenizer = load_checkpoint(Path(tmp) / name)
            bpb = score_tokens(model, data.val, tokenizer, batch_size=16).bits_per_byte
            return bpb, seconds, sum(p.numel() for p in model.parameters())

        teacher_bpb, teacher_s, n_teacher = run("teacher", "baby-shakespeare", args.teacher_steps, [])
        teacher, _ = load_checkpoint(Path(tmp) / "teacher")
        student = ["model.n_layers=2", "model.d_model=64", "model.n_heads=2"]
        scratch_bpb, scratch_s, n_student = run("scratch", "baby-shakespeare", args.student_steps, student)
        distilled_bpb, distilled_s, _ = run("distilled", "baby-shakespeare", args.student_steps, student,
                                         DistillationLoss(teacher, temperature=2.0, alpha=0.5))
    print(f"byte-level Tiny Shakespeare, validation split; teacher {args.teacher_steps} steps, "
          f"students {args.student_steps} steps")
    print("| model | parameters | steps | train time | val bits/byte |")
    print("|---|---:|---:|---:|---:|")
    print(f"| teacher (baby-shakespeare, 4x128) | {n_teacher:,} | {args.teacher_steps} | {teacher_s:.0f} s "
          f"| {teacher_bpb:.4f} |")
    print(f"| student from scratch (2x64) | {n_student:,} | {args.student_steps} | {scratch_s:.0f} s "
          f"| {scratch_bpb:.4f} |")
    print(f"| student distilled (2x64, T=2, alpha=0.5) | {n_student:,} | {args.student_steps} | {distilled_s:.0f} s "
          f"| {distilled_bpb:.4f} |")


if __name__ == "__main__":
    main()
