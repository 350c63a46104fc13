"""Text generation: run the model, pick the next token, append it, repeat.

Picking: temperature 0 takes the most likely token (greedy); otherwise the logits are divided
by the temperature, optionally cut to the ``top_k`` most likely tokens and/or to the smallest
set whose probability reaches ``top_p`` (nucleus sampling), and one token is drawn.

Speed: with ``use_cache`` the prompt runs once (prefill) and stores every layer's keys and values
in a preallocated ``KVCache``; each later step feeds only the newest token. Without it every step
re-runs the whole sequence (the book's ``generate_text_simple``), which gives the same tokens.

Prompts of different lengths run as one batch: they are left-padded, an attention mask keeps
real tokens from reading the padding, and each row's positions count from its first real token,
so each row gets the tokens it would get alone.

>>> import torch; from scratchllm.model import GPT, GPTConfig
>>> model = GPT(GPTConfig.preset("tiny"))
>>> generate(model, torch.tensor([[1, 2, 3]]), max_new_tokens=4).shape
torch.Size([1, 7])
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch

from scratchllm.errors import ScratchLLMError, check_range
from scratchllm.model import GPT
from scratchllm.model.attention import causal_mask

Prompt = torch.Tensor | Sequence[Sequence[int]]


def generate(
    model: GPT,
    idx: Prompt,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_ids: Iterable[int] = (),
    seed: int | None = None,
    use_cache: bool = True,
    *,
    pad_id: int = 0,
    crop: bool = False,
) -> torch.Tensor | list[list[int]]:
    """``idx`` with up to ``max_new_tokens`` new tokens appended.

    idx: a (B, T) tensor of token ids, or a list of B lists of ids of any lengths.
    stop_ids: a row stops after it produces one of these (the stop token is kept).
    seed: makes sampling reproducible (a private generator; the global RNG is untouched).
    pad_id: the id that left-pads short prompts and follows a row's stop while others go on.
    crop: a learned-position model that runs out of context keeps reading its last
        ``context_length`` tokens, of the prompt and then of the text as it grows (a window that
        slides, as nanoGPT's and the book's generate do), instead of raising an error.

    Returns a (B, T + n) tensor for tensor input, or one list per prompt (its ids and new
    tokens) for list input.
    """
    new = list(stream(model, idx, max_new_tokens, temperature, top_k, top_p, stop_ids, seed, use_cache,
                      pad_id=pad_id, crop=crop))
    if isinstance(idx, torch.Tensor):
        idx = idx if idx.dim() == 2 else idx.unsqueeze(0)
        return torch.cat([idx, torch.stack(new, dim=1).to(idx.device)], dim=1) if new else idx.clone()
    stops = set(stop_ids)
    rows = []
    for b, prompt in enumerate(idx):
        out = list(prompt)
        for step in new:
            out.append(int(step[b]))
            if out[-1] in stops:
                break
        rows.append(out)
    return rows


@torch.inference_mode()
def stream(
    model: GPT,
    idx: Prompt,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_ids: Iterable[int] = (),
    seed: int | None = None,
    use_cache: bool = True,
    *,
    pad_id: int = 0,
    crop: bool = False,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, a (B,) tensor, as soon as it is chosen.

    Arguments as ``generate``. A row that has stopped yields its stop id once and ``pad_id``
    afterwards; the iterator ends when every row has stopped or after ``max_new_tokens``.
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    device = model.device
    ids, valid = _left_pad(idx, pad_id, device)
    ids, valid = _fit_context(model, ids, valid, max_new_tokens, crop)
    stops = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    generator = torch.Generator(device).manual_seed(seed) if seed is not None else None
    B, T = ids.shape
    total = T + max_new_tokens
    # Learned positions stop at context_length: past it (crop) the model reads a sliding window.
    window = model.config.context_length if model.config.pos_encoding == "learned" else total

    # Which key positions hold real tokens, and the position each row's next token takes.
    key_valid = torch.ones(B, total, dtype=torch.bool, device=device)
    positions = None
    if valid is not None:
        key_valid[:, :T] = valid
        positions = (valid.cumsum(dim=1) - 1).clamp(min=0)  # (B, T)

    was_training = model.training
    model.eval()
    try:
        cache = model.new_cache(B, min(total, window)) if use_cache else None
        seq = torch.empty(B, total, dtype=torch.long, device=device)
        seq[:, :T] = ids
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        length, step_ids, step_pos = T, ids, positions
        for _ in range(max_new_tokens):
            if cache is not None and length >= window:
                cache = None  # the window slides from here: every position shifts, so each step recomputes it
            if cache is not None:
                mask = _mask(key_valid[:, :length], step_ids.shape[1]) if valid is not None else None
                logits = model(step_ids, cache=cache, positions=step_pos, mask=mask, last_only=True)
            else:
                # the last `window` positions: each row's last real tokens (its own padding only
                # where it has fewer), numbered from 0 at its first real token in the window
                start = max(0, length - window)
                keys = key_valid[:, start:length]
                mask = _mask(keys, length - start) if valid is not None else None
                window_pos = (keys.cumsum(dim=1) - 1).clamp(min=0) if valid is not None else None
                logits = model(seq[:, start:length], positions=window_pos, mask=mask, last_only=True)
            token = sample_next(logits[:, -1], temperature, top_k, top_p, generator)  # (B,)
            if len(stops):
                token = torch.where(finished, pad_id, token)
                finished |= torch.isin(token, stops)
            yield token
            if len(stops) and bool(finished.all()):
                return
            seq[:, length] = token
            length += 1
            step_ids = token[:, None]
            if positions is not None:
                step_pos = positions[:, -1:] + (length - T)  # (B, 1)
    finally:
        model.train(was_training)


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row from ``logits`` (B, vocab); temperature 0 = argmax.

    >>> sample_next(torch.tensor([[0.1, 3.0, 0.2]]))
    tensor([1])
    """
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the more likely ones already reach top_p (the first always stays)
        drop = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Refuse sampling settings out of range (or not finite) with one line naming the setting."""
    check_range("max_new_tokens", max_new_tokens, 0)
    check_range("temperature", temperature, 0, note="0 = greedy")
    if top_k is not None:
        check_range("top_k", top_k, 1, note="or None for no limit")
    if top_p is not None:
        check_range("top_p", top_p, 0, 1, low_open=True)


def _left_pad(idx: Prompt, pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, T) ids and a (B, T) mask of real tokens (None when no row is padded)."""
    if isinstance(idx, torch.Tensor):
        ids = idx if idx.dim() == 2 else idx.unsqueeze(0)
        if ids.dim() != 2 or ids.shape[1] == 0:
            shape = tuple(idx.shape)
            raise ScratchLLMError(f"the prompt must be a non-empty (batch, tokens) tensor, got shape {shape}")
        return ids.to(device=device, dtype=torch.long), None
    lengths = [len(row) for row in idx]
    if not lengths or min(lengths) == 0:
        raise ScratchLLMError("every prompt needs at least one token")
    T = max(lengths)
    ids = torch.full((len(idx), T), pad_id, dtype=torch.long)
    valid = torch.zeros(len(idx), T, dtype=torch.bool)
    for b, row in enumerate(idx):
        ids[b, T - len(row) :] = torch.as_tensor(row, dtype=torch.long)
        valid[b, T - len(row) :] = True
    return ids.to(device), (valid.to(device) if min(lengths) < T else None)


