"""Picking the next token, and the per-sequence settings that say how.

Temperature 0 takes the most likely token (greedy); otherwise the logits are divided by the
temperature, optionally cut to the ``top_k`` most likely tokens and/or to the smallest set whose
probability reaches ``top_p`` (nucleus sampling), and one token is drawn.

>>> settings = SamplingSettings(max_new_tokens=20, temperature=0.8, top_k=50, seed=1, stop_ids=[0])
>>> settings.stop_ids
frozenset({0})
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from scratchllm.errors import check_range


@dataclass(frozen=True)
class SamplingSettings:
    """How one sequence is continued.

    max_new_tokens: it finishes after this many new tokens ("length").
    temperature, top_k, top_p: as ``sample_next``; temperature 0 is greedy.
    seed: the sequence draws from its own ``torch.Generator`` seeded with it (reproducible, and
        independent of the other sequences in a batch and of the global RNG); None: the global RNG.
    stop_ids: it finishes after producing one of these ("stop"; the stop token is kept).
    crop: a sequence that outgrows the engine's slot (a learned-position model's context) goes on
        reading its last ``max_len`` tokens, a window that slides along the text (the book's
        ``generate_text_simple``); without it such a sequence is refused when it is added.
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop_ids: Iterable[int] = frozenset()
    crop: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop_ids", frozenset(int(i) for i in self.stop_ids))
        check_sampling(self.max_new_tokens, self.temperature, self.top_k, self.top_p)

    def new_generator(self, device: torch.device | str = "cpu") -> torch.Generator | None:
        """A private generator seeded with ``seed`` (None without a seed: the global RNG)."""
        return torch.Generator(device).manual_seed(self.seed) if self.seed is not None else None

    def pick(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``sample_next`` with these settings: logits (B, vocab) -> (B,) token ids."""
        return sample_next(logits, self.temperature, self.top_k, self.top_p, generator)


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Refuse sampling settings out of range (or not finite) with one line naming the setting."""
    check_range("max_new_tokens", max_new_tokens, 0)
    check_range("temperature", temperature, 0, note="0 = greedy")
    if top_k is not None:
        check_range("top_k", top_k, 1, note="or None for no limit")
    if top_p is not None:
        check_range("top_p", top_p, 0, 1, low_open=True)


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
