"""Exact resume for the research parts: a hybrid stack of Mamba and attention layers with
mixture-of-experts feed-forwards, stopped by a crash after a checkpoint, continues to the losses,
auxiliary terms, expert loads and weights of the run that never stopped, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scratchllm.checkpoint import load_checkpoint
from scratchllm.data.batches import RandomBatches
from scratchllm.model import GPT, GPTConfig
from scratchllm.train import TrainConfig, Trainer
from scratchllm.train.metrics import read_metrics

TIMING = {"tokens_per_s", "mfu"}  # wall-clock figures, the only ones allowed to differ


class Crash(Exception):
    pass


class CrashAfter:
    """Batches that stop the process (an exception) once ``n`` have been taken; resumable."""

    def __init__(self, batches: RandomBatches, n: int | None) -> None:
        self.batches, self.n = batches, n

    def __next__(self):
        if self.n is not None and self.batches.step >= self.n:
            raise Crash
        return next(self.batches)

    def state_dict(self):
        return self.batches.state_dict()

    def load_state_dict(self, state) -> None:
        self.batches.load_state_dict(state)


def trainer(run_dir, crash_after=None) -> Trainer:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=64, context_length=16, d_model=32, n_heads=2, n_layers=3, dropout=0.1,
                       attention=["mamba", "multihead"], ffn=["moe", "gelu"], n_experts=4, moe_top_k=2,
                       moe_capacity=1.0, ssm_state=4)
    tokens = np.random.default_rng(0).integers(0, 64, size=2000).astype(np.uint16)
    batches = CrashAfter(RandomBatches(tokens, 4, 16, seed=1), crash_after)
    settings = TrainConfig(max_steps=8, checkpoint_interval=4, eval_interval=0, eval_at_start=False, warmup_steps=2,
                           lr=3e-3, precision="fp32", peak_flops=1e11, plot=False, sample_tokens=0)
    return Trainer(GPT(config), batches, run_dir, settings=settings, progress=False)


def test_a_crashed_hybrid_moe_run_resumes_bit_identically(tmp_path):
    trainer(tmp_path / "whole").fit()
    with pytest.raises(Crash):
        trainer(tmp_path / "crashed", crash_after=5).fit()  # dies at step 6, after the checkpoint of step 4
    trainer(tmp_path / "crashed").fit(resume=True)

    def records(run):
        return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(tmp_path / run)]

    whole = records("whole")
    assert len(whole) == 8 and {"loss_balance", "loss_router_z", "moe_load_l0_e3", "moe_dropped_l2"} <= set(whole[0])
    assert records("crashed") == whole  # exact float equality
    a, _ = load_checkpoint(tmp_path / "whole")
    b, _ = load_checkpoint(tmp_path / "crashed")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
