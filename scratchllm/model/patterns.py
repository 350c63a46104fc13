"""Attention patterns as rules on positions, computed one block of queries at a time.

Full causal attention lets query i read every key j <= i. A pattern keeps a subset: a rule
``rule(q_pos, k_pos) -> bool`` says which (query, key) pairs may meet, from their absolute
positions, causality included. The patterns of this package:

    window W, sinks S    j <= i and (i - j < W or j < S)           sliding.py (StreamingLLM's sinks)
    strided, stride l    j <= i and (i - j <= l or (i - j) % l == 0)     sparse.py (Child et al. 2019)
    fixed, block l, c    j <= i and (j // l == i // l or j % l >= l - c)  sparse.py

``blockwise_attention`` never builds the (T, T) mask: it takes ``block`` queries at a time, the
keys they can reach (for a window only the last W - 1 before the block, plus the sinks), and
evaluates the rule on that (block, keys) tile. A window's memory then grows as T x (W + block),
not T^2; the sparse patterns, which reach back to the start, keep (block x L) tiles.

``PatternAttention`` is ``MultiHeadAttention`` with its mask from a rule; its cache
(``PositionedKV``) remembers the positions of what it holds, so the engine's rows, each at its
own position, get their own masks.

>>> pattern_mask(window_rule(2), 4).int()
tensor([[1, 0, 0, 0],
        [1, 1, 0, 0],
        [0, 1, 1, 0],
        [0, 0, 1, 1]], dtype=torch.int32)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from scratchllm.model.alibi import alibi_bias, alibi_slopes
from scratchllm.model.attention import KVCache, LayerKV, MultiHeadAttention
from scratchllm.model.config import GPTConfig
from scratchllm.model.positions import apply_rope

# rule(q_pos (..., T, 1), k_pos (..., 1, L)) -> bool (..., T, L), True = may attend
Rule = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def causal_rule(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Full causal attention; a key at a negative position is an empty cache slot."""
    return (k >= 0) & (k <= q)


def window_rule(window: int | None, sinks: int = 0) -> Rule:
    """Each query reads the ``window`` latest tokens (itself included) and the first ``sinks``."""
    if window is None:
        return causal_rule
    return lambda q, k: causal_rule(q, k) & ((q - k < window) | (k < sinks))


def strided_rule(stride: int) -> Rule:
    """Sparse Transformer, strided: the last ``stride`` tokens and every ``stride``-th one before."""
    return lambda q, k: causal_rule(q, k) & ((q - k <= stride) | ((q - k) % stride == 0))