def _fit_context(model: GPT, ids, valid, max_new_tokens: int, crop: bool):
    """A learned-position model cannot see past its context: refuse, or (crop) keep the prompt's
    last ``context_length`` tokens; the window then slides in ``stream``."""
    cfg = model.config
    if cfg.pos_encoding != "learned" or ids.shape[1] + max_new_tokens <= cfg.context_length:
        return ids, valid
    if not crop:
        raise ScratchLLMError(
            f"prompt of {ids.shape[1]} tokens + {max_new_tokens} new tokens exceeds the model's context_length of "
            f"{cfg.context_length} (learned positions); shorten the prompt, lower max_new_tokens, "
            "or let the model read only its last tokens (crop=True)"
        )
    ids = ids[:, -cfg.context_length :]
    valid = valid[:, -cfg.context_length :] if valid is not None else None
    return ids, (valid if valid is not None and not bool(valid.all()) else None)


def _mask(key_valid: torch.Tensor, n_queries: int) -> torch.Tensor:
    """(B, 1, T, L): causal, and no real token reads padding. A padding query reads itself, so
    that no softmax row is empty (its output is never used)."""
    L = key_valid.shape[1]
    causal = causal_mask(n_queries, L, key_valid.device)  # (T, L)
    itself = torch.eye(n_queries, L, dtype=torch.bool, device=key_valid.device).roll(L - n_queries, dims=1)
    return (causal & (key_valid[:, None, None, :] | itself))
