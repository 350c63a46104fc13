"""The server against the real ``openai`` client: every answer equals the same request generated
alone by the book's loop (no cache, no batch), streamed or not."""

import json

import httpx
import openai
import pytest
import torch
from serve_helpers import MODEL, alone, text_of

from scratchllm.tokenizer import ENDOFTEXT

PROMPT = "I had always thought Jack Gisburn"


def test_models_and_health(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=0.9, seed=3, top_p=0.9),
                                      dict(temperature=1.2, seed=7, top_k=20)], ids=["greedy", "top_p", "top_k"])
def test_a_completion_equals_the_request_generated_alone(client, model, tokenizer, sampling):
    extra = {"top_k": sampling["top_k"]} if "top_k" in sampling else None  # vLLM's extra field
    fields = {k: v for k, v in sampling.items() if k != "top_k"}
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=20, extra_body=extra, **fields)
    new = alone(model, tokenizer, PROMPT, 20, sampling["temperature"], sampling.get("top_k"), sampling.get("top_p"),
                sampling.get("seed"))
    assert out.choices[0].text == text_of(tokenizer, new)
    assert out.choices[0].finish_reason == ("stop" if new[-1] == tokenizer.special_tokens[ENDOFTEXT] else "length")
    n_prompt = len(tokenizer.encode_ordinary(PROMPT))
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == \
        (n_prompt, len(new), n_prompt + len(new))


def test_the_stream_joins_to_the_same_text_and_reports_usage_last(client, tokenizer):
    fields = dict(model=MODEL, prompt=PROMPT, max_tokens=25, temperature=0.8, seed=11)
    whole = client.completions.create(**fields)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **fields))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert all(c.usage is None for c in chunks[:-1]) and chunks[-1].choices == []
    assert chunks[-1].usage == whole.usage
    assert len({c.id for c in chunks}) == 1


def test_the_raw_stream_is_openais_sse_ending_in_done(server):
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = "".join(r.iter_text())
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]  # the last event, then the blank line that ends it
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: {") for e in events[:-2])
    assert {tuple(sorted(c)) for c in chunks} == {("choices", "created", "id", "model", "object")}
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert sorted(chunks[0]["choices"][0]) == ["finish_reason", "index", "logprobs", "text"]


def test_n_choices_each_equal_the_request_alone_with_its_seed(client, model, tokenizer):
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=1.0, seed=100, n=3)
    assert [c.index for c in out.choices] == [0, 1, 2]
    for c in out.choices:  # choice i draws with seed + i, like generate's rows
        assert c.text == text_of(tokenizer, alone(model, tokenizer, PROMPT, 12, 1.0, seed=100 + c.index))
    assert len({c.text for c in out.choices}) > 1
    streamed = {}
    for chunk in client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, seed=100, n=3, stream=True):
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + c.text
    assert streamed == {c.index: c.text for c in out.choices}


def test_several_prompts_in_one_request(client, model, tokenizer):
    prompts = [PROMPT, "He laughed", tokenizer.encode_ordinary("Mrs. Gisburn")]
    out = client.completions.create(model=MODEL, prompt=prompts, max_tokens=8, temperature=0)
    assert [c.text for c in out.choices] == [text_of(tokenizer, alone(model, tokenizer, p, 8, 0)) for p in prompts]


def _boundary_stop(tokenizer, new):
    """A stop string made of the end of one token and the start of the next, and where it first occurs."""
    pieces = [tokenizer.decode([t]) for t in new]
    text = "".join(pieces)
    for i in range(3, len(pieces) - 1):
        left, right = pieces[i], pieces[i + 1]
        if len(left) >= 1 and len(right) >= 1 and left.isprintable() and right.isprintable():
            stop = left[-1] + right[0]
            start = len("".join(pieces[: i + 1])) - 1
            if text.find(stop) == start:
                return stop, text[:start]
    raise AssertionError("no printable token boundary in the sample")


