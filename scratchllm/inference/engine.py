"""The inference engine: sequences join, decode together one token per step, and leave.

Generation state lives here, not in the model: per sequence its tokens, its ``SamplingSettings``
and private generator, and a slot (a row) of one preallocated KV cache, (max_batch, heads,
max_len, head_dim) per layer. Sequences of different lengths decode in one batch, each at its
own positions and reading only its own filled columns; they join (``add``) and leave (a stop id,
``max_new_tokens``, ``cancel``) between steps, which is what a server needs for continuous
batching. Each ``step()``:

1. admit: waiting sequences take free slots, oldest first;
2. fill: every running sequence gets all its tokens but the last into its slot: a joining one its
   prompt (prefill, in chunks of ``prefill_chunk`` tokens), one that outgrew its slot (``crop``)
   the last ``max_len - 1`` tokens of its text, recomputed (see below);
3. decode: one forward over every running sequence's last token, (n, 1): row i writes its keys and
   values at column c_i (= its position), attends to columns [0, c_i] (a per-row key mask) and
   gives the logits of its next token;
4. sample each row with its own settings; a sequence that produced a stop id or its
   ``max_new_tokens``-th token finishes, and its slot is free for the next one.

Running sequences are rows 0..n-1 of the cache (the last row moves into a freed one), so a
decode step reads views of the cache, never a copy. A state-space layer (``model/mamba.py``)
keeps a fixed-size state in its slot instead of keys and values; it is cleared when a sequence
starts filling the slot and advanced by every token the slot takes in.

A sequence longer than a slot (``crop``, a learned-position model past its context) slides: the
model reads the last ``max_len`` tokens at positions 0..max_len-1, as the book's
``generate_text_simple`` does. A window that moved by one token gives every token a new learned
position, so every key and value changes; they are recomputed at each such step (a rolling cache
would not equal the book's output; docs/generation.md has the cost).

>>> import torch; from scratchllm.model import GPT, GPTConfig
>>> engine = Engine(GPT(GPTConfig.preset("tiny")), max_batch=2)
>>> a = engine.add([1, 2, 3], SamplingSettings(max_new_tokens=2))
>>> b = engine.add([4, 5], SamplingSettings(max_new_tokens=3, temperature=0.8, seed=0))
>>> [(e.sid, e.finished) for e in engine.step()]
[(0, None), (1, None)]
>>> [(e.sid, e.finished) for e in engine.step()]
[(0, 'length'), (1, None)]
>>> engine.active
[1]
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from scratchllm.errors import ScratchLLMError
from scratchllm.inference.sampling import SamplingSettings
from scratchllm.model.attention import KVCache


class Event(NamedTuple):
    """One new token of one sequence. ``finished``: None while it goes on, else why it ended:
    "stop" (the token is one of its stop ids) or "length" (its max_new_tokens-th token)."""

    sid: int
    token: int
    finished: str | None


@dataclass
class _Sequence:
    sid: int
    tokens: list[int]  # the prompt, then every new token
    n_prompt: int
    settings: SamplingSettings
    generator: torch.Generator | None
    start: int = 0  # index in tokens of the token at slot column 0 (> 0 once the window slid)
    cached: int = 0  # slot columns [0, cached) hold keys and values of tokens[start : start + cached]
    stops: frozenset[int] = field(default_factory=frozenset)

    @property
    def n_new(self) -> int:
        return len(self.tokens) - self.n_prompt


class _Rows(KVCache):
    """Rows ``rows`` of the engine's cache for one forward, row i writing at its own ``columns[i]``
    (n, T); the model sees ``width - T`` filled positions before the new tokens."""

    def __init__(self, cache: KVCache, rows: slice, columns: torch.Tensor, width: int) -> None:
        super().__init__(cache.layers)
        self.rows, self.columns, self.width = rows, columns, width
        self.length = width - columns.shape[1]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layers[layer].write(self.rows, self.columns, k, v, self.width)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode (no dropout) inside, its own mode again after."""
    was_training = model.training
    if not was_training:  # nothing to switch: a server steps an eval-mode model thousands of times a second
        yield
        return
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def check_fits(model: nn.Module, n_prompt: int, settings: SamplingSettings, max_len: int | None) -> None:
    """Refuse a prompt that with its new tokens does not fit ``max_len`` positions (None: any),
    unless ``settings.crop`` lets it slide."""
    if max_len is None or settings.crop or n_prompt + settings.max_new_tokens <= max_len:
        return
    if max_len == model.max_positions:
        where = f"the model's context_length of {max_len} (learned positions)"
    else:
        where = f"the engine's max_len of {max_len} (the positions of a cache slot)"
    raise ScratchLLMError(
        f"prompt of {n_prompt} tokens + {settings.max_new_tokens} new tokens exceeds {where}; shorten the prompt, "
        "lower max_new_tokens, or let the model read only its last tokens (crop=True)"
    )