def fixed_rule(block: int, summary: int) -> Rule:
    """Sparse Transformer, fixed: the query's own block of ``block`` tokens, and the last
    ``summary`` tokens of every block (the "summary" cells every later token reads)."""
    return lambda q, k: causal_rule(q, k) & ((k // block == q // block) | (k % block >= block - summary))


def pattern_mask(rule: Rule, n: int) -> torch.Tensor:
    """The (n, n) boolean mask of ``rule`` over positions 0..n-1 (for tests and pictures only).

    >>> pattern_mask(strided_rule(2), 5)[4].int()
    tensor([1, 0, 1, 1, 1], dtype=torch.int32)
    """
    pos = torch.arange(n)
    return rule(pos[:, None], pos[None, :])


def blockwise_attention(
    core: Callable[..., torch.Tensor],
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    rule: Rule,
    *,
    reach: int | None = None,
    keep: int = 0,
    slopes: torch.Tensor | None = None,
    block: int = 256,
) -> torch.Tensor:
    """Attention of q (B, H, T, hd) over k, v (B, H_kv, L, hd) under ``rule``, ``block`` queries at a time.

    The last T keys are the queries' own (query t is key L - T + t); q_pos (B or 1, T) and
    k_pos (B or 1, L) are their positions. ``reach``: how many keys before its own a query can
    read at most (a window's W - 1; None: all), so a block reads only keys [a - reach, b) of its
    queries [a, b), plus the first ``keep`` keys (sinks, or a rolling cache's whole past).
    ``slopes``: ALiBi's, biasing each score by -m (q_pos - k_pos). ``core(q, k, v, mask)`` is
    the attention formula (``MultiHeadAttention.core``).
    """
    T, L = q.shape[2], k.shape[2]
    past = L - T
    outs = []
    for a in range(0, T, block):
        b = min(a + block, T)
        lo, hi = (0 if reach is None else max(0, past + a - reach)), past + b
        if lo <= keep:
            ks, vs, kp = k[:, :, :hi], v[:, :, :hi], k_pos[:, :hi]
        else:  # the kept prefix and the reachable band, nothing between
            idx = torch.cat([torch.arange(keep, device=k.device), torch.arange(lo, hi, device=k.device)])
            ks, vs, kp = k[:, :, idx], v[:, :, idx], k_pos[:, idx]
        qp = q_pos[:, a:b]
        mask = rule(qp[:, :, None], kp[:, None, :])[:, None]  # (B or 1, 1, t, l)
        if slopes is not None:
            mask = torch.where(mask, alibi_bias(slopes, qp, kp).to(q.dtype), float("-inf"))  # (B or 1, H, t, l)
        outs.append(core(q[:, :, a:b], ks, vs, mask))
    return torch.cat(outs, dim=2)  # (B, H, T, hd)


class PositionedKV(LayerKV):
    """A ``LayerKV`` that remembers the positions of its last write: ``positions`` = (query
    positions (n or 1, T), key positions (n or 1, L)) of what ``update``/``write`` returned.
    Column c holds position c here; a rolling cache (sliding.py) holds other positions."""

    positions: tuple[torch.Tensor, torch.Tensor]

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + k.shape[2]
        cols = torch.arange(end, device=k.device)[None]
        self.positions = (cols[:, start:], cols)
        return super().update(start, k, v)

    def write(
        self, rows: slice, columns: torch.Tensor, k: torch.Tensor, v: torch.Tensor, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.positions = (columns, torch.arange(width, device=k.device)[None])
        return super().write(rows, columns, k, v, width)


class PatternAttention(MultiHeadAttention):
    """Multi-head attention (weights and projections of ``MultiHeadAttention``) whose mask comes
    from ``rule``. Subclasses set ``rule``, and ``reach`` where queries only look a bounded way back.

    A mask passed in (the engine's per-row limit, columns [0, c] for a row at position c) is
    implied by the positions the cache gives, and not used; left-padded batches are not supported.
    """

    rule: Rule = staticmethod(causal_rule)
    reach: int | None = None  # None: a query may read back to the start
    keep: int = 0  # keys at the start every block reads (the sinks)
    block: int = 256  # queries per tile

    def __init__(self, config: GPTConfig, layer_index: int = 0) -> None:
        super().__init__(config, layer_index)
        self.use_alibi, self.alibi = self.alibi, False  # the bias comes from positions here, not columns

    def new_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> LayerKV:
        return PositionedKV(batch_size, self.n_kv_heads, max_len, self.head_dim, device, dtype)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = self.project(x)  # (B, H, T, hd), (B, H_kv, T, hd) twice
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        keep = self.keep
        if cache is None:
            q_pos = k_pos = torch.arange(T, device=x.device)[None]  # (1, T)
        else:
            k, v = cache.update(layer, k, v)  # (B, H_kv, L, hd)
            q_pos, k_pos = cache.layers[layer].positions
            keep = max(keep, getattr(cache.layers[layer], "kept", 0))
        slopes = alibi_slopes(self.n_heads, x.device) if self.use_alibi else None
        whole = self.store_attention  # inspect(): one tile of every key, so the weights are (T, L)
        y = blockwise_attention(self.core, q, k, v, q_pos, k_pos, self.rule, reach=None if whole else self.reach,
                                keep=keep, slopes=slopes, block=T if whole else self.block)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, d))  # heads side by side, then mixed
