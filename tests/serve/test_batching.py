"""Continuous batching: requests that arrive while another decodes join the running batch, and
each answer equals the same request generated alone (no cache, no batch, no server)."""

import threading
import time

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import MODEL, alone, text_of

from scratchllm.serve import ServeConfig, ServerThread, create_app

LONG = "I had always thought Jack Gisburn rather a cheap genius"
JOINERS = {  # each joins once the long request has streamed 5 pieces; 3 slots, so some wait in the queue
    "greedy": dict(prompt="He laughed", max_tokens=12, temperature=0),
    "top_k": dict(prompt="Mrs. Gisburn", max_tokens=16, temperature=1.1, seed=2, top_k=30),
    "top_p": dict(prompt="the picture", max_tokens=10, temperature=0.8, seed=9, top_p=0.7),
    "n=2": dict(prompt="Stroud", max_tokens=8, temperature=1.0, seed=4, n=2),
}


def metric(url, name):
    families = text_string_to_metric_families(httpx.get(url + "/metrics").text)
    return next(s.value for f in families for s in f.samples if s.name == name)


def test_requests_joining_mid_stream_each_equal_the_request_alone(model, tokenizer):
    long_new = alone(model, tokenizer, LONG, 48, 0)
    assert len(long_new) == 48  # runs its full length, so the others join while it decodes
    app = create_app(model, tokenizer, ServeConfig(model_name=MODEL, max_batch=3, max_queue=8))
    got, times, errors = {}, {}, []
    with ServerThread(app) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        started = threading.Event()

        def run(key, fields):
            try:
                top_k = fields.pop("top_k", None)
                texts = {}
                for chunk in client.completions.create(model=MODEL, stream=True, extra_body={"top_k": top_k},
                                                       **fields):
                    times.setdefault(key, []).append(time.monotonic())
                    for c in chunk.choices:
                        texts[c.index] = texts.get(c.index, "") + c.text
                    if key == "long" and len(times[key]) >= 5:
                        started.set()
                got[key] = texts
            except Exception as err:  # reported below: a thread's exception would pass unseen
                errors.append((key, err))
                started.set()

        threads = [threading.Thread(target=run, args=("long", dict(prompt=LONG, max_tokens=48, temperature=0)))]
        threads[0].start()
        assert started.wait(30)
        threads += [threading.Thread(target=run, args=(key, dict(fields))) for key, fields in JOINERS.items()]
        for t in threads[1:]:
            t.start()
        for t in threads:
            t.join(60)
        steps = metric(server.url, "scratchllm_decode_steps_total")
        stepped = metric(server.url, "scratchllm_stepped_sequences_total")
    assert not errors
    assert got["long"] == {0: text_of(tokenizer, long_new)}
    for key, f in JOINERS.items():
        for i in range(f.get("n", 1)):
            seed = None if f.get("seed") is None else f["seed"] + i
            new = alone(model, tokenizer, f["prompt"], f["max_tokens"], f["temperature"], f.get("top_k"),
                        f.get("top_p"), seed)
            assert got[key][i] == text_of(tokenizer, new), key
        assert times[key][0] < times["long"][-1], f"{key} streamed only after the long request ended"
    # one decode step served several sequences: fewer steps than tokens generated
    assert stepped > steps * 1.3
