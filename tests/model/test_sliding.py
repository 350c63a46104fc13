"""Sliding-window attention and attention sinks: the band computed in blocks equals full attention
with the band mask written out; the rolling cache holds only the window; decode memory stays flat."""

from __future__ import annotations

import warnings

import pytest
import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.generate import generate
from scratchllm.inference import Engine, SamplingSettings
from scratchllm.model import GPT, GPTConfig
from scratchllm.model.attention import MultiHeadAttention
from scratchllm.model.sliding import RollingKV, SlidingWindowAttention, window_pattern
from scratchllm.profiling import TensorMemory


def band_mask(T: int, window: int, sinks: int = 0) -> torch.Tensor:
    """The oracle's mask, by loops: query i reads key j iff j <= i and (i - j < window or j < sinks)."""
    mask = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        for j in range(i + 1):
            mask[i, j] = i - j < window or j < sinks
    return mask


def sharp(config: GPTConfig) -> GPT:
    torch.manual_seed(0)
    model = GPT(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3 if "emb" in name else 1.5 / p.shape[1] ** 0.5)
    return model.eval()


@pytest.mark.parametrize("impl", ["fused", "explicit"])
@pytest.mark.parametrize(("window", "sinks"), [(1, 0), (5, 0), (5, 2), (40, 0)])
def test_the_band_in_blocks_equals_full_attention_with_the_band_mask(window, sinks, impl):
    config = GPTConfig.preset("tiny", attention="sliding_window", window=window, sinks=sinks, context_length=64,
                              dropout=0.0)
    torch.manual_seed(0)
    att = SlidingWindowAttention(config).eval()
    att.block = 4  # many blocks, some whose band reaches into the previous one
    full = MultiHeadAttention(config).eval()
    full.load_state_dict(att.state_dict(), strict=True)  # the same weights, name for name
    att.explicit = full.explicit = impl == "explicit"
    x = torch.randn(2, 23, 64)
    with torch.no_grad():
        got = att(x)
        torch.testing.assert_close(got, full(x, mask=band_mask(23, window, sinks)), atol=1e-5, rtol=1e-4)
        if window < 23:  # the band is not the causal mask
            assert not torch.allclose(got, full(x), atol=1e-3)


def test_a_window_per_layer_follows_the_named_patterns():
    assert window_pattern("nanochat", 8, 32) == [32, 32, 32, 0, 32, 32, 32, 0]
    assert window_pattern("nanochat", 6, 32) == [32, 32, 32, 0, 32, 0]  # the last layer is always full
    assert window_pattern("gemma3", 12, 32) == [32] * 5 + [0] + [32] * 5 + [0]
    windows = window_pattern("nanochat", 6, 8)
    model = GPT(GPTConfig.preset("tiny", n_layers=6, attention="sliding_window", window=windows))
    assert [b.att.window for b in model.trf_blocks] == [8, 8, 8, None, 8, None]
    with pytest.raises(ScratchLLMError, match="did you mean 'gemma3'"):
        window_pattern("gemma", 6, 8)


@pytest.mark.parametrize("pos_encoding", ["rope", "alibi", "learned"])
@pytest.mark.parametrize(("window", "sinks"), [([4, 0], 0), (3, 2)])
def test_cached_generation_with_the_rolling_cache_equals_uncached(pos_encoding, window, sinks):
    model = sharp(GPTConfig.preset("tiny", pos_encoding=pos_encoding, context_length=32, attention="sliding_window",
                                   window=window, sinks=sinks))
    prompt = torch.randint(0, 512, (2, 7), generator=torch.Generator().manual_seed(1))
    cached = generate(model, prompt, 20, use_cache=True)
    assert torch.equal(cached, generate(model, prompt, 20, use_cache=False))
    cache = model.new_cache(2, 32)
    sliding = [layer for layer in cache.layers if isinstance(layer, RollingKV)]
    assert sliding and all(layer.k.shape[2] == (window if isinstance(window, int) else 4) + sinks for layer in sliding)


