"""Tiny models for generation tests, and the book's generation loop as an oracle."""

import torch

from scratchllm.model import GPT, GPTConfig


def sharp_model(pos_encoding="learned", **overrides):
    """A tiny model with large random weights, so attention is far from uniform and the
    position encoding changes which token wins (GPT-2's init is too flat to test that)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", pos_encoding=pos_encoding, context_length=32, **overrides))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3 if "emb" in name else 1.5 / p.shape[1] ** 0.5)
    return model.eval()


def book_generate(model, idx, max_new_tokens):
    """The book's generate_text_simple (and nanoGPT's sample loop): greedy, no cache, the model
    reads the last context_length tokens at every step."""
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(idx[:, -model.config.context_length :])[:, -1]
            idx = torch.cat([idx, logits.argmax(dim=-1, keepdim=True)], dim=1)
    return idx
