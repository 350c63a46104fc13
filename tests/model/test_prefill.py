"""Chunked prefill: a prompt fed into the KV cache a few tokens at a time (a non-empty cache and
more than one new token, what a serving engine does all the time) gives the logits of one
uncached forward pass, for every registered position encoding and attention kind."""

from __future__ import annotations

import pytest
import torch

from scratchllm.model import GPT, GPTConfig, registry

CHUNKS = [4, 1, 2, 5, 3]  # 15 tokens: a first chunk, a single token, then chunks after a non-empty cache
# (2 new tokens: as many as GQA's key/value heads, so the head counts, not the lengths, must pick GQA)
ATTENTION = {"multihead": {}, "gqa": dict(attention="grouped_query", n_kv_heads=2),
             "mqa": dict(attention="grouped_query", n_kv_heads=1)}


def sharp_model(**overrides) -> GPT:
    """Large random weights: attention far from uniform, so a wrong mask or position shows."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", context_length=16, dropout=0.0, **overrides))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3 if "emb" in name else 1.5 / p.shape[1] ** 0.5)
    return model.eval()


def _chunks(ids: torch.Tensor):
    start = 0
    for n in CHUNKS:
        yield ids[:, start : start + n]
        start += n


@pytest.mark.parametrize("impl", ["fused", "explicit"])
@pytest.mark.parametrize("attention", list(ATTENTION))
@pytest.mark.parametrize("pos_encoding", registry.names("position"))
def test_chunked_prefill_equals_one_uncached_pass(pos_encoding, attention, impl):
    model = sharp_model(pos_encoding=pos_encoding, impl=impl, **ATTENTION[attention])
    ids = torch.randint(0, 512, (2, sum(CHUNKS)), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = model(ids)
        cache = model.new_cache(2, sum(CHUNKS))
        pieces = [model(chunk, cache=cache) for chunk in _chunks(ids)]
    assert cache.length == sum(CHUNKS)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, atol=1e-4, rtol=1e-4)
    # and the distribution really depends on the past: a prompt cut short predicts otherwise
    assert not torch.allclose(model(ids[:, 9:]).detach(), whole[:, 9:], atol=1e-2)


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
def test_chunked_prefill_of_left_padded_rows_equals_one_pass_with_the_same_mask(pos_encoding):
    model = sharp_model(pos_encoding=pos_encoding)
    N = sum(CHUNKS)
    ids = torch.randint(0, 512, (2, N), generator=torch.Generator().manual_seed(2))
    real = torch.ones(2, N, dtype=torch.bool)
    real[1, :4] = False  # row 1: 4 tokens of left padding
    positions = (real.cumsum(1) - 1).clamp(min=0)
    # causal, and no token reads padding (a padding query reads itself, so no softmax row is empty)
    mask = torch.ones(N, N, dtype=torch.bool).tril() & (real[:, None, None, :] | torch.eye(N, dtype=torch.bool))
    with torch.no_grad():
        whole = model(ids, positions=positions, mask=mask)
        cache = model.new_cache(2, N)
        pieces, start = [], 0
        for chunk in _chunks(ids):
            end = start + chunk.shape[1]
            pieces.append(model(chunk, cache=cache, positions=positions[:, start:end],
                                mask=mask[:, :, start:end, :end]))
            start = end
    got = torch.cat(pieces, dim=1)
    torch.testing.assert_close(got[:, 4:], whole[:, 4:], atol=1e-4, rtol=1e-4)  # every real token
    torch.testing.assert_close(got[0], whole[0], atol=1e-4, rtol=1e-4)
    # row 1 alone, unpadded, predicts the same from its real tokens
    torch.testing.assert_close(model(ids[1:, 4:]).detach()[0], whole[1, 4:], atol=1e-4, rtol=1e-4)
