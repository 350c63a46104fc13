"""Sliding-window attention: each query reads only the ``window`` latest tokens (itself included),
and, with attention sinks (StreamingLLM, Xiao et al. 2023), also the first ``sinks`` tokens.

    query i reads key j  iff  j <= i  and  (i - j < window  or  j < sinks)

A layer's output then depends on at most ``window`` tokens, but information still travels
further: L stacked layers see back L x (window - 1) tokens. Long texts cost T x window instead
of T^2 (``patterns.blockwise_attention`` never builds the (T, T) mask), and generation keeps a
**rolling cache** (``RollingKV``) of the last ``window`` tokens and the sinks only, so the memory
of decoding stays constant however long the text grows.

The window is per layer: ``config.window`` is one number, or a list with one per layer (repeated
like the part lists; 0 = that layer reads everything, as full attention). ``window_pattern``
gives the named layouts:

>>> window_pattern("nanochat", n_layers=6, window=64)   # short windows, every 4th and the last full
[64, 64, 64, 0, 64, 0]
>>> window_pattern("gemma3", n_layers=6, window=64)     # 5 local : 1 global
[64, 64, 64, 64, 64, 0]
"""

from __future__ import annotations

import warnings

import torch

from scratchllm.errors import ScratchLLMError, did_you_mean
from scratchllm.model.attention import KVCache, LayerKV, MultiHeadAttention
from scratchllm.model.config import GPTConfig
from scratchllm.model.patterns import PatternAttention, PositionedKV, window_rule
from scratchllm.model.registry import register

# name -> (period, is the last layer always full): in each period of layers the last one is full
PATTERNS = {"nanochat": (4, True), "gemma3": (6, False)}


def window_pattern(name: str, n_layers: int, window: int) -> list[int]:
    """Per-layer windows of a named layout (0 = full attention), for ``GPTConfig.window``."""
    if name not in PATTERNS:
        raise ScratchLLMError(f"unknown window pattern {name!r}{did_you_mean(name, PATTERNS)}; "
                              f"known: {', '.join(PATTERNS)}")
    period, last_full = PATTERNS[name]
    windows = [0 if (i + 1) % period == 0 else window for i in range(n_layers)]
    if last_full:
        windows[-1] = 0
    return windows


def layer_window(config: GPTConfig, layer: int) -> int | None:
    """The window of layer ``layer`` (None: full attention)."""
    window = config.window
    if isinstance(window, list | tuple):
        window = window[layer % len(window)]
    return window or None


