"""FSDP on the CPU (gloo, 2 processes): sharded training takes the same steps as DDP and as one
process accumulating two micro-batches, resumes exactly, and its checkpoints load in one process."""

from __future__ import annotations

import pytest
import torch
from train_helpers import assert_resume_is_exact, curves, run_cli, set_args, torchrun_train

from scratchllm.checkpoint import list_checkpoints, load_checkpoint, read_optimizer_state
from scratchllm.data.batches import SlidingWindows
from scratchllm.data.shards import open_prepared
from scratchllm.train.evaluation import score_windows, text_token_bytes


def test_sharded_training_equals_ddp_and_one_process_accumulating(tiny_data, tmp_path):
    common = ["--data", str(tiny_data), *set_args("train.max_steps=20", "train.eval_interval=10",
                                                  "train.sample_tokens=8")]
    single = run_cli("train", "--out", str(tmp_path / "one"), "--quiet", *common, "--set", "train.grad_accum_steps=2")
    assert single.returncode == 0, single.stderr
    ddp = torchrun_train("--out", str(tmp_path / "ddp"), "--quiet", *common)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    # not --quiet: the samples after each evaluation need every rank's forward pass under FSDP
    fsdp = torchrun_train("--out", str(tmp_path / "fsdp"), *common, "--set", "train.parallel=fsdp")
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    assert "    | " in fsdp.stdout + fsdp.stderr  # the sample was shown
    one, two, sharded = curves(tmp_path / "one"), curves(tmp_path / "ddp"), curves(tmp_path / "fsdp")
    assert len(sharded[0]) == 20 and len(sharded[1]) == 3
    assert sharded[0] == pytest.approx(two[0], rel=1e-4) and sharded[1] == pytest.approx(two[1], rel=1e-4)
    assert sharded[0] == pytest.approx(one[0], rel=1e-4) and sharded[1] == pytest.approx(one[1], rel=1e-4)
    assert sharded[0][-1] < sharded[0][0] - 0.5  # it did learn

    # the 2-rank checkpoint is an ordinary one: one process loads it and scores the validation
    # windows as the sharded run did at its last step (the same logits, so the same loss)
    model, _ = load_checkpoint(tmp_path / "fsdp")
    data = open_prepared(tiny_data)
    windows = SlidingWindows(data.val, 16, 16, 4, name="the validation split")
    score = score_windows(model, windows, text_token_bytes(data.tokenizer, data.vocab_size), max_batches=4)
    assert score.loss == pytest.approx(sharded[1][-1], rel=1e-5)
    # and its optimizer state is the unsharded one, as one process writes it: the same AdamW moments
    sharded_state, single_state = (read_optimizer_state(list_checkpoints(tmp_path / run)[-1])
                                   for run in ("fsdp", "one"))
    assert sharded_state["param_groups"] == single_state["param_groups"]
    assert sharded_state["state"].keys() == single_state["state"].keys()
    for i, moments in single_state["state"].items():
        for key, value in moments.items():
            torch.testing.assert_close(sharded_state["state"][i][key], value, rtol=1e-3, atol=1e-6, msg=f"{i} {key}")


def test_sharded_training_resumes_exactly_and_a_sharded_run_resumes_in_one_process(tiny_data, tmp_path):
    common = ["--quiet", *set_args("train.warmup_steps=0", "train.min_lr=3e-3", "train.eval_interval=5",
                                   "train.parallel=fsdp")]
    assert_resume_is_exact(tiny_data, tmp_path, common)

    # resharding: the 2-rank run continues in one process from the same weights and AdamW state
    alone = run_cli("train", "--resume", str(tmp_path / "whole"), "--quiet", "--set", "train.max_steps=22")
    assert alone.returncode == 0, alone.stderr[-3000:]
    losses, _ = curves(tmp_path / "whole")
    assert len(losses) == 22 and all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.5


def test_activation_checkpointing_leaves_ddp_and_fsdp_training_unchanged(tiny_data, tmp_path):
    common = ["--data", str(tiny_data), "--quiet", *set_args("train.max_steps=10", "train.eval_interval=5")]
    for parallel in ("ddp", "fsdp"):
        runs = {}
        for flag in ("false", "true"):
            out = tmp_path / f"{parallel}-{flag}"
            result = torchrun_train("--out", str(out), *common, "--set", f"train.parallel={parallel}",
                                    "--set", f"train.activation_checkpointing={flag}")
            assert result.returncode == 0, result.stderr[-3000:]
            runs[flag] = curves(out)
        assert len(runs["true"][0]) == 10
        assert runs["true"] == runs["false"]  # recomputation gives the same floats
