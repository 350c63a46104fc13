"""Activation checkpointing: the same gradients as without it (dropout included), from a second
forward of each block during backward."""

from __future__ import annotations

import torch
from train_helpers import mean_loss_gradients, padded_micro_batches

from scratchllm.model import GPT, GPTConfig
from scratchllm.train.activations import checkpoint_blocks


def _gpt(dropout: float) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, context_length=16, d_model=32, n_heads=2, n_layers=2, dropout=dropout))


def test_checkpointed_blocks_give_the_same_gradients_and_recompute_in_backward():
    for dropout in (0.0, 0.2):
        plain, checkpointed = _gpt(dropout), checkpoint_blocks(_gpt(dropout))
        batches = padded_micro_batches(2)
        torch.manual_seed(1)
        loss, grads = mean_loss_gradients(plain, batches)
        calls: list[int] = []
        # a pre-hook: the recomputation stops as soon as backward has what it needs, inside ff
        checkpointed.trf_blocks[0].ff.register_forward_pre_hook(lambda *_, seen=calls: seen.append(1))
        torch.manual_seed(1)
        loss_ckpt, grads_ckpt = mean_loss_gradients(checkpointed, batches)
        assert len(calls) == 2  # the forward, then the recomputation in backward
        assert loss_ckpt == loss
        for name, grad in grads.items():
            torch.testing.assert_close(grads_ckpt[name], grad, rtol=0, atol=1e-7, msg=name)
        assert checkpointed.state_dict().keys() == plain.state_dict().keys()


def test_no_recomputation_without_gradients():
    model = checkpoint_blocks(_gpt(0.0)).eval()
    calls: list[int] = []
    model.trf_blocks[0].ff.register_forward_pre_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model(torch.zeros(1, 4, dtype=torch.long))
    assert len(calls) == 1
