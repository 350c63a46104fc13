"""The serve tests' model and oracle: the same request generated alone by the book's loop (no
cache, no batch, no server)."""

from __future__ import annotations

import torch

from scratchllm.generate import generate
from scratchllm.model import GPT, GPTConfig
from scratchllm.tokenizer import ENDOFTEXT

MODEL = "tiny"


def tiny_lm(tokenizer, context_length=128, seed=0):
    """Random weights, large enough that the next token depends on the text (not a flat distribution)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, context_length=context_length))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3 if "emb" in name else 1.5 / p.shape[1] ** 0.5)
    return model.eval()


def alone(model, tokenizer, prompt, max_tokens, temperature=1.0, top_k=None, top_p=None, seed=None, stops=None):
    """The oracle: new token ids of ``prompt`` generated alone, without a cache (it stops after
    <|endoftext|>, which is kept)."""
    ids = tokenizer.encode_ordinary(prompt) if isinstance(prompt, str) else list(prompt)
    eot = [tokenizer.special_tokens[ENDOFTEXT]] if stops is None else stops
    out = generate(model, [ids], max_tokens, temperature, top_k, top_p, eot, seed, use_cache=False)[0]
    return out[len(ids):]


def text_of(tokenizer, new_ids):
    """What OpenAI's API returns for these new tokens: their text, without the end-of-text token."""
    eot = tokenizer.special_tokens[ENDOFTEXT]
    return tokenizer.decode([t for t in new_ids if t != eot])