class RollingKV(LayerKV):
    """The keys and values a sliding window still needs: the first ``sinks`` positions and a ring
    of the latest ``window`` others, (B, heads, sinks + window, head_dim) however long the text.

    Position p >= sinks lives in slot sinks + (p - sinks) % window; ``pos`` (B, slots) says which
    position each slot holds (-1: empty). A write returns the stored past (before the write) and
    then the new tokens, so every new query finds the window before it; ``positions`` tells the
    attention where each returned key stands. A slot of a sequence that left (the engine reuses
    rows) holds a position at or after the new sequence's first new one, so such slots are dropped.
    """

    def __init__(self, batch_size: int, n_heads: int, window: int, sinks: int, max_len: int, head_dim: int,
                 device=None, dtype=None) -> None:
        super().__init__(batch_size, n_heads, sinks + window, head_dim, device, dtype)
        self.window, self.sinks, self.max_len = window, sinks, max_len
        self.pos = torch.full((batch_size, sinks + window), -1, dtype=torch.long, device=device)
        self.kept = sinks + window  # every returned key before the new ones: the blocks read all of them

    @property
    def nbytes(self) -> int:
        return super().nbytes + self.pos.nbytes

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, _, T, _ = k.shape
        columns = torch.arange(start, start + T, device=k.device).expand(B, T)
        return self.write(slice(0, B), columns, k, v, start + T)

    def write(
        self, rows: slice, columns: torch.Tensor, k: torch.Tensor, v: torch.Tensor, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``rows`` get k, v (n, heads, T, hd) at positions ``columns`` (n, T), consecutive in
        each row; returns keys and values (n, heads, slots + T, hd): the stored past, then these."""
        past_pos = self.pos[rows]
        past_pos = torch.where((past_pos >= 0) & (past_pos < columns[:, :1]), past_pos, -1)  # (n, slots)
        keys = torch.cat([self.k[rows], k], dim=2)  # a copy: the writes below leave it alone
        values = torch.cat([self.v[rows], v], dim=2)
        self.positions = (columns, torch.cat([past_pos, columns], dim=1))
        # store the sinks and the last `window` others (earlier ones of a long chunk would share slots)
        new = (columns < self.sinks) | (columns > columns[:, -1:] - self.window)  # (n, T)
        slot = torch.where(columns < self.sinks, columns, self.sinks + (columns - self.sinks) % self.window)
        row = torch.arange(rows.start, rows.stop, device=k.device)[:, None].expand_as(columns)
        self.k[row[new], :, slot[new]] = k.transpose(1, 2)[new]  # (m, heads, hd)
        self.v[row[new], :, slot[new]] = v.transpose(1, 2)[new]
        self.pos[row[new], slot[new]] = columns[new]
        return keys, values

    def move_row(self, src: int, dst: int, length: int) -> None:
        self.k[dst], self.v[dst], self.pos[dst] = self.k[src], self.v[src], self.pos[src]


@register("attention", "sliding_window")
class SlidingWindowAttention(PatternAttention):
    """Causal attention over the latest ``window`` tokens and the first ``sinks`` (config fields;
    ``window`` per layer, 0 = full). The weights are ``MultiHeadAttention``'s, name for name."""

    def __init__(self, config: GPTConfig, layer_index: int = 0) -> None:
        super().__init__(config, layer_index)
        self.window, self.sinks = layer_window(config, layer_index), config.sinks
        self.rule = window_rule(self.window, self.sinks)
        self.reach = None if self.window is None else self.window - 1
        self.keep = self.sinks
        if self.window is None:  # a full layer of the pattern: MultiHeadAttention's own path (fused, causal)
            self.alibi = self.use_alibi

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        if self.window is None:
            return MultiHeadAttention.forward(self, x, rope, mask, cache, layer)
        return super().forward(x, rope, mask, cache, layer)

    def new_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> LayerKV:
        if self.window is None or self.sinks + self.window >= max_len:  # the ring would hold everything
            return PositionedKV(batch_size, self.n_kv_heads, max_len, self.head_dim, device, dtype)
        return RollingKV(batch_size, self.n_kv_heads, self.window, self.sinks, max_len, self.head_dim, device, dtype)

    @classmethod
    def check_config(cls, config: GPTConfig) -> None:
        windows = config.window if isinstance(config.window, list | tuple) else [config.window]
        if config.window is None:
            raise ScratchLLMError("attention 'sliding_window' needs a window: set window (tokens each query "
                                  "reads, itself included), e.g. window=64, or a list with one per layer")
        if len(windows) > config.n_layers:
            raise ScratchLLMError(f"window lists {len(windows)} values for {config.n_layers} layers; "
                                  "give at most one per layer (a shorter list repeats)")
        for w in windows:
            if not isinstance(w, int) or isinstance(w, bool) or w < 0:
                raise ScratchLLMError(f"window must be a positive number of tokens (0 = full attention), got {w!r}")
        if not isinstance(config.sinks, int) or config.sinks < 0:
            raise ScratchLLMError(f"sinks must be a number of tokens >= 0, got {config.sinks!r}")
        if any(w >= config.context_length for w in windows):
            warnings.warn(f"window {max(windows)} >= context_length {config.context_length}: within the context "
                          "that layer is full attention; the window only limits texts longer than the context",
                          stacklevel=2)
