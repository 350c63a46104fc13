"""DDP on the CPU: 2 processes (gloo) take the gradient of the mean over both ranks' tokens, and
with accumulation 1 train like 1 process with accumulation 2."""

from __future__ import annotations

import multiprocessing

import pytest
import torch
from train_helpers import (
    ONE_STEP,
    assert_resume_is_exact,
    capture_gradients,
    curves,
    mean_loss_gradients,
    padded_micro_batches,
    run_cli,
    set_args,
    small_gpt,
    torchrun_train,
)

from scratchllm.train import TrainConfig, Trainer
from scratchllm.train.distributed import DistributedContext
from scratchllm.train.metrics import read_metrics


def _one_step_on_rank(rank: int, tmp_path) -> None:
    """Rank ``rank`` of 2 (gloo): one step over its two micro-batches; saves the gradients it applies."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=rank, world_size=2)
    try:
        model = small_gpt()
        mine = padded_micro_batches(4)[2 * rank : 2 * rank + 2]
        trainer = Trainer(model, iter(mine), tmp_path / "run", settings=TrainConfig(grad_accum_steps=2, **ONE_STEP),
                          progress=False, dist=DistributedContext(rank=rank, local_rank=rank, world_size=2))
        grads = capture_gradients(trainer, model)
        trainer.fit()
        torch.save(grads, tmp_path / f"grads-{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_accumulating_take_the_gradient_of_the_mean_over_all_their_tokens(tmp_path):
    # forked, not spawned: the ranks start in milliseconds instead of importing torch again
    ranks = [multiprocessing.get_context("fork").Process(target=_one_step_on_rank, args=(r, tmp_path))
             for r in range(2)]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(120)
        if p.exitcode is None:
            p.kill()
    assert [p.exitcode for p in ranks] == [0, 0]
    # Oracle: one process, torch's mean cross-entropy over all four micro-batches (of unequal
    # scored counts, across micro-batches and across ranks) at once.
    loss, expected = mean_loss_gradients(small_gpt(), padded_micro_batches(4))
    for rank in range(2):
        grads = torch.load(tmp_path / f"grads-{rank}.pt")
        assert grads.keys() == expected.keys()
        for name, g in expected.items():
            torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-7, msg=f"rank {rank}: {name}")
    (record,) = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert record["loss"] == pytest.approx(loss, rel=1e-5)


def test_two_ranks_equal_one_process_accumulating_two(tiny_data, tmp_path):
    common = ["--data", str(tiny_data), "--quiet",
              *set_args("train.max_steps=30", "train.eval_interval=10", "train.checkpoint_interval=10")]
    single = run_cli("train", "--out", str(tmp_path / "one"), *common, "--set", "train.grad_accum_steps=2")
    assert single.returncode == 0, single.stderr
    ddp = torchrun_train("--out", str(tmp_path / "two"), *common, "--set", "train.grad_accum_steps=1")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one_train, one_val = curves(tmp_path / "one")
    two_train, two_val = curves(tmp_path / "two")
    assert len(one_train) == len(two_train) == 30 and len(one_val) == len(two_val) == 4
    assert two_train == pytest.approx(one_train, rel=1e-4)
    assert two_val == pytest.approx(one_val, rel=1e-4)
    assert two_train[-1] < two_train[0] - 0.5  # it did learn



def test_two_ranks_with_dropout_resume_exactly(tiny_data, tmp_path):
    # constant learning rate, so stopping at step 10 and extending to 20 follows the same schedule
    common = ["--quiet", *set_args("model.dropout=0.3", "train.warmup_steps=0", "train.min_lr=3e-3",
                                   "train.eval_interval=5")]
    assert_resume_is_exact(tiny_data, tmp_path, common)


def test_a_torchrun_launch_into_a_run_folder_in_use_stops_on_every_rank(tiny_data, tmp_path):
    import os

    from scratchllm.fileio import exclusive_lock

    run = tmp_path / "run"
    with exclusive_lock(run):  # another scratchllm process (this one) writes there
        result = torchrun_train("--data", str(tiny_data), "--out", str(run), "--quiet", *set_args("train.max_steps=3"))
        assert sorted(p.name for p in run.iterdir()) == [".scratchllm.lock"]  # nothing written beside the lock
    assert result.returncode != 0
    assert f"is in use by pid {os.getpid()}" in result.stderr
    assert "is in use by another process (rank 0 could not lock it)" in result.stderr  # rank 1's line
    assert "]: Traceback" not in result.stderr  # no rank shows one (torchrun's own summary follows)
