"""A tiny language model and its tokenizer, served on a free port of 127.0.0.1, and an OpenAI client for it."""

from __future__ import annotations

import openai
import pytest
from serve_helpers import MODEL, tiny_lm

from scratchllm.serve import ServeConfig, ServerThread, create_app
from scratchllm.tokenizer import BPETokenizer


@pytest.fixture(scope="session")
def tokenizer(verdict_path):
    return BPETokenizer.train(verdict_path.read_text(encoding="utf-8"), vocab_size=400, progress=False)


@pytest.fixture(scope="session")
def model(tokenizer):
    return tiny_lm(tokenizer)


@pytest.fixture(scope="module")
def server(model, tokenizer):
    app = create_app(model, tokenizer, ServeConfig(model_name=MODEL, max_batch=4, max_queue=16))
    with ServerThread(app) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
