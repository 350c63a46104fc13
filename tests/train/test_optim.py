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


def test_the_optimizer_takes_the_adamw_steps_written_out():
    # Oracle: Loshchilov & Hutter's AdamW by hand, in float64: decoupled decay on matrices only,
    # bias-corrected moments, eps 1e-8 outside the square root.
    torch.manual_seed(0)
    model = Tied()
    lr, wd, b1, b2, eps = 1e-2, 0.1, 0.9, 0.99, 1e-8
    opt = make_optimizer(model, lr=lr, weight_decay=wd, betas=(b1, b2), device_type="cpu")
    assert opt.defaults["fused"]
    params = list(model.parameters())  # the tied matrix once
    theta = [p.detach().double().clone() for p in params]
    m = [torch.zeros_like(t) for t in theta]
    v = [torch.zeros_like(t) for t in theta]
    for t in range(1, 5):
        x = torch.randint(0, 10, (3, 7))
        model.head(model.proj(model.norm(model.emb(x)))).square().mean().backward()
        for i, p in enumerate(params):
            g = p.grad.double()
            decay = wd if p.dim() >= 2 else 0.0
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            theta[i] = theta[i] * (1 - lr * decay) - lr * (m[i] / (1 - b1**t)) / ((v[i] / (1 - b2**t)).sqrt() + eps)
        opt.step()
        opt.zero_grad()
        for p, expected in zip(params, theta, strict=True):
            torch.testing.assert_close(p.detach().double(), expected, rtol=1e-5, atol=1e-6)


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


@pytest.mark.parametrize(("warmup", "steps"), [(5, 5), (5, 3), (1, 1), (0, 1)])
def test_a_schedule_with_no_room_to_decay_stays_at_the_peak(warmup, steps):
    # max_steps <= warmup_steps: the run ends inside the warmup (or at its last step), and a resumed
    # run that goes on past max_steps keeps the peak rather than dividing by a cosine of length 0.
    kw = dict(max_lr=1e-3, min_lr=1e-4, warmup_steps=warmup, max_steps=steps)
    for s in range(warmup, warmup + 3):
        assert lr_at(s, **kw) == 1e-3


def test_a_one_step_decay_ends_at_the_floor():
    kw = dict(max_lr=1e-3, min_lr=1e-4, warmup_steps=5, max_steps=6)  # the peak at update 4, the floor at 5
    assert [lr_at(s, **kw) for s in range(4, 8)] == pytest.approx([1e-3, 1e-4, 1e-4, 1e-4])
