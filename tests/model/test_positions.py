"""Position encodings against outside references: rotary against transformers' Llama functions and
its defining property, sinusoidal against the formula of "Attention Is All You Need", and the GPT
adding each token's absolute position (after a cache too)."""

from __future__ import annotations

import math
import re

import pytest
import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.model import GPT, GPTConfig
from scratchllm.model.positions import apply_rope, rope_cos_sin, sinusoidal_encoding


def _hf_rope(head_dim: int, base: float, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
    """transformers' Llama rotary embedding: its cos/sin (B, T, hd) and its rotation of q and k (B, H, T, hd)."""
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim, rope_theta=base,
                         max_position_embeddings=4096)
    rotary = llama.LlamaRotaryEmbedding(config=config)
    cos, sin = rotary(q, positions)
    q, k = llama.apply_rotary_pos_emb(q, k, cos, sin)  # unsqueeze_dim=1: heads at dim 1
    return cos, sin, q, k


@pytest.mark.parametrize(("head_dim", "base"), [(8, 10000.0), (16, 500.0)])
def test_rotary_equals_transformers_llama(head_dim, base):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, head_dim)
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 6], [5, 6, 7, 8, 9, 10, 300]])  # (B, T): rows of their own
    y = torch.randn(2, 3, 7, head_dim)
    hf_cos, hf_sin, hf_q, hf_k = _hf_rope(head_dim, base, positions, x, y)
    cos, sin = rope_cos_sin(positions, head_dim, base)  # (B, 1, T, hd)
    torch.testing.assert_close(cos[:, 0], hf_cos)
    torch.testing.assert_close(sin[:, 0], hf_sin)
    torch.testing.assert_close(apply_rope(x, cos, sin), hf_q)
    torch.testing.assert_close(apply_rope(y, cos, sin), hf_k)


def test_the_default_rotary_base_is_the_10000_of_roformer_and_llama():
    positions = torch.arange(9)[None]
    q = torch.randn(1, 2, 9, 8)
    hf_cos, hf_sin, _, _ = _hf_rope(8, 10000.0, positions, q, q)
    cos, sin = rope_cos_sin(positions, 8)  # no base given
    torch.testing.assert_close(cos[:, 0], hf_cos)
    torch.testing.assert_close(sin[:, 0], hf_sin)


@pytest.mark.parametrize(("pos_encoding", "d_model", "n_heads", "message"), [
    ("sinusoidal", 15, 1, "sinusoidal positions need an even d_model, got 15"),  # sin/cos come in pairs
    ("rope", 12, 4, "rope needs an even head size, got d_model/n_heads=3"),  # rotation pairs i with i + hd/2
])
def test_positions_that_pair_dimensions_refuse_an_odd_size(pos_encoding, d_model, n_heads, message):
    with pytest.raises(ScratchLLMError, match=re.escape(message)):
        GPT(GPTConfig.preset("tiny", pos_encoding=pos_encoding, d_model=d_model, n_heads=n_heads))


def test_rotated_dot_products_depend_only_on_the_distance():
    torch.manual_seed(0)
    hd = 16
    q, k = torch.randn(hd, dtype=torch.float64), torch.randn(hd, dtype=torch.float64)

    def score(m: int, n: int) -> float:
        cos, sin = rope_cos_sin(torch.tensor([m, n]), hd)
        rq = apply_rope(q.view(1, 1, 1, hd).float(), cos[..., :1, :], sin[..., :1, :])
        rk = apply_rope(k.view(1, 1, 1, hd).float(), cos[..., 1:, :], sin[..., 1:, :])
        return float((rq * rk).sum())

    for distance in (0, 1, 5, 17):
        scores = [score(m + distance, m) for m in (0, 3, 40, 123)]
        assert max(scores) - min(scores) < 1e-4, (distance, scores)
    assert score(0, 0) == pytest.approx(float(q @ k), abs=1e-5)  # no rotation at distance 0
    assert len({round(score(d, 0), 3) for d in (0, 1, 2, 5, 17)}) == 5  # and it does vary with the distance


def test_sinusoidal_equals_the_formula_of_attention_is_all_you_need():
    d, positions = 12, range(60)
    # PE(pos, 2i) = sin(pos / 10000^(2i/d)),  PE(pos, 2i+1) = cos(pos / 10000^(2i/d))   (section 3.5)
    expected = torch.tensor([[math.sin(p / 10000 ** (j / d)) if j % 2 == 0 else math.cos(p / 10000 ** ((j - 1) / d))
                              for j in range(d)] for p in positions], dtype=torch.float32)
    torch.testing.assert_close(sinusoidal_encoding(torch.tensor(list(positions)), d), expected, atol=2e-5, rtol=0)


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal", "none"])
def test_the_gpt_adds_the_vector_of_each_absolute_position_also_after_a_cache(pos_encoding):
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", pos_encoding=pos_encoding, dropout=0.0)).eval()
    d = model.config.d_model
    idx = torch.randint(0, 512, (2, 9))

    def expected(positions: list[int], ids: torch.Tensor) -> torch.Tensor:
        tok = model.tok_emb.weight[ids]
        if pos_encoding == "learned":
            return tok + model.pos_emb.weight[positions]
        if pos_encoding == "sinusoidal":  # the formula, as above
            return tok + torch.tensor([[math.sin(p / 10000 ** (j / d)) if j % 2 == 0 else
                                        math.cos(p / 10000 ** ((j - 1) / d)) for j in range(d)] for p in positions])
        return tok

    record: dict = {}
    with torch.no_grad():
        model(idx, record=record)
        torch.testing.assert_close(record["embeddings"], expected(list(range(9)), idx), atol=3e-5, rtol=0)
        cache = model.new_cache(2, 9)
        model(idx[:, :5], cache=cache)
        model(idx[:, 5:], cache=cache, record=record)  # positions 5..8 follow the cached ones
        torch.testing.assert_close(record["embeddings"], expected([5, 6, 7, 8], idx[:, 5:]), atol=3e-5, rtol=0)


@pytest.mark.parametrize("attention", [dict(), dict(attention="grouped_query", n_kv_heads=2)])
def test_attention_rotates_queries_and_keys_as_transformers_does(attention):
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", pos_encoding="rope", rope_base=500.0, dropout=0.0, **attention)).eval()
    att = model.trf_blocks[0].att
    B, T, hd, H, Hkv = 2, 6, att.head_dim, att.n_heads, att.n_kv_heads
    x = torch.randn(B, T, model.config.d_model)
    positions = torch.arange(3, 3 + T)
    with torch.no_grad():
        ours = att(x, model.pos_emb.rotation(positions))
        # Oracle: the attention formula written out, rotated by transformers' Llama functions.
        q = (x @ att.W_query.T).view(B, T, H, hd).transpose(1, 2)
        k = (x @ att.W_key.T).view(B, T, Hkv, hd).transpose(1, 2).repeat_interleave(H // Hkv, dim=1)
        v = (x @ att.W_value.T).view(B, T, Hkv, hd).transpose(1, 2).repeat_interleave(H // Hkv, dim=1)
        _, _, q, k = _hf_rope(hd, 500.0, positions[None].expand(B, T), q, k)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(hd)).masked_fill(torch.ones(T, T).triu(1).bool(), -math.inf)
        expected = att.out_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)
