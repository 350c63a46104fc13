"""Text generation: run the model, pick the next token, append it, repeat.

``generate`` and ``stream`` are the one-call front of the inference engine
(``scratchllm.inference``): each prompt becomes one sequence of an ``Engine`` with a slot of its
own. With ``use_cache`` the prompt runs once (prefill) and stores every layer's keys and values in
its slot of a preallocated KV cache; each later step feeds only the newest token of every row, in
one batch. Without it every step re-runs each row's whole sequence (the book's
``generate_text_simple``), which gives the same tokens and is the tests' oracle.

Prompts of different lengths run as one batch, each at its own positions and reading only its own
tokens, so each row gets the tokens it would get alone. Picking the next token
(``sample_next``, greedy, temperature, top-k, top-p) is in ``scratchllm.inference.sampling``.

>>> import torch; from scratchllm.model import GPT, GPTConfig
>>> model = GPT(GPTConfig.preset("tiny"))
>>> generate(model, torch.tensor([[1, 2, 3]]), max_new_tokens=4).shape
torch.Size([1, 7])
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.inference import Engine, SamplingSettings, check_fits, check_sampling, eval_mode, sample_next
from scratchllm.model import GPT

__all__ = ["check_sampling", "generate", "stream", "sample_next"]

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
    seed: makes sampling reproducible: row b draws from a private generator seeded ``seed + b``
        (the global RNG is untouched), so each row equals that row generated alone with its seed.
    pad_id: the id that follows a row's stop in the tensor output while others go on.
    crop: a learned-position model that runs out of context keeps reading its last
        ``context_length`` tokens, of the prompt and then of the text as it grows (a window that
        slides, as nanoGPT's and the book's generate do), instead of raising an error.

    Returns a (B, T + n) tensor for tensor input, or one list per prompt (its ids and new
    tokens) for list input.
    """
    stops = set(stop_ids)
    new = list(stream(model, idx, max_new_tokens, temperature, top_k, top_p, stops, seed, use_cache,
                      pad_id=pad_id, crop=crop))
    if isinstance(idx, torch.Tensor):
        idx = idx if idx.dim() == 2 else idx.unsqueeze(0)
        return torch.cat([idx, torch.stack(new, dim=1).to(idx.device)], dim=1) if new else idx.clone()
    rows = []
    for b, prompt in enumerate(idx):
        out = list(prompt)
        for step in new:
            out.append(int(step[b]))
            if out[-1] in stops:
                break
        rows.append(out)
    return rows


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
    settings = SamplingSettings(max_new_tokens, temperature, top_k, top_p, None, stop_ids, crop)
    prompts = _prompts(idx)
    rows = [SamplingSettings(max_new_tokens, temperature, top_k, top_p, None if seed is None else seed + b,
                             settings.stop_ids, crop) for b in range(len(prompts))]
    if max_new_tokens == 0:
        return
    if not use_cache:
        yield from _recompute(model, prompts, rows, pad_id)
        return
    longest = max(len(p) for p in prompts)
    engine = Engine(model, max_batch=len(prompts), max_len=longest + max_new_tokens)
    sids = [engine.add(prompt, s) for prompt, s in zip(prompts, rows, strict=True)]
    while engine.active:
        tokens = {event.sid: event.token for event in engine.step()}
        yield torch.tensor([tokens.get(sid, pad_id) for sid in sids], device=model.device)


@torch.inference_mode()
def _recompute(
    model: GPT, prompts: list[list[int]], rows: list[SamplingSettings], pad_id: int
) -> Iterator[torch.Tensor]:
    """The book's loop, row by row: every step runs a row's last ``max_positions`` tokens (all of
    them when positions have no limit) through the model, no cache."""
    window = model.max_positions
    for prompt, s in zip(prompts, rows, strict=True):
        check_fits(model, len(prompt), s, window)
    texts = [list(p) for p in prompts]
    generators = [s.new_generator(model.device) for s in rows]
    done = [False] * len(texts)
    with eval_mode(model):
        for _ in range(rows[0].max_new_tokens):
            step = []
            for b, (text, s) in enumerate(zip(texts, rows, strict=True)):
                if done[b]:
                    step.append(pad_id)
                    continue
                ids = torch.tensor([text[-window:] if window else text], device=model.device)
                token = int(s.pick(model(ids, last_only=True)[:, -1], generators[b]))
                text.append(token)
                done[b] = token in s.stop_ids
                step.append(token)
            yield torch.tensor(step, device=model.device)
            if all(done):
                return


def _prompts(idx: Prompt) -> list[list[int]]:
    """The prompts as lists of ids: the rows of a (B, T) or (T,) tensor, or the lists given."""
    if isinstance(idx, torch.Tensor):
        ids = idx if idx.dim() == 2 else idx.unsqueeze(0)
        if ids.dim() != 2 or ids.shape[1] == 0:
            shape = tuple(idx.shape)
            raise ScratchLLMError(f"the prompt must be a non-empty (batch, tokens) tensor, got shape {shape}")
        return ids.tolist()
    prompts = [[int(t) for t in row] for row in idx]
    if not prompts or min(len(p) for p in prompts) == 0:
        raise ScratchLLMError("every prompt needs at least one token")
    return prompts
