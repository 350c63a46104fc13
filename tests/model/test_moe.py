"""The mixture-of-experts feed-forward: dispatch against every expert run on every token and mixed
by a dense gate matrix; the capacity factor against a count kept by hand; the Switch balance loss
and the router z-loss against their formulas, through the trainer, with the per-expert load logged."""

from __future__ import annotations

import math

import pytest
import torch
from sharp_models import sharp_model

from scratchllm.errors import ScratchLLMError
from scratchllm.generate import generate
from scratchllm.interop import save_hf_gpt2
from scratchllm.model import GPT, GPTConfig
from scratchllm.model.moe import MixtureOfExperts
from scratchllm.train import TrainConfig, Trainer
from scratchllm.train.losses import next_token_loss
from scratchllm.train.metrics import read_metrics


def moe(seed=0, **overrides) -> MixtureOfExperts:
    torch.manual_seed(seed)
    config = GPTConfig.preset("tiny", d_model=16, ffn_hidden=24, ffn="moe", n_experts=4, **overrides)
    layer = MixtureOfExperts(config, layer_index=1)
    with torch.no_grad():
        layer.router.weight.normal_(0, 1.0)  # a router far from uniform, so the choices are clear-cut
    return layer


def dense_mixture(layer: MixtureOfExperts, x: torch.Tensor) -> torch.Tensor:
    """The oracle: every expert on every token, mixed by an (N, n_experts) gate matrix that is zero
    off each token's top k; the top k found by sorting each row's probabilities."""
    tokens = x.reshape(-1, x.shape[-1])
    probs = torch.softmax(tokens @ layer.router.weight.T, dim=-1)
    gates = torch.zeros_like(probs)
    for i, row in enumerate(probs):
        best = row.sort(descending=True).indices[: layer.top_k]
        gates[i, best] = row[best] / (row[best].sum() if layer.top_k > 1 else 1.0)
    everything = torch.stack([expert(tokens) for expert in layer.experts], dim=1)  # (N, E, d)
    return (gates[:, :, None] * everything).sum(dim=1).view(x.shape)