@pytest.mark.parametrize("stream", [False, True])
def test_a_stop_string_across_a_token_boundary_cuts_the_text_before_it(client, model, tokenizer, stream):
    new = alone(model, tokenizer, PROMPT, 40, 0, stops=[])
    stop, expected = _boundary_stop(tokenizer, new)
    fields = dict(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0, stop=["\x00never", stop])
    if stream:
        chunks = list(client.completions.create(stream=True, **fields))
        text = "".join(c.choices[0].text for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    else:
        out = client.completions.create(**fields).choices[0]
        text, finish = out.text, out.finish_reason
    assert (text, finish) == (expected, "stop")


def test_logprobs_are_the_models_log_softmax_at_each_step(client, model, tokenizer):
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3).choices[0]
    ids = tokenizer.encode_ordinary(PROMPT)
    new = alone(model, tokenizer, PROMPT, 6, 0)
    with torch.no_grad():  # the oracle: one uncached forward over prompt + new tokens
        logprobs = torch.log_softmax(model(torch.tensor([ids + new]))[0].double(), dim=-1)[len(ids) - 1 : -1]
    lp = out.logprobs
    assert lp.tokens == [tokenizer.decode_bytes([t]).decode("utf-8", "replace") for t in new]
    assert lp.token_logprobs == pytest.approx([float(logprobs[i, t]) for i, t in enumerate(new)], abs=1e-4)
    for i, top in enumerate(lp.top_logprobs):
        values, order = logprobs[i].topk(3)
        expected = {tokenizer.decode_bytes([int(t)]).decode("utf-8", "replace"): float(v) for t, v in
                    zip(order, values, strict=True)}
        assert top == pytest.approx(expected, abs=1e-4)
    whole = [i for i in range(len(new)) if _is_utf8(tokenizer.decode_bytes(new[:i]))]  # tokens at a character start
    assert [lp.text_offset[i] for i in whole] == [len(tokenizer.decode(new[:i])) for i in whole]


def _is_utf8(data):
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_streamed_logprobs_come_with_their_tokens(client):
    fields = dict(model=MODEL, prompt=PROMPT, max_tokens=10, temperature=0.7, seed=5, logprobs=2)
    whole = client.completions.create(**fields).choices[0].logprobs
    tokens, values = [], []
    for chunk in client.completions.create(stream=True, **fields):
        if chunk.choices[0].logprobs:
            tokens += chunk.choices[0].logprobs.tokens
            values += chunk.choices[0].logprobs.token_logprobs
    assert tokens == whole.tokens and values == pytest.approx(whole.token_logprobs)


def test_errors_are_the_clients_exception_types_with_a_message_naming_the_field(client):
    with pytest.raises(openai.BadRequestError, match="temperature must be in") as err:
        client.completions.create(model=MODEL, prompt=PROMPT, temperature=5)
    assert err.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError, match="max_tokens must be <= 127 on this server \\(--max-tokens\\)"):
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=1000)
    with pytest.raises(openai.BadRequestError, match="maximum context length is 128 tokens; the prompt has 90 and"):
        client.completions.create(model=MODEL, prompt=PROMPT * 6, max_tokens=60)
    with pytest.raises(openai.BadRequestError, match="the prompt has 180 tokens; this server's limit is 127"):
        client.completions.create(model=MODEL, prompt=PROMPT * 12, max_tokens=1)
    with pytest.raises(openai.NotFoundError, match="serves 'tiny'"):
        client.completions.create(model="gpt-4", prompt=PROMPT)
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.BadRequestError, match="presence_penalty is not supported"):
        client.completions.create(model=MODEL, prompt=PROMPT, presence_penalty=0.5)
    with pytest.raises(openai.BadRequestError, match="outside the vocabulary"):
        client.completions.create(model=MODEL, prompt=[1, 2, 99999])


def test_metrics_count_requests_tokens_and_times_to_first_token(client, server):
    def read():
        text = httpx.get(server.url + "/metrics").text
        return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if not line.startswith("#")}

    before = read()
    outs = [client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0) for _ in range(2)]
    after = read()
    ok = 'scratchllm_requests_total{route="/v1/completions",status="200"}'
    assert after[ok] - before.get(ok, 0) == 2
    generated = sum(o.usage.completion_tokens for o in outs)
    assert after["scratchllm_completion_tokens_total"] - before["scratchllm_completion_tokens_total"] == generated
    count = "scratchllm_time_to_first_token_seconds_count"
    assert after[count] - before[count] == 2
    assert after["scratchllm_queue_length"] == 0
