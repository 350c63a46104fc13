"""/v1/chat/completions through the checkpoint's chat template (scratchllm.finetune.templates),
against the openai client: each answer equals the template's prompt generated alone, cut at the
template's stop strings."""

import json

import httpx
import openai
import pytest
from serve_helpers import MODEL, alone, text_of

from scratchllm.finetune.templates import get_template
from scratchllm.serve import ServeConfig, ServerThread, create_app

MESSAGES = [{"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": "Who painted the portrait?"}]


@pytest.fixture(scope="module", params=["chat", "alpaca"])
def template(request):
    return get_template(request.param)


@pytest.fixture(scope="module")
def chat_server(model, tokenizer, template):
    app = create_app(model, tokenizer, ServeConfig(model_name=MODEL, max_batch=4), chat_template=template)
    with ServerThread(app) as server:
        yield server


@pytest.fixture(scope="module")
def chat_client(chat_server):
    return openai.OpenAI(base_url=chat_server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def expected_answer(model, tokenizer, template, messages, max_tokens, temperature, seed=None):
    new = alone(model, tokenizer, template.prompt_ids(tokenizer, messages), max_tokens, temperature, seed=seed,
                stops=template.stop_ids(tokenizer))
    text = text_of(tokenizer, new)
    hits = [i for i in (text.find(s) for s in template.stop_strings) if i >= 0]
    return text[: min(hits)] if hits else text, len(new)


def test_a_chat_answer_is_the_templates_prompt_continued_alone(chat_client, model, tokenizer, template):
    out = chat_client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20, temperature=0.9,
                                              seed=4)
    text, n_new = expected_answer(model, tokenizer, template, MESSAGES, 20, 0.9, seed=4)
    assert out.object == "chat.completion" and out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == text
    n_prompt = len(template.prompt_ids(tokenizer, MESSAGES))
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (n_prompt, n_new)


def test_a_streamed_chat_opens_with_the_role_and_joins_to_the_same_answers(chat_client, model, tokenizer, template):
    fields = dict(model=MODEL, messages=MESSAGES, max_tokens=16, temperature=1.0, seed=8, n=2)
    chunks = list(chat_client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **fields))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    texts, roles, finishes = {}, {}, {}
    for c in chunks[:-1]:
        for choice in c.choices:
            roles.setdefault(choice.index, choice.delta.role)
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            finishes[choice.index] = choice.finish_reason or finishes.get(choice.index)
    assert roles == {0: "assistant", 1: "assistant"}
    for i in (0, 1):
        assert texts[i] == expected_answer(model, tokenizer, template, MESSAGES, 16, 1.0, seed=8 + i)[0]
        assert finishes[i] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_chat_logprobs_name_each_token_with_its_bytes(chat_client, tokenizer):
    out = chat_client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0,
                                              logprobs=True, top_logprobs=2).choices[0]
    content = out.logprobs.content
    joined = b"".join(bytes(t.bytes) for t in content).decode("utf-8", "replace")
    assert joined == out.message.content if out.finish_reason == "length" else joined.startswith(out.message.content)
    for t in content:
        assert t.token == bytes(t.bytes).decode("utf-8", "replace")
        assert len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob
        assert t.logprob == pytest.approx(t.top_logprobs[0].logprob)  # greedy: the most likely token


def test_chat_messages_out_of_turn_are_a_400_naming_them(chat_client, chat_server):
    with pytest.raises(openai.BadRequestError, match="where a user message is expected") as err:
        chat_client.chat.completions.create(model=MODEL, messages=[{"role": "assistant", "content": "Hi"}])
    assert err.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError, match="top_logprobs needs logprobs: true"):
        chat_client.chat.completions.create(model=MODEL, messages=MESSAGES, top_logprobs=2)
    r = httpx.post(chat_server.url + "/v1/chat/completions", content=json.dumps({"messages": [{"role": "tool"}]}))
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0]"