class _TransposedHead:
    """A plain ``nn.Linear`` output head applied as ``h @ W.T`` from a copy of ``W.T`` laid out
    (in, out). On a CPU, MKL's matrix-vector product is about 1.7x faster in that layout than in
    nn.Linear's (out, in): 8.4 against 14.7 ms per token for GPT-2's 50257 x 768 head, a sixth
    of a 124M decode step (docs/benchmarks.md, "Generation"). The copy costs one more head's
    memory for the engine's life; the engine's model does not train meanwhile."""

    def __init__(self, head: nn.Linear) -> None:
        self.weight_t = head.weight.detach().t().contiguous()  # (d_model, vocab)
        self.bias = None if head.bias is None else head.bias.detach()

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        logits = h @ self.weight_t  # (n, d_model) @ (d_model, vocab)
        return logits if self.bias is None else logits + self.bias


def _decode_head(model: nn.Module) -> _TransposedHead | None:
    """The faster head for decode steps on a CPU, where the model's head is a plain row-major
    ``nn.Linear`` (a LoRA, quantized or replaced head keeps its own forward, and a head already in
    the decode layout of ``scratchllm.model.lay_out_weights`` needs no copy)."""
    head = getattr(model, "out_head", None)
    if type(head) is nn.Linear and type(head.weight.data) is torch.Tensor and head.weight.device.type == "cpu" \
            and head.weight.dtype == torch.float32 and head.weight.is_contiguous():  # (not a DTensor shard)
        return _TransposedHead(head)
    return None


