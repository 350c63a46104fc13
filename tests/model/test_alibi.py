"""ALiBi (Press et al. 2022): the head slopes of the paper, the bias -m (i - j) on every score,
cached generation equal to uncached, and the same bias inside a sliding window."""

from __future__ import annotations

import math

import pytest
import torch

from scratchllm.generate import generate
from scratchllm.model import GPT, GPTConfig
from scratchllm.model.alibi import alibi_slopes
from scratchllm.model.attention import MultiHeadAttention
from scratchllm.model.sliding import SlidingWindowAttention


def reference_slopes(n: int) -> list[float]:
    """The authors' get_slopes (github.com/ofirpress/attention_with_linear_biases), written again."""
    def pow2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n).is_integer():
        return pow2(n)
    closest = 2 ** math.floor(math.log2(n))
    return pow2(closest) + reference_slopes(2 * closest)[0::2][: n - closest]


def test_slopes_are_the_papers_geometric_sequence():
    # the paper, section 3: 8 heads get 1/2^1 ... 1/2^8; 16 heads interpolate: 1/2^0.5, 1/2^1, ... 1/2^8
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -h for h in range(1, 9)]))
    torch.testing.assert_close(alibi_slopes(16), torch.tensor([2.0 ** (-h / 2) for h in range(1, 17)]))
    for n in (1, 2, 3, 5, 6, 12, 20, 24):  # not powers of two too
        torch.testing.assert_close(alibi_slopes(n), torch.tensor(reference_slopes(n)), msg=str(n))


def explicit_alibi(att: MultiHeadAttention, x: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """Every head written out: softmax(q k^T / sqrt(d) - m_h (i - j)) over the causal past (or a window)."""
    B, T, d = x.shape
    H, hd = att.n_heads, att.head_dim
    q, k, v = ((x @ w.T).view(B, T, H, hd) for w in (att.W_query, att.W_key, att.W_value))
    slopes = reference_slopes(H)
    heads = []
    for h in range(H):
        scores = q[:, :, h] @ k[:, :, h].transpose(1, 2) / math.sqrt(hd)  # (B, T, T)
        for i in range(T):
            for j in range(T):
                allowed = j <= i and (window is None or i - j < window)
                scores[:, i, j] = scores[:, i, j] - slopes[h] * (i - j) if allowed else float("-inf")
        heads.append(scores.softmax(-1) @ v[:, :, h])
    return att.out_proj(torch.cat(heads, dim=-1))


@pytest.mark.parametrize("impl", ["fused", "explicit"])
@pytest.mark.parametrize("n_heads", [4, 2])
def test_the_layer_adds_minus_slope_times_distance_to_every_score(impl, n_heads):
    config = GPTConfig.preset("tiny", pos_encoding="alibi", n_heads=n_heads, dropout=0.0)
    torch.manual_seed(0)
    att = MultiHeadAttention(config).eval()
    att.explicit = impl == "explicit"
    x = torch.randn(2, 11, 64) * 3
    with torch.no_grad():
        torch.testing.assert_close(att(x), explicit_alibi(att, x), atol=1e-5, rtol=1e-4)


def test_inside_a_sliding_window_the_bias_is_the_same():
    config = GPTConfig.preset("tiny", pos_encoding="alibi", attention="sliding_window", window=4, dropout=0.0)
    torch.manual_seed(0)
    att = SlidingWindowAttention(config).eval()
    att.block = 3
    x = torch.randn(2, 13, 64) * 3
    with torch.no_grad():
        torch.testing.assert_close(att(x), explicit_alibi(att, x, window=4), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("attention", [{}, dict(attention="grouped_query", n_kv_heads=2)])
def test_cached_generation_equals_uncached_also_past_the_training_context(attention):
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", pos_encoding="alibi", context_length=16, **attention)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3 if "emb" in name else 1.5 / p.shape[1] ** 0.5)
    prompt = torch.randint(0, 512, (2, 5), generator=torch.Generator().manual_seed(1))
    cached = generate(model, prompt, 25, use_cache=True)  # 30 tokens, context 16: ALiBi has no limit
    assert torch.equal(cached, generate(model, prompt, 25, use_cache=False))
    assert model.max_positions is None
