"""AdamW parameter groups and the warmup + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from scratchllm.train.optim import lr_at, make_optimizer, param_groups


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.norm = nn.LayerNorm(4)
        self.proj = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight


def test_weight_decay_on_matrices_only_and_tied_weights_once():
    model = Tied()
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = lambda group: {id(p) for p in group["params"]}  # noqa: E731
    assert ids(decay) == {id(model.emb.weight), id(model.proj.weight)}
    assert ids(no_decay) == {id(model.norm.weight), id(model.norm.bias), id(model.proj.bias)}


def test_fused_adamw_matches_the_reference_implementation():
    torch.manual_seed(0)
    a, b = Tied(), Tied()
    b.load_state_dict(a.state_dict())
    fused = make_optimizer(a, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.99), device_type="cpu")
    reference = torch.optim.AdamW(param_groups(b, 0.1), lr=1e-2, betas=(0.9, 0.99), foreach=False)
    assert fused.defaults["fused"]
    for _ in range(5):
        x = torch.randint(0, 10, (3, 7))
        for model, opt in ((a, fused), (b, reference)):
            model.head(model.proj(model.norm(model.emb(x)))).square().mean().backward()
            opt.step()
            opt.zero_grad()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("warmup", [0, 1, 10])
def test_schedule_warms_up_linearly_then_decays_to_the_floor(warmup):
    kw = dict(max_lr=1e-3, min_lr=1e-4, warmup_steps=warmup, max_steps=100)
    lrs = [lr_at(s, **kw) for s in range(100)]
    for s in range(warmup):
        assert lrs[s] == pytest.approx(1e-3 * (s + 1) / warmup)
    assert max(lrs) == pytest.approx(1e-3)
    assert lrs[max(warmup - 1, 0)] == pytest.approx(1e-3)
    decay = lrs[max(warmup - 1, 0):]
    assert all(x >= y for x, y in zip(decay, decay[1:], strict=False))
    assert lrs[-1] == pytest.approx(1e-4)
    mid = max(warmup - 1, 0) + (99 - max(warmup - 1, 0)) / 2  # cosine midpoint = mean of max and min
    if mid.is_integer():
        assert lrs[int(mid)] == pytest.approx(5.5e-4)
    assert all(math.isfinite(x) for x in lrs)
    assert lr_at(500, **kw) == pytest.approx(1e-4)  # past the end: stays at the floor