@pytest.mark.parametrize("expert", ["gelu", "swiglu"])
@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_the_dispatch_equals_every_expert_mixed_by_the_gates(top_k, expert):
    layer = moe(moe_top_k=top_k, moe_expert=expert)
    x = torch.randn(3, 7, 16)
    out = layer(x)
    torch.testing.assert_close(out, dense_mixture(layer, x), rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(out.square().sum(), list(layer.parameters()))
    grads_ref = torch.autograd.grad(dense_mixture(layer, x).square().sum(), list(layer.parameters()))
    for name, g, g_ref in zip(dict(layer.named_parameters()), grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6, msg=name)


def test_with_a_capacity_factor_overflow_assignments_are_dropped_first_choices_first():
    layer = moe(moe_top_k=2, moe_capacity=0.75).train()
    x = torch.randn(2, 10, 16)
    tokens = x.reshape(-1, 16)
    N = tokens.shape[0]
    capacity = math.ceil(0.75 * N * 2 / 4)  # 8 of the 40 assignments per expert
    probs = torch.softmax(tokens @ layer.router.weight.T, dim=-1)
    top_p, top_e = probs.topk(2, dim=-1)
    gates = top_p / top_p.sum(-1, keepdim=True)
    expected, taken, dropped = torch.zeros_like(tokens), [0] * 4, 0
    for choice in range(2):  # GShard's order: every token's first choice, then the second choices
        for i in range(N):
            e = int(top_e[i, choice])
            if taken[e] < capacity:
                taken[e] += 1
                expected[i] += gates[i, choice] * layer.experts[e](tokens[i])
            else:
                dropped += 1
    assert 8 <= dropped < 2 * N  # at least 40 - 4 * 8 overflow
    torch.testing.assert_close(layer(x).reshape(-1, 16), expected, rtol=1e-5, atol=1e-6)
    _, figures = layer.pop_auxiliary()
    assert float(figures["moe_dropped_l1"]) == pytest.approx(dropped / (2 * N))
    layer.eval()  # evaluation and generation are dropless
    torch.testing.assert_close(layer(x), dense_mixture(layer, x), rtol=1e-5, atol=1e-6)


def test_the_auxiliary_losses_are_switch_balance_and_router_z_and_only_in_training():
    layer = moe(moe_top_k=2).train()
    x = torch.randn(4, 6, 16)
    layer(x)
    losses, figures = layer.pop_auxiliary()
    losses = {name: (value.detach(), weight) for name, (value, weight) in losses.items()}
    logits = x.reshape(-1, 16) @ layer.router.weight.detach().T  # (24, 4)
    probs = logits.softmax(-1)
    chosen = probs.topk(2, dim=-1).indices
    f = torch.stack([(chosen == e).sum() for e in range(4)]).float() / chosen.numel()  # fraction of assignments
    balance, weight = losses["balance"]
    assert float(balance) == pytest.approx(4 * float((f * probs.mean(0)).sum()), rel=1e-5) and weight == 0.01
    z, z_weight = losses["router_z"]
    assert float(z) == pytest.approx(float((logits.exp().sum(-1).log() ** 2).mean()), rel=1e-5)
    assert z_weight == 0.001
    assert [float(figures[f"moe_load_l1_e{e}"]) for e in range(4)] == pytest.approx(f.tolist())
    assert layer.pop_auxiliary() == ({}, {})  # handed over once
    layer.eval()(x)
    assert layer.pop_auxiliary() == ({}, {})  # evaluation passes leave nothing


def test_the_loss_adds_the_weighted_auxiliary_losses_of_every_moe_layer():
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", n_layers=3, ffn=["moe", "gelu"], n_experts=4, moe_top_k=1)).train()
    x, y = torch.randint(0, 512, (2, 9)), torch.randint(0, 512, (2, 9))
    y[0, 5:] = -100  # padding: 14 units
    loss = next_token_loss(model, (x, y))
    layers = [b.ff for b in model.trf_blocks if isinstance(b.ff, MixtureOfExperts)]
    assert len(layers) == 2  # layers 0 and 2
    model(x)  # the same pass again (no dropout), read from the layers directly
    aux = [layer.pop_auxiliary()[0] for layer in layers]
    balance = sum(a["balance"][0].item() for a in aux)
    z = sum(a["router_z"][0].item() for a in aux)
    assert float(loss.terms["balance"].detach()) == pytest.approx(14 * balance, rel=1e-5)
    ce = float(loss.terms["ce"].detach())
    assert float(loss.total.detach()) == pytest.approx(ce + 14 * (0.01 * balance + 0.001 * z), rel=1e-6)
    assert {name for name in loss.metrics} == {f"moe_load_l{i}_e{e}" for i in (0, 2) for e in range(4)}
    router = layers[0].router.weight
    (g,) = torch.autograd.grad(loss.total, router)
    (g_ce,) = torch.autograd.grad(next_token_loss(model, (x, y)).terms["ce"], router)
    assert not torch.allclose(g, g_ce)  # the router also learns from the balance and z-losses


def test_the_trainer_logs_the_auxiliary_losses_and_the_load_of_every_expert(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", ffn="moe", n_experts=4, moe_top_k=2, vocab_size=64))
    gen = torch.Generator().manual_seed(0)
    batches = iter(lambda: (torch.randint(0, 64, (4, 16), generator=gen),) * 2, None)
    settings = TrainConfig(max_steps=3, warmup_steps=0, eval_interval=0, eval_at_start=False, precision="fp32",
                           peak_flops=1e11, plot=False, sample_tokens=0)
    Trainer(model, batches, tmp_path / "run", settings=settings, progress=False).fit()
    records = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert len(records) == 3
    for r in records:
        for layer in (0, 1):
            assert sum(r[f"moe_load_l{layer}_e{e}"] for e in range(4)) == pytest.approx(1.0)
        assert r["loss"] == pytest.approx(r["loss_ce"] + 0.01 * r["loss_balance"] + 0.001 * r["loss_router_z"])
        assert 0 < r["loss_balance"] <= 2 * 4 and r["loss_router_z"] > 0  # per layer: n_experts at worst


def test_generation_with_experts_is_the_same_cached_and_uncached():
    model = sharp_model("rope", ffn=["moe", "swiglu"], n_experts=4, moe_top_k=2)
    prompt = torch.randint(0, 512, (2, 5), generator=torch.Generator().manual_seed(1))
    assert torch.equal(generate(model, prompt, 20), generate(model, prompt, 20, use_cache=False))


def test_bad_settings_and_gpt2_export_are_one_line_errors(tmp_path):
    with pytest.raises(ScratchLLMError, match=r"moe_top_k=5 must be between 1 and n_experts=4"):
        GPTConfig.preset("tiny", ffn="moe", n_experts=4, moe_top_k=5)
    with pytest.raises(ScratchLLMError, match="moe_expert='moe' must be a feed-forward kind other than moe"):
        GPTConfig.preset("tiny", ffn="moe", moe_expert="moe")
    with pytest.raises(ScratchLLMError, match=r"moe_capacity must be > 0"):
        GPTConfig.preset("tiny", ffn="moe", moe_capacity=0.0)
    GPTConfig.preset("tiny", n_experts=4, moe_top_k=5)  # no MoE layer: its settings are not read
    with pytest.raises(ScratchLLMError, match=r"GPT-2 has no ffn='moe' \(layer 1 of its pattern\): .* ffn='gelu'"):
        save_hf_gpt2(GPT(GPTConfig.preset("tiny", ffn=["gelu", "moe"])), tmp_path / "hf")
