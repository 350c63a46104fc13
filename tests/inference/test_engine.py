"""The engine against each sequence generated alone (the book's loop without a cache)."""

import pytest
import torch
from sharp_models import book_generate, sharp_model

from scratchllm.errors import ScratchLLMError
from scratchllm.generate import generate
from scratchllm.inference import Engine, SamplingSettings
from scratchllm.model.registry import names

ATTENTION = [dict(), dict(attention="grouped_query", n_kv_heads=2), dict(attention="grouped_query", n_kv_heads=1)]


def alone(model, prompt, s: SamplingSettings):
    """The oracle: this sequence alone, B=1, no cache (the book's recompute loop)."""
    return generate(model, [prompt], s.max_new_tokens, s.temperature, s.top_k, s.top_p, s.stop_ids, s.seed,
                    use_cache=False, crop=s.crop)[0]


def run(engine, schedule, cancel_at=None):
    """Step ``engine``, adding schedule[step] = [(prompt, settings), ...] before each step (and
    cancelling (step, key)); returns {key: tokens} from the events and the finish reasons."""
    got, reasons, sid_of, key_of = {}, {}, {}, {}
    step = 0
    while step <= max(schedule) or engine.active:
        for key, prompt, settings in schedule.get(step, []):
            sid_of[key] = engine.add(prompt, settings)
            key_of[sid_of[key]] = key
            got[key] = list(prompt)
        if cancel_at and cancel_at[0] == step:
            key = cancel_at[1]
            assert engine.cancel(sid_of[key]) == got[key]
            reasons[key] = "cancelled"
        events = engine.step()
        assert len(events) <= engine.max_batch
        for sid, token, finished in events:
            got[key_of[sid]].append(token)
            if finished:
                reasons[key_of[sid]] = finished
        step += 1
    return got, reasons


@pytest.mark.parametrize("attention", ATTENTION, ids=["multihead", "gqa", "mqa"])
@pytest.mark.parametrize("pos", names("position"))
def test_sequences_joining_and_leaving_mid_stream_equal_each_alone(pos, attention):
    model = sharp_model(pos, **attention)  # context 32
    free = alone(model, [5, 9, 400, 2], SamplingSettings(12))
    stop = free[4 + 5]  # the 6th new token of A: A stops there (or earlier, at its first one)
    schedule = {
        0: [("A", [5, 9, 400, 2], SamplingSettings(12, stop_ids=[stop])),
            ("B", [7], SamplingSettings(9, temperature=1.2, top_k=40, seed=3))],
        2: [("C", [3, 3, 3, 8, 100, 200, 300, 11, 12], SamplingSettings(6, temperature=0.9, top_p=0.8, seed=1))],
        3: [("D", [42, 43], SamplingSettings(7)),  # 4 sequences for 3 slots: D or E waits
            ("E", [17, 1, 2, 300, 5, 6], SamplingSettings(10, temperature=1.0, seed=5))],
        9: [("F", [250, 251, 252], SamplingSettings(5, temperature=0.7, top_k=5, seed=9))],
    }
    engine = Engine(model, max_batch=3, max_len=32)
    got, reasons = run(engine, schedule)
    for step in schedule.values():
        for key, prompt, settings in step:
            assert got[key] == alone(model, prompt, settings), key
    assert got["A"] == free[: free.index(stop, 4) + 1] and reasons["A"] == "stop"
    assert reasons["B"] == "length" and len(got["B"]) == 1 + 9
    assert not engine.active and engine.running == []


def test_generation_differs_by_position_encoding():
    """The engine's positions matter: the oracle differs between encodings (else the test above proves little)."""
    outs = {pos: tuple(alone(sharp_model(pos), [5, 9, 400, 2], SamplingSettings(10))) for pos in names("position")}
    assert len(set(outs.values())) == len(outs)


