"""Faults: a wrong key, malformed bodies, a flood past the queue, clients that leave mid-stream,
timeouts. Each gets OpenAI's error object (never a traceback), and the others are served whole."""

import threading
import time

import httpx
import openai
import pytest
from serve_helpers import MODEL, alone, text_of

from scratchllm.serve import ServeConfig, ServerThread, create_app

KEY = "sekret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def guarded(model, tokenizer):
    config = ServeConfig(model_name=MODEL, max_batch=2, max_queue=2, api_key=KEY, max_body_bytes=4096)
    with ServerThread(create_app(model, tokenizer, config)) as server:
        yield server


def openai_client(server, key=KEY):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def in_flight(server):
    return httpx.get(server.url + "/health").json()["in_flight"]


def steps(server):
    text = httpx.get(server.url + "/metrics", headers=AUTH).text
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith("scratchllm_decode_steps_total")))


def wait_idle(server, seconds=5.0):
    deadline = time.monotonic() + seconds
    while in_flight(server) and time.monotonic() < deadline:
        time.sleep(0.01)
    return in_flight(server) == 0


def test_every_route_but_health_and_the_page_needs_the_key(guarded):
    with pytest.raises(openai.AuthenticationError, match="wrong API key"):
        openai_client(guarded, "wrong").models.list()
    for route in ("/v1/models", "/metrics"):
        assert httpx.get(guarded.url + route).status_code == 401
        assert httpx.get(guarded.url + route, headers={"Authorization": f"Bearer {KEY}x"}).status_code == 401
    r = httpx.post(guarded.url + "/v1/completions", json={"prompt": "Hi"}, headers={"Authorization": KEY})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(guarded.url + "/health").status_code == 200
    assert httpx.get(guarded.url + "/").status_code == 200
    assert [m.id for m in openai_client(guarded).models.list().data] == [MODEL]


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "the request body is not valid JSON"),
    (b"\xff\xfe\x00", 400, "the request body is not valid JSON"),
    (b"[1, 2]", 400, "the request body must be a JSON object"),
    (b'{"prompt": 5}', 400, "prompt must be a string"),
    (b'{"prompt": "Hi", "max_tokens": "ten"}', 400, "max_tokens must be an integer"),
    (b'{"prompt": "Hi", "stop": ["a", "b", "c", "d", "e"]}', 400, "up to 4"),
    (b'{"prompt": "Hi", "n": 99}', 400, "n must be <= 8 on this server (--max-n)"),
    (b'{"prompt": "Hi", "temperature": NaN}', 400, "temperature must be in [0, 2]"),
    (b'{"prompt": "' + b"x" * 5000 + b'"}', 413, "larger than this server's limit of 4096 bytes (--max-body-bytes)"),
])
def test_malformed_bodies_get_openai_error_objects(guarded, body, status, message):
    r = httpx.post(guarded.url + "/v1/completions", content=body, headers=AUTH)
    assert r.status_code == status
    error = r.json()["error"]
    assert message in error["message"] and set(error) == {"message", "type", "param", "code"}


def test_unknown_routes_and_methods_are_error_objects_too(guarded):
    r = httpx.get(guarded.url + "/v1/completions", headers=AUTH)
    assert r.status_code == 405 and "Method Not Allowed" in r.json()["error"]["message"]
    r = httpx.get(guarded.url + "/v1/nothing", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_a_flood_past_the_queue_gets_429_and_every_accepted_request_is_whole(guarded, model, tokenizer):
    prompts = [f"Gisburn {i}" for i in range(12)]  # 12 at once for 2 slots + 2 queue places
    barrier = threading.Barrier(len(prompts))
    results = {}

    def run(i):
        client = openai_client(guarded)
        barrier.wait()
        try:
            out = client.completions.create(model=MODEL, prompt=prompts[i], max_tokens=40, temperature=0)
            results[i] = out.choices[0].text
        except openai.RateLimitError as err:
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    refused = [r for r in results.values() if isinstance(r, openai.RateLimitError)]
    served = {i: r for i, r in results.items() if isinstance(r, str)}
    assert len(results) == len(prompts) and refused and len(served) >= 4
    assert all(r.response.headers["retry-after"] == "1" and "busy" in r.message for r in refused)
    for i, text in served.items():
        assert text == text_of(tokenizer, alone(model, tokenizer, prompts[i], 40, 0))
    assert wait_idle(guarded)


def test_a_client_that_leaves_mid_stream_frees_its_slot_at_once(guarded, model, tokenizer):
    before = steps(guarded)
    body = {"model": MODEL, "prompt": "He", "max_tokens": 120, "temperature": 0, "stream": True}
    with httpx.stream("POST", guarded.url + "/v1/completions", json=body, headers=AUTH) as r:
        events = r.iter_lines()
        assert [next(events) for _ in range(6)][0].startswith("data: {")  # 3 events (each line, then a blank)
    assert wait_idle(guarded, 2.0)
    left_after = steps(guarded) - before
    assert left_after < 60, f"the engine went on for {left_after} of 120 steps after the client left"
    # a non-streaming client that gives up: its sequence is cancelled too
    before = steps(guarded)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(guarded.url + "/v1/completions", headers=AUTH, timeout=httpx.Timeout(5, read=0.02),
                   json={"model": MODEL, "prompt": "He", "max_tokens": 120, "temperature": 0})
    assert wait_idle(guarded, 2.0)
    assert steps(guarded) - before < 100
    # and the server goes on serving, whole
    out = openai_client(guarded).completions.create(model=MODEL, prompt="He", max_tokens=30, temperature=0.7, seed=1)
    assert out.choices[0].text == text_of(tokenizer, alone(model, tokenizer, "He", 30, 0.7, seed=1))


def test_a_request_past_its_timeout_is_an_error_and_frees_its_slot(model, tokenizer):
    config = ServeConfig(model_name=MODEL, request_timeout=0.0005)
    with ServerThread(create_app(model, tokenizer, config)) as server:
        client = openai_client(server, "unused")
        with pytest.raises(openai.InternalServerError, match="--request-timeout"):
            client.completions.create(model=MODEL, prompt="He", max_tokens=100)
        with pytest.raises(openai.APIError, match="--request-timeout"):
            list(client.completions.create(model=MODEL, prompt="He", max_tokens=100, stream=True))
        assert wait_idle(server)
