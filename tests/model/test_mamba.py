"""The Mamba layer: the parallel scan against the recurrence written out (float64, outputs and
gradients), the whole layer against a token-by-token loop, and generation through its state
(cached equals uncached, in the GPT and in the engine with sequences joining and leaving)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sharp_models import sharp_model

from scratchllm.errors import ScratchLLMError
from scratchllm.generate import generate
from scratchllm.inference import Engine, SamplingSettings
from scratchllm.interop import save_hf_gpt2
from scratchllm.model import GPT, GPTConfig
from scratchllm.model.mamba import MambaMixer, MambaState, linear_scan, selective_scan

HYBRID = dict(attention=["mamba", "multihead"], pos_encoding="rope")  # layer 0 mamba, layer 1 attention
PURE = dict(block="mamba", pos_encoding="none")  # the paper's stack: mamba blocks only, no positions
STACKS = {"hybrid": HYBRID, "pure": PURE}


def recurrence(x, delta, A, B, C, D, h0):
    """The oracle: h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t, y_t = C_t . h_t + D x_t, one t at a time."""
    h, ys = h0, []
    for t in range(x.shape[1]):
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * x[:, t])[:, :, None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1) + D * x[:, t])
    return torch.stack(ys, dim=1), h


def scan_inputs(T, seed=0, batch=2, d_inner=3, d_state=4):
    gen = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64)
    return dict(
        x=torch.randn(batch, T, d_inner, generator=gen, **f64),
        delta=F.softplus(torch.randn(batch, T, d_inner, generator=gen, **f64)),
        A=-torch.rand(d_inner, d_state, generator=gen, **f64) * 2,
        B=torch.randn(batch, T, d_state, generator=gen, **f64),
        C=torch.randn(batch, T, d_state, generator=gen, **f64),
        D=torch.randn(d_inner, generator=gen, **f64),
        h0=torch.randn(batch, d_inner, d_state, generator=gen, **f64),
    )


@pytest.mark.parametrize("T", [1, 2, 7, 16, 33])
def test_the_parallel_scan_equals_the_recurrence_in_outputs_and_gradients(T):
    inputs = {k: v.requires_grad_() for k, v in scan_inputs(T).items()}
    weights = torch.randn(2, T, 3, dtype=torch.float64)  # a loss that weighs every output differently
    last_weights = torch.randn(2, 3, 4, dtype=torch.float64)
    results = {}
    for name, fn in (("scan", selective_scan), ("loop", recurrence)):
        y, h = fn(**inputs)
        loss = (y * weights).sum() + (h * last_weights).sum()
        results[name] = (y, h, torch.autograd.grad(loss, list(inputs.values())))
    (y, h, grads), (y_ref, h_ref, grads_ref) = results["scan"], results["loop"]
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-12)
    for name, g, g_ref in zip(inputs, grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-11, msg=name)


def test_the_scan_gradient_equals_finite_differences():
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(2, 11, 3, generator=gen, dtype=torch.float64).requires_grad_()
    b = torch.randn(2, 11, 3, generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(linear_scan, (a, b))


def mixer_by_recurrence(m: MambaMixer, u: torch.Tensor) -> torch.Tensor:
    """The whole layer one token at a time: the convolution as a sum over its taps, the state step by step."""
    xs, z = m.in_proj(u).chunk(2, dim=-1)
    w, K = m.conv1d.weight[:, 0, :], m.d_conv  # (d_inner, K): tap j reads the input K - 1 - j positions back
    A = -torch.exp(m.A_log)
    h = torch.zeros(u.shape[0], m.d_inner, m.d_state, dtype=u.dtype)
    outs = []
    for t in range(u.shape[1]):
        conv = m.conv1d.bias + sum(w[:, j] * xs[:, t - (K - 1) + j] for j in range(K) if t - (K - 1) + j >= 0)
        xt = conv * torch.sigmoid(conv)
        dt, Bt, Ct = m.x_proj(xt).split([m.dt_rank, m.d_state, m.d_state], dim=-1)
        delta = torch.log1p(torch.exp(m.dt_proj(dt) + m.dt_bias))
        h = torch.exp(delta[:, :, None] * A) * h + (delta * xt)[:, :, None] * Bt[:, None, :]
        y = (h * Ct[:, None, :]).sum(-1) + m.D * xt
        outs.append(m.out_proj(y * z[:, t] * torch.sigmoid(z[:, t])))
    return torch.stack(outs, dim=1)


def test_the_layer_equals_its_recurrence_token_by_token_in_outputs_and_gradients():
    torch.manual_seed(0)
    m = MambaMixer(GPTConfig.preset("tiny", d_model=16, ssm_state=4, ssm_conv=3)).double()
    u = torch.randn(2, 13, 16, dtype=torch.float64, requires_grad=True)
    params = [u, *m.parameters()]
    out, ref = m(u), mixer_by_recurrence(m, u)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum(), params)
    grads_ref = torch.autograd.grad((ref * weights).sum(), params)
    for name, g, g_ref in zip(["input", *dict(m.named_parameters())], grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("stack", STACKS)
def test_cached_logits_equal_uncached_through_chunks_and_single_tokens(stack):
    model = sharp_model(**STACKS[stack])
    idx = torch.randint(0, 512, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache(2, 32)
        pieces = [model(idx[:, a:b], cache=cache) for a, b in ((0, 7), (7, 8), (8, 11), (11, 12), (12, 20))]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-4)
    assert cache.length == 20


@pytest.mark.parametrize("stack", STACKS)
def test_generate_with_the_state_equals_the_recompute_loop(stack):
    model = sharp_model(**STACKS[stack])
    prompt = torch.randint(0, 512, (2, 6), generator=torch.Generator().manual_seed(3))
    cached = generate(model, prompt, 25, use_cache=True)
    assert torch.equal(cached, generate(model, prompt, 25, use_cache=False))
    assert len(set(cached[0, 6:].tolist())) > 3  # not one token repeated: the comparison has teeth


def alone(model, prompt, s: SamplingSettings):
    return generate(model, [prompt], s.max_new_tokens, s.temperature, s.top_k, s.top_p, s.stop_ids, s.seed,
                    use_cache=False)[0]


@pytest.mark.parametrize("stack", STACKS)
def test_the_engine_with_sequences_joining_and_leaving_equals_each_alone(stack):
    """Two slots for five sequences: slots are reused (their state cleared), rows move when one
    leaves, a one-token prompt decodes from an empty state beside longer rows, prefill is chunked."""
    model = sharp_model(**STACKS[stack])
    schedule = {
        0: [([5, 9, 400, 2], SamplingSettings(7)), ([7], SamplingSettings(12, temperature=1.1, seed=3))],
        2: [([3, 3, 3, 8, 100, 200, 300, 11, 12], SamplingSettings(4, temperature=0.9, top_p=0.8, seed=1))],
        3: [([42], SamplingSettings(6)), ([17, 1, 2, 300, 5, 6], SamplingSettings(5, temperature=1.0, seed=5))],
    }
    engine = Engine(model, max_batch=2, max_len=32, prefill_chunk=3)
    got, sids, step = {}, {}, 0
    while step <= max(schedule) or engine.active:
        for prompt, settings in schedule.get(step, []):
            sid = engine.add(prompt, settings)
            sids[sid], got[sid] = (prompt, settings), list(prompt)
        for event in engine.step():
            got[event.sid].append(event.token)
        step += 1
    assert len(got) == 5
    for sid, (prompt, settings) in sids.items():
        assert got[sid] == alone(model, prompt, settings), sid


def test_the_state_is_the_same_size_for_any_text_length():
    model = sharp_model(**PURE)
    short, long = model.new_cache(1, 16), model.new_cache(1, 4096)
    assert [layer.nbytes for layer in short.layers] == [layer.nbytes for layer in long.layers]
    d_inner, d_state, d_conv = 2 * 64, 16, 4
    assert all(isinstance(layer, MambaState) for layer in long.layers)
    assert long.layers[0].nbytes == 4 * (d_inner * d_state + d_inner * (d_conv - 1))
    state = sum(layer.nbytes for layer in long.layers)  # the state of every layer, not one grows
    assert model.memory_estimate(seq_len=16)["kv_cache"] == model.memory_estimate(seq_len=4096)["kv_cache"] == state
    hybrid = sharp_model(**HYBRID)  # only the attention layer's keys and values grow with the text
    mamba_state = long.layers[0].nbytes
    assert hybrid.memory_estimate(seq_len=100)["kv_cache"] == mamba_state + 100 * 2 * 64 * 4
    assert hybrid.memory_estimate(seq_len=100, bytes_per_value=2)["kv_cache"] == (mamba_state + 100 * 2 * 64 * 4) // 2


def test_a_hybrid_pattern_puts_mamba_and_attention_layers_where_it_says():
    model = GPT(GPTConfig.preset("tiny", n_layers=4, attention=["mamba", "mamba", "multihead"]))
    kinds = [type(block.attention).__name__ for block in model.trf_blocks]
    assert kinds == ["MambaMixer", "MambaMixer", "MultiHeadAttention", "MambaMixer"]
    pure = GPT(GPTConfig.preset("tiny", block="mamba"))
    assert not any(hasattr(block, "ff") for block in pure.trf_blocks)  # the paper's block: no feed-forward


def test_mamba_keeps_its_step_size_initialisation_and_trains():
    model = GPT(GPTConfig.preset("tiny", block="mamba", pos_encoding="none"))
    delta = F.softplus(model.trf_blocks[0].mixer.dt_bias)
    assert 0.001 <= delta.min() and delta.max() <= 0.1  # GPT.init_weights zeroes Linear biases, not this one
    idx = torch.randint(0, 512, (2, 16))
    F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_bad_settings_and_gpt2_export_are_one_line_errors(tmp_path):
    with pytest.raises(ScratchLLMError, match="ssm_state must be a positive integer"):
        GPTConfig.preset("tiny", attention="mamba", ssm_state=0)
    with pytest.raises(ScratchLLMError, match="ssm_conv"):
        GPTConfig.preset("tiny", block="mamba", ssm_conv=0)
    with pytest.raises(ScratchLLMError, match=r"attention='mambaa' is not one of .*'mamba'"):
        GPTConfig(attention="mambaa")
    with pytest.raises(ScratchLLMError, match=r"GPT-2 has no attention='mamba'.*needs attention='multihead'"):
        save_hf_gpt2(GPT(GPTConfig.preset("tiny", attention=["mamba", "multihead"])), tmp_path / "hf")
    with pytest.raises(ScratchLLMError, match=r"GPT-2 has no block='mamba'.*needs block='pre_norm'"):
        save_hf_gpt2(GPT(GPTConfig.preset("tiny", block="mamba", pos_encoding="learned")), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
