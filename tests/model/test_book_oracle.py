"""The book's own code (PyPI ``llms-from-scratch``, chapters 4 and 5) as the oracle for our GPT.

Its ``GPTModel`` with our weights gives our logits, and its ``generate`` our tokens, for the
shape the book builds: learned positions, LayerNorm, GELU (tanh), separate W_query/W_key/W_value.
"""

from __future__ import annotations

import pytest
import torch

from scratchllm.generate import generate
from scratchllm.model import GPT, GPTConfig

ch04 = pytest.importorskip("llms_from_scratch.ch04")
ch05 = pytest.importorskip("llms_from_scratch.ch05")
from book_models import book_copy  # noqa: E402  (after the skip: it imports the book's package)


@pytest.fixture(params=[False, True], ids=["no-qkv-bias", "qkv-bias"])
def pair(request):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=211, context_length=24, d_model=48, n_heads=4, n_layers=3, dropout=0.0,
                    qkv_bias=request.param, gelu="tanh")
    model = GPT(cfg).eval()
    with torch.no_grad():  # move every weight off its init, biases and norms included
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model, book_copy(model)


def test_books_gpt_model_gives_our_logits(pair):
    model, book = pair
    idx = torch.randint(0, 211, (3, 24))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), book(idx), atol=1e-5, rtol=1e-5)
        model.set_impl("explicit")
        torch.testing.assert_close(model(idx), book(idx), atol=1e-5, rtol=1e-5)


def test_books_generate_gives_our_tokens_past_the_context(pair):
    model, book = pair
    prompt = torch.randint(0, 211, (1, 10))
    theirs = ch05.generate(book, prompt, max_new_tokens=40, context_size=24)  # 50 > context 24: it slides
    ours = generate(model, prompt, 40, crop=True)
    assert ours.tolist() == theirs.tolist()
    top_k = ch05.generate(book, prompt, max_new_tokens=12, context_size=24, top_k=1, temperature=0.0)
    assert generate(model, prompt, 12, top_k=1).tolist() == top_k.tolist()