class Engine:
    """Batched generation for sequences that come and go; see the module docstring.

    model: a ``GPT`` (anything with ``new_cache``, ``max_positions`` and the GPT's ``forward``).
    max_batch: slots, the most sequences decoding at once; more wait in a queue.
    max_len: positions per slot (prompt + new tokens of one sequence); default the model's
        context_length. A learned-position model cannot go past its context, so it caps max_len.
    prefill_chunk: a joining prompt runs through the model this many tokens at a time (bounds the
        (T, T) attention of a long prompt); None: all at once.
    """

    def __init__(
        self, model: nn.Module, max_batch: int = 8, max_len: int | None = None, *, prefill_chunk: int | None = None
    ) -> None:
        if max_batch < 1:
            raise ScratchLLMError(f"max_batch must be at least 1, got {max_batch}")
        if prefill_chunk is not None and prefill_chunk < 1:
            raise ScratchLLMError(f"prefill_chunk must be at least 1 (or None), got {prefill_chunk}")
        self.model = model
        self.max_batch = max_batch
        limit = model.max_positions
        max_len = max_len or model.config.context_length
        self.max_len = min(max_len, limit) if limit is not None else max_len
        self.prefill_chunk = prefill_chunk
        self.device = model.device
        with torch.inference_mode():
            self.cache = model.new_cache(max_batch, self.max_len)
            self._head = _decode_head(model)
        self._rows: list[_Sequence] = []  # running: row i of the cache is self._rows[i]'s slot
        self._waiting: deque[_Sequence] = deque()
        self._next_sid = 0
        # The last step's logits (n, vocab), row i for events[i]: a server reads log-probabilities here.
        self.last_logits: torch.Tensor | None = None

    # -- joining and leaving ----------------------------------------------------------------

    def add(self, prompt: Sequence[int] | torch.Tensor, settings: SamplingSettings | None = None) -> int:
        """Queue a sequence; it joins at the next ``step`` with a free slot. Returns its id."""
        settings = settings or SamplingSettings()
        tokens = prompt.tolist() if isinstance(prompt, torch.Tensor) else [int(t) for t in prompt]
        if not tokens:
            raise ScratchLLMError("every prompt needs at least one token")
        if settings.max_new_tokens < 1:
            raise ScratchLLMError(f"a sequence needs max_new_tokens of at least 1, got {settings.max_new_tokens}")
        check_fits(self.model, len(tokens), settings, self.max_len)
        vocab = self.model.config.vocab_size
        if not all(0 <= t < vocab for t in tokens):
            raise ScratchLLMError(f"prompt token ids must be in [0, {vocab}), got {min(tokens)}..{max(tokens)}")
        seq = _Sequence(self._next_sid, tokens, len(tokens), settings, settings.new_generator(self.device),
                        stops=settings.stop_ids)
        self._next_sid += 1
        self._waiting.append(seq)
        return seq.sid

    def cancel(self, sid: int) -> list[int]:
        """Stop a sequence now (waiting or running) and free its slot; returns its tokens."""
        for seq in self._waiting:
            if seq.sid == sid:
                self._waiting.remove(seq)
                return seq.tokens
        for row, seq in enumerate(self._rows):
            if seq.sid == sid:
                self._release(row)
                return seq.tokens
        raise ScratchLLMError(f"no sequence {sid} in this engine (it finished, was cancelled, or never was)")

    @property
    def active(self) -> list[int]:
        """Ids of the sequences not yet finished: running (oldest row first), then waiting."""
        return [s.sid for s in self._rows] + [s.sid for s in self._waiting]

    @property
    def running(self) -> list[int]:
        """Ids of the sequences that hold a slot."""
        return [s.sid for s in self._rows]

    def tokens(self, sid: int) -> list[int]:
        """The prompt and new tokens so far of an active sequence."""
        for seq in (*self._rows, *self._waiting):
            if seq.sid == sid:
                return list(seq.tokens)
        raise ScratchLLMError(f"no sequence {sid} in this engine (it finished, was cancelled, or never was)")

    # -- one step ---------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[Event]:
        """One new token for every running sequence (after admitting waiting ones), in row order."""
        while self._waiting and len(self._rows) < self.max_batch:
            self._rows.append(self._waiting.popleft())
        if not self._rows:
            return []
        with eval_mode(self.model):
            for row, seq in enumerate(self._rows):
                self._fill(row, seq)
            logits = self._decode()  # (n, vocab)
        self.last_logits = logits
        tokens = logits.argmax(dim=-1).tolist()  # greedy rows; sampled rows draw below
        events = []
        for i, seq in enumerate(self._rows):
            if seq.settings.temperature > 0:
                tokens[i] = int(seq.settings.pick(logits[i : i + 1], seq.generator))
            seq.tokens.append(tokens[i])
            seq.cached += 1  # the decode stored the fed token's keys and values
            finished = "stop" if tokens[i] in seq.stops else "length" if seq.n_new >= seq.settings.max_new_tokens \
                else None
            events.append(Event(seq.sid, tokens[i], finished))
        for row in reversed(range(len(self._rows))):
            if events[row].finished:
                self._release(row)
        return events

    def _fill(self, row: int, seq: _Sequence) -> None:
        """Keys and values of all of ``seq``'s tokens but the last into its slot."""
        n = len(seq.tokens)
        if n - seq.start > self.max_len:  # the last token would fall outside the slot: slide
            seq.start, seq.cached = n - self.max_len, 0
        if seq.cached == 0:  # the slot starts over: a state-space layer's state back to zeros
            for layer in self.cache.layers:
                layer.clear_row(row)
        todo = seq.tokens[seq.start + seq.cached : n - 1]
        chunk = self.prefill_chunk or max(len(todo), 1)
        for i in range(0, len(todo), chunk):
            ids = torch.tensor([todo[i : i + chunk]], device=self.device)  # (1, T)
            T = ids.shape[1]
            columns = torch.arange(seq.cached, seq.cached + T, device=self.device)[None]  # (1, T)
            # positions = columns (the model's default after cache.length = seq.cached), causal mask
            self.model(ids, cache=_Rows(self.cache, slice(row, row + 1), columns, seq.cached + T),
                       last_only=True, hidden=True)
            seq.cached += T

    def _decode(self) -> torch.Tensor:
        """Logits (n, vocab) of the next token of every running sequence."""
        cols = [seq.cached for seq in self._rows]  # each row's last token goes at its column = position
        width = max(cols) + 1
        ids = torch.tensor([[seq.tokens[-1]] for seq in self._rows], device=self.device)  # (n, 1)
        columns = torch.tensor(cols, device=self.device)[:, None]  # (n, 1)
        mask = None  # rows of one length read every column
        if min(cols) != width - 1:  # row i reads columns [0, c_i]: (n, 1, 1, width)
            mask = (torch.arange(width, device=self.device) <= columns)[:, None, None, :]
        view = _Rows(self.cache, slice(0, len(self._rows)), columns, width)
        if self._head is None:
            return self.model(ids, cache=view, positions=columns, mask=mask, last_only=True)[:, -1]
        h = self.model(ids, cache=view, positions=columns, mask=mask, last_only=True, hidden=True)[:, -1]
        return self._head(h)

    @torch.inference_mode()  # the cache is an inference tensor (cancel runs outside a step)
    def _release(self, row: int) -> None:
        """Free ``row``'s slot: the last running row moves into it, so rows stay 0..n-1."""
        last = len(self._rows) - 1
        if row != last:
            moved = self._rows[last]
            for layer in self.cache.layers:
                layer.move_row(last, row, moved.cached)
            self._rows[row] = moved
        self._rows.pop()