@pytest.mark.parametrize("pos_encoding", ["rope", "alibi"])
def test_chunked_prefill_into_the_rolling_cache_equals_one_pass(pos_encoding):
    model = sharp(GPTConfig.preset("tiny", pos_encoding=pos_encoding, context_length=64, attention="sliding_window",
                                   window=5, sinks=1))
    ids = torch.randint(0, 512, (2, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = model(ids)
        cache = model.new_cache(2, 64)
        pieces, start = [], 0
        for n in [3, 1, 9, 2, 7, 8]:  # chunks shorter and longer than the window
            pieces.append(model(ids[:, start : start + n], cache=cache))
            start += n
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, atol=1e-4, rtol=1e-4)


def test_the_engine_with_rolling_caches_equals_each_sequence_alone():
    """Rows of different lengths join and leave; each row's ring is its own (a reused slot forgets)."""
    model = sharp(GPTConfig.preset("tiny", pos_encoding="rope", context_length=32, attention="sliding_window",
                                   window=[4, 6], sinks=1))
    prompts = {"A": [5, 9, 400, 2, 8, 1, 7, 7, 3], "B": [7], "C": [3, 3, 3, 8, 100], "D": [42, 43]}
    settings = {"A": SamplingSettings(16), "B": SamplingSettings(12, temperature=1.1, seed=3),
                "C": SamplingSettings(5), "D": SamplingSettings(14, temperature=0.9, top_k=20, seed=4)}
    engine = Engine(model, max_batch=2, max_len=200)  # 200 positions per slot, a ring of 5 or 7 tokens
    assert [layer.k.shape[2] for layer in engine.cache.layers] == [5, 7]
    sid = {key: engine.add(prompts[key], settings[key]) for key in prompts}
    got = {key: list(prompts[key]) for key in prompts}
    key_of = {v: k for k, v in sid.items()}
    while engine.active:
        for s, token, _ in engine.step():
            got[key_of[s]].append(token)
    for key in prompts:
        s = settings[key]
        alone = generate(model, [prompts[key]], s.max_new_tokens, s.temperature, s.top_k, seed=s.seed,
                         use_cache=False)[0]
        assert got[key] == list(alone), key


def test_decode_memory_stays_flat_as_the_text_grows():
    model = sharp(GPTConfig.preset("tiny", pos_encoding="rope", context_length=64, attention="sliding_window",
                                   window=8, sinks=2))
    cache = model.new_cache(1, 10_000)
    step = torch.tensor([[1]])
    peaks = {}
    with torch.no_grad():
        model(torch.randint(0, 512, (1, 20)), cache=cache)
        for length in (40, 200):
            while cache.length < length:
                model(step, cache=cache)
            with TensorMemory() as mem:
                model(step, cache=cache)
            peaks[length] = mem.peak
    assert peaks[40] == peaks[200] > 0
    assert sum(layer.k.numel() for layer in cache.layers) == 2 * 10 * 64  # 2 layers x 10 slots x 64


@pytest.mark.parametrize("impl", ["fused", "explicit"])
def test_prefill_memory_grows_as_length_times_window_not_length_squared(impl):
    config = GPTConfig.preset("tiny", attention="sliding_window", window=64, context_length=8192, dropout=0.0,
                              impl=impl)
    att = SlidingWindowAttention(config).eval()
    att.explicit = impl == "explicit"
    peaks = {}
    with torch.no_grad():
        for T in (4096, 8192):
            x = torch.randn(1, T, 64)
            with TensorMemory() as mem:
                att(x)
            peaks[T] = mem.peak
    T = 8192
    assert peaks[T] < T * T  # less than one boolean (T, T) mask, let alone (heads, T, T) scores
    assert peaks[T] < 2.2 * peaks[4096]  # linear in T


def test_a_window_larger_than_the_context_warns_and_is_full_attention_there():
    with pytest.warns(UserWarning, match="window 100 >= context_length 32: within the context that layer is full"):
        config = GPTConfig.preset("tiny", context_length=32, attention="sliding_window", window=100)
    torch.manual_seed(0)
    att = SlidingWindowAttention(config).eval()
    full = MultiHeadAttention(config).eval()
    full.load_state_dict(att.state_dict())
    x = torch.randn(1, 32, 64)
    torch.testing.assert_close(att(x), full(x), atol=1e-5, rtol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GPTConfig.preset("tiny", context_length=32, attention="sliding_window", window=31)


def test_bad_windows_and_patterns_are_one_line():
    with pytest.raises(ScratchLLMError, match="needs a window"):
        GPTConfig.preset("tiny", attention="sliding_window")
    with pytest.raises(ScratchLLMError, match="window lists 3 values for 2 layers"):
        GPTConfig.preset("tiny", attention="sliding_window", window=[4, 4, 0])
    with pytest.raises(ScratchLLMError, match="attention lists 3 names for 2 layers; give at most one per layer"):
        GPTConfig.preset("tiny", attention=["sliding_window", "multihead", "multihead"], window=4)
    with pytest.raises(ScratchLLMError, match="did you mean 'sliding_window'"):
        GPTConfig.preset("tiny", attention=["multihead", "sliding_windw"], window=4)
    with pytest.raises(ScratchLLMError, match="window must be a positive number"):
        GPTConfig.preset("tiny", attention="sliding_window", window=-3)
    with pytest.raises(ScratchLLMError, match="sinks must be"):
        GPTConfig.preset("tiny", attention="sliding_window", window=4, sinks=-1)


def test_memory_estimate_counts_the_ring_not_the_text():
    model = GPT(GPTConfig.preset("tiny", pos_encoding="rope", context_length=8192, attention="sliding_window",
                                 window=[16, 0], sinks=2))
    cache = model.new_cache(2, 8192)  # allocated for real: the oracle
    allocated = sum(t.nbytes for layer in cache.layers for t in vars(layer).values() if isinstance(t, torch.Tensor))
    estimate = model.memory_estimate(batch_size=2, seq_len=8192)["kv_cache"]
    assert estimate == allocated
    per_token = 2 * 2 * 64 * 4  # keys and values, 2 rows, d_model 64, float32
    ring = per_token * (16 + 2) + 2 * (16 + 2) * 8  # the window and the sinks, and each slot's position (int64)
    assert estimate == ring + per_token * 8192  # layer 0 the ring, layer 1 full attention
    assert model.memory_estimate(batch_size=2, seq_len=4096)["kv_cache"] == ring + per_token * 4096
