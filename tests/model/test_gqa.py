"""Grouped-query and multi-query attention, added through the registry as one new part."""

from __future__ import annotations

import pytest
import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.generate import generate
from scratchllm.model import GPT, GPTConfig
from scratchllm.model.gqa import GroupedQueryAttention


def test_as_many_kv_heads_as_query_heads_is_multihead_attention_exactly():
    torch.manual_seed(0)
    mha = GPT(GPTConfig.preset("tiny", qkv_bias=True)).eval()
    gqa = GPT(GPTConfig.preset("tiny", qkv_bias=True, attention="grouped_query", n_kv_heads=4)).eval()
    gqa.load_state_dict(mha.state_dict(), strict=True)  # the same names and shapes
    idx = torch.randint(0, 512, (2, 20))
    assert torch.equal(gqa(idx), mha(idx))


def explicit_gqa(att: GroupedQueryAttention, x: torch.Tensor) -> torch.Tensor:
    """Each query head h written out against key/value head h // group, softmax over the causal past."""
    B, T, d = x.shape
    hd, H, Hkv = att.head_dim, att.n_heads, att.n_kv_heads
    q = (x @ att.W_query.T).view(B, T, H, hd)
    k = (x @ att.W_key.T).view(B, T, Hkv, hd)
    v = (x @ att.W_value.T).view(B, T, Hkv, hd)
    heads = []
    for h in range(H):
        g = h // (H // Hkv)
        scores = q[:, :, h] @ k[:, :, g].transpose(1, 2) / hd**0.5  # (B, T, T)
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        heads.append(scores.softmax(-1) @ v[:, :, g])
    return att.out_proj(torch.cat(heads, dim=-1))


@pytest.mark.parametrize("n_kv_heads", [1, 2])
@pytest.mark.parametrize("explicit", [False, True])
def test_grouped_heads_share_keys_and_values(n_kv_heads, explicit):
    torch.manual_seed(0)
    att = GroupedQueryAttention(GPTConfig.preset("tiny", attention="grouped_query", n_kv_heads=n_kv_heads))
    att.explicit = explicit
    x = torch.randn(2, 9, 64)
    torch.testing.assert_close(att(x), explicit_gqa(att, x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
def test_cached_generation_equals_uncached_and_the_cache_holds_only_kv_heads(pos_encoding):
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", attention="grouped_query", n_kv_heads=1, pos_encoding=pos_encoding)).eval()
    prompt = torch.randint(0, 512, (2, 7))
    cached = generate(model, prompt, 20, use_cache=True)
    assert torch.equal(cached, generate(model, prompt, 20, use_cache=False))
    cache = model.new_cache(2, 30)
    assert [tuple(layer.k.shape) for layer in cache.layers] == [(2, 1, 30, 16)] * 2  # one KV head of 16


def test_parameters_and_memory_follow_the_kv_heads():
    d, layers = 64, 2
    counts = {}
    for n_kv in (4, 2, 1):
        model = GPT(GPTConfig.preset("tiny", attention="grouped_query", n_kv_heads=n_kv))
        counts[n_kv] = model.num_params()
        assert model.memory_estimate(batch_size=3, seq_len=50)["kv_cache"] == layers * 2 * n_kv * 16 * 3 * 50 * 4
    # W_key and W_value shrink from d x d to d x (n_kv * 16) each, with their biases gone (qkv_bias off)
    assert counts[4] - counts[2] == layers * 2 * d * (64 - 32)
    assert counts[4] - counts[1] == layers * 2 * d * (64 - 16)


def test_kv_heads_must_divide_the_query_heads():
    with pytest.raises(ScratchLLMError, match="n_kv_heads=3 must divide n_heads=4"):
        GPTConfig.preset("tiny", attention="grouped_query", n_kv_heads=3)