def test_a_freed_slot_is_reused_and_the_cache_is_never_reallocated():
    model = sharp_model("rope")
    engine = Engine(model, max_batch=2, max_len=24)
    k = engine.cache.layers[0].k
    # masked columns past a row's end still meet weight 0 x value: they must hold numbers, not garbage
    assert all(not layer.k.any() and not layer.v.any() for layer in engine.cache.layers)
    settings = [SamplingSettings(n, temperature=0.8, seed=n) for n in (3, 8, 4, 6, 2)]
    prompts = [[1, 2], [3, 4, 5, 6], [7], [8, 9, 10], [11, 12, 13, 14, 15]]
    sids = [engine.add(p, s) for p, s in zip(prompts, settings, strict=True)]
    assert engine.running == [] and engine.active == sids
    got = {sid: list(p) for sid, p in zip(sids, prompts, strict=True)}
    running = []
    while engine.active:
        events = engine.step()
        running.append([e.sid for e in events])
        for sid, token, _ in events:
            got[sid].append(token)
        assert engine.cache.layers[0].k is k
    # two slots: the third sequence joins the step after the first one (3 tokens) finished
    assert running[:4] == [[0, 1], [0, 1], [0, 1], [1, 2]]
    assert max(len(r) for r in running) == 2
    for sid, p, s in zip(sids, prompts, settings, strict=True):
        assert got[sid] == alone(model, p, s)


def test_cancel_frees_the_slot_at_once():
    model = sharp_model("sinusoidal")
    engine = Engine(model, max_batch=2, max_len=32)
    a = engine.add([1, 2, 3], SamplingSettings(20))
    b = engine.add([4, 5], SamplingSettings(10))
    c = engine.add([6], SamplingSettings(10))  # waits for a slot
    waiting = engine.add([7, 8], SamplingSettings(5))
    engine.step()
    engine.step()
    tokens_a = engine.cancel(a)
    assert tokens_a == alone(model, [1, 2, 3], SamplingSettings(2))  # its prompt and 2 tokens
    assert engine.cancel(waiting) == [7, 8]
    assert engine.running == [b] and engine.active == [b, c]
    assert [e.sid for e in engine.step()] == [b, c]  # c took a's slot
    with pytest.raises(ScratchLLMError, match="no sequence"):
        engine.cancel(a)
    got = {b: engine.tokens(b), c: engine.tokens(c)}
    while engine.active:
        for sid, token, _ in engine.step():
            got[sid].append(token)
    assert got[b] == alone(model, [4, 5], SamplingSettings(10))
    assert got[c] == alone(model, [6], SamplingSettings(10))


def test_chunked_prefill_gives_the_same_tokens():
    model = sharp_model("rope")
    prompt = torch.randint(0, 512, (20,), generator=torch.Generator().manual_seed(4)).tolist()
    engine = Engine(model, max_batch=2, max_len=32, prefill_chunk=3)
    sid = engine.add(prompt, SamplingSettings(10))
    out = list(prompt)
    while engine.active:
        out += [e.token for e in engine.step() if e.sid == sid]
    assert out == alone(model, prompt, SamplingSettings(10))


def test_learned_positions_slide_past_the_context_in_the_engine():
    model = sharp_model("learned")  # context 32: every sequence below outgrows it
    engine = Engine(model, max_batch=3)
    assert engine.max_len == 32
    schedule = {
        0: [("A", [5, 6, 7], SamplingSettings(45, crop=True))],
        10: [("B", list(range(100, 140)), SamplingSettings(20, crop=True)),  # a prompt longer than the context
             ("C", [9] * 25, SamplingSettings(30, temperature=0.9, seed=2, crop=True))],
    }
    got, _ = run(engine, schedule)
    assert got["A"] == book_generate(model, torch.tensor([[5, 6, 7]]), 45)[0].tolist()
    assert got["B"] == book_generate(model, torch.tensor([list(range(100, 140))]), 20)[0].tolist()
    assert got["C"] == alone(model, [9] * 25, SamplingSettings(30, temperature=0.9, seed=2, crop=True))


def test_bad_sequences_are_refused_with_the_limit_named():
    model = sharp_model("learned")
    engine = Engine(model, max_batch=1, max_len=100)
    assert engine.max_len == 32  # learned positions stop at the context
    with pytest.raises(ScratchLLMError, match="context_length of 32"):
        engine.add(list(range(30)), SamplingSettings(5))
    with pytest.raises(ScratchLLMError, match="every prompt"):
        engine.add([], SamplingSettings(5))
    with pytest.raises(ScratchLLMError, match="max_new_tokens"):
        engine.add([1], SamplingSettings(0))
    with pytest.raises(ScratchLLMError, match=r"\[0, 512\)"):
        engine.add([1, 512], SamplingSettings(3))
    with pytest.raises(ScratchLLMError, match="max_len of 16"):
        Engine(sharp_model("rope"), max_len=16).add(list(range(10)), SamplingSettings(7))
    assert engine.active == [] and engine.step() == []
