"""The Sparse Transformer's strided and fixed patterns (Child et al. 2019): each layer equals full
attention with the paper's index sets written out as a mask, and generation with a cache equals
generation without one."""

from __future__ import annotations

import pytest
import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.generate import generate
from scratchllm.inference import Engine, SamplingSettings
from scratchllm.model import GPT, GPTConfig
from scratchllm.model.attention import MultiHeadAttention
from scratchllm.model.sparse import FixedAttention, StridedAttention


def paper_mask(kind: str, T: int, l: int, c: int = 1) -> torch.Tensor:
    """The paper's sets, causal: strided A1 = {max(0, i-l), ..., i}, A2 = {j : (i-j) mod l = 0};
    fixed A1 = {j : floor(j/l) = floor(i/l)}, A2 = {j : j mod l in {l-c, ..., l-1}}."""
    mask = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        if kind == "strided":
            a1 = set(range(max(0, i - l), i + 1))
            a2 = {j for j in range(i + 1) if (i - j) % l == 0}
        else:
            a1 = {j for j in range(i + 1) if j // l == i // l}
            a2 = {j for j in range(i + 1) if j % l in range(l - c, l)}
        for j in a1 | a2:
            mask[i, j] = True
    return mask


@pytest.mark.parametrize("impl", ["fused", "explicit"])
@pytest.mark.parametrize(("kind", "cls", "l", "c"), [("strided", StridedAttention, 4, 1),
                                                     ("fixed", FixedAttention, 4, 1), ("fixed", FixedAttention, 5, 2)])
def test_each_pattern_equals_full_attention_with_the_papers_mask(kind, cls, l, c, impl):
    config = GPTConfig.preset("tiny", attention=f"sparse_{kind}", sparse_stride=l, sparse_summary=c, dropout=0.0)
    torch.manual_seed(0)
    att = cls(config).eval()
    att.block = 5  # several blocks of queries
    full = MultiHeadAttention(config).eval()
    full.load_state_dict(att.state_dict(), strict=True)
    att.explicit = full.explicit = impl == "explicit"
    x = torch.randn(2, 27, 64)
    with torch.no_grad():
        got = att(x)
        torch.testing.assert_close(got, full(x, mask=paper_mask(kind, 27, l, c)), atol=1e-5, rtol=1e-4)
        assert not torch.allclose(got, full(x), atol=1e-3)  # sparser than causal


def sharp(**overrides) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", context_length=32, **overrides))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3 if "emb" in name else 1.5 / p.shape[1] ** 0.5)
    return model.eval()


@pytest.mark.parametrize("attention", ["sparse_strided", "sparse_fixed"])
@pytest.mark.parametrize("pos_encoding", ["learned", "rope", "alibi"])
def test_cached_generation_equals_uncached(attention, pos_encoding):
    model = sharp(attention=attention, pos_encoding=pos_encoding, sparse_stride=3, sparse_summary=1)
    prompt = torch.randint(0, 512, (2, 6), generator=torch.Generator().manual_seed(1))
    assert torch.equal(generate(model, prompt, 20, use_cache=True), generate(model, prompt, 20, use_cache=False))


def test_rows_of_different_lengths_in_the_engine_each_get_their_own_pattern():
    """The fixed pattern depends on absolute positions: a shorter row must not use the longest row's."""
    model = sharp(attention="sparse_fixed", pos_encoding="rope", sparse_stride=3)
    prompts, n = [[5, 9, 400, 2, 8, 1, 7], [7, 3]], 12
    engine = Engine(model, max_batch=2, max_len=32)
    sids = [engine.add(p, SamplingSettings(n)) for p in prompts]
    got = {sid: list(p) for sid, p in zip(sids, prompts, strict=True)}
    while engine.active:
        for sid, token, _ in engine.step():
            got[sid].append(token)
    for sid, prompt in zip(sids, prompts, strict=True):
        assert got[sid] == generate(model, [prompt], n, use_cache=False)[0]


def test_bad_sparse_settings_are_one_line():
    with pytest.raises(ScratchLLMError, match="sparse_stride must be a positive"):
        GPTConfig.preset("tiny", attention="sparse_strided", sparse_stride=0)
    with pytest.raises(ScratchLLMError, match="sparse_summary must be between 1 and sparse_stride=4"):
        GPTConfig.preset("tiny", attention="sparse_fixed", sparse_stride=4, sparse_summary=5)
