"""Causal self-attention: every token builds its output from the tokens up to itself.

For queries Q, keys K and values V (each x times a learned matrix),

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + M) V,     M[i, j] = -inf where j > i

and multi-head attention runs n_heads of these on d_model/n_heads-wide slices, concatenates the
heads and mixes them with an output projection. Here:

- ``MultiHeadAttention`` (the part ``"multihead"``): the efficient one the GPT uses: one matmul
  projects Q, K and V for all heads, the heads are a tensor dimension, and the core runs either
  the hand-written masked softmax (``explicit=True``) or torch's fused ``scaled_dot_product_attention``.
- ``KVCache``: keys and values of past tokens, preallocated per layer, so generation computes
  only the new tokens' projections each step. Each attention layer makes its own slot
  (``new_cache``), so a layer that keeps fewer heads (``gqa.py``) or a window stores just that.

The book's teaching versions (one module per head) are in ``teaching.py``;
tests/model/test_attention.py proves all of them compute the same function.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.model.alibi import alibi_bias, alibi_slopes, uses_alibi
from scratchllm.model.config import GPTConfig
from scratchllm.model.positions import apply_rope
from scratchllm.model.registry import register


def causal_mask(n_queries: int, n_keys: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean (n_queries, n_keys) mask, True where a query may attend: the last n_queries
    positions of a sequence of n_keys attend to themselves and everything before.

    >>> causal_mask(2, 3).int()
    tensor([[1, 1, 0],
            [1, 1, 1]], dtype=torch.int32)
    """
    return torch.ones(n_queries, n_keys, dtype=torch.bool, device=device).tril(diagonal=n_keys - n_queries)


def masked_softmax_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout: nn.Module | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention formula written out; q (..., T, d_k), k and v (..., L, d_k).

    ``mask`` is boolean, broadcastable to (..., T, L), True = may attend; None = causal; or a
    float mask added to the scores (-inf where a query may not attend; ALiBi's bias elsewhere).
    Returns the output (..., T, d_k) and the attention weights (..., T, L).
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., T, L)
    if mask is None:
        mask = causal_mask(q.shape[-2], k.shape[-2], q.device)
    scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = torch.softmax(scores, dim=-1)
    if dropout is not None:
        weights = dropout(weights)
    return weights @ v, weights


class LayerKV:
    """One layer's keys and values, preallocated: k and v are (B, heads, max_len, head_dim).

    Zeros at first: rows of different lengths read columns past their own end, masked out, and
    a masked column still multiplies its value by weight 0, which uninitialised memory (NaN)
    would turn into NaN."""

    def __init__(self, batch_size: int, n_heads: int, max_len: int, head_dim: int, device=None, dtype=None) -> None:
        self.k = torch.zeros(batch_size, n_heads, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.max_len = max_len  # positions it accepts (a rolling cache stores fewer: sliding.py)

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, heads, T, hd) at [start, start + T); return all keys and values so far."""
        end = start + k.shape[2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    def write(
        self, rows: slice, columns: torch.Tensor, k: torch.Tensor, v: torch.Tensor, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of different lengths (the inference engine): store row i of k, v (n, heads, T, hd)
        in cache row ``rows.start + i`` at its own ``columns[i]`` (columns (n, T)); return the keys
        and values of those rows at [0, width), (n, heads, width, hd)."""
        r = torch.arange(rows.start, rows.stop, device=k.device)[:, None]  # (n, 1)
        self.k[r, :, columns] = k.transpose(1, 2)  # the indexed view is (n, T, heads, hd)
        self.v[r, :, columns] = v.transpose(1, 2)
        return self.k[rows, :, :width], self.v[rows, :, :width]

    @property
    def nbytes(self) -> int:
        """Bytes this layer's cache holds for all its rows."""
        return self.k.nbytes + self.v.nbytes

    def move_row(self, src: int, dst: int, length: int) -> None:
        """Copy the first ``length`` positions of cache row ``src`` into row ``dst``."""
        self.k[dst, :, :length] = self.k[src, :, :length]
        self.v[dst, :, :length] = self.v[src, :, :length]

    def clear_row(self, row: int) -> None:
        """A new sequence takes row ``row``: nothing to clear, as a row reads only the columns it wrote."""


class KVCache:
    """Keys and values of every layer (one ``LayerKV`` each, made by that layer's attention; a
    state-space layer keeps its state instead, ``mamba.MambaState``).

    ``length`` positions are filled; the model writes the new tokens' keys and values at
    [length, length + T) in each layer and then advances ``length`` once. ``rows``: the rows of
    the cache a forward pass reads and writes (all; the inference engine's view picks some).
    """

    rows = slice(None)

    def __init__(self, layers: list[LayerKV]) -> None:
        self.layers = layers
        self.length = 0

    @property
    def max_len(self) -> int:
        return min(layer.max_len for layer in self.layers)

    @property
    def nbytes(self) -> int:
        """Bytes the whole cache holds (every layer's keys and values, or state)."""
        return sum(layer.nbytes for layer in self.layers)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, heads, T, hd) after the filled positions; return all keys and values so far."""
        return self.layers[layer].update(self.length, k, v)


@register("attention", "multihead")
class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention with all heads in one tensor.

    ``W_qkv`` is the book's W_query, W_key and W_value stacked in one ``nn.Linear`` (rows
    [0, d), [d, 2d), [2d, 3d) of its (3 d, d_in) weight), so one matmul computes all three; the
    properties ``W_query``, ``W_key``, ``W_value`` give those (d_out, d_in) blocks, the weights of
    the book's ``nn.Linear`` layers. Head h uses rows [h hd, (h+1) hd) of each.

    Set ``store_attention = True`` to keep the last attention weights (B, H, T, L) in
    ``last_attention`` (this forces the explicit path, as the fused kernel never forms them).
    """

    def __init__(self, config: GPTConfig, layer_index: int = 0) -> None:
        super().__init__()
        self.d_model, self.n_heads, self.head_dim = config.d_model, config.n_heads, config.head_dim
        self.attn_dim = config.attn_dim  # n_heads * head_dim: d_model unless heads were pruned
        self.n_kv_heads = self.kv_heads(config)  # heads of keys and values: all of them here
        self.W_qkv = nn.Linear(config.d_model, self.qkv_width(config), bias=config.qkv_bias)
        self.out_proj = nn.Linear(self.attn_dim, config.d_model, bias=config.bias)
        self.dropout_p = config.dropout
        self.dropout = nn.Dropout(config.dropout)
        self.explicit = False
        self.store_attention = False
        self.last_attention: torch.Tensor | None = None
        self.alibi = uses_alibi(config)  # add ALiBi's distance bias to the scores (alibi.py)

    def kv_heads(self, config: GPTConfig) -> int:
        """How many key/value heads this layer keeps (``gqa.py`` keeps fewer)."""
        return config.n_heads

    def qkv_width(self, config: GPTConfig) -> int:
        """Output features of ``W_qkv``: the queries of every head, then the keys and values of the KV heads."""
        return config.attn_dim + 2 * self.kv_heads(config) * config.head_dim

    @property
    def qkv_sizes(self) -> list[int]:
        """Rows of ``W_qkv`` for the queries, the keys and the values (LoRA adapts each apart)."""
        kv = self.n_kv_heads * self.head_dim
        return [self.n_heads * self.head_dim, kv, kv]

    @property
    def W_query(self) -> torch.Tensor:
        return self.W_qkv.weight[: self.attn_dim]  # (d_out, d_in)

    @property
    def W_key(self) -> torch.Tensor:
        return self.W_qkv.weight[self.attn_dim : 2 * self.attn_dim]

    @property
    def W_value(self) -> torch.Tensor:
        return self.W_qkv.weight[2 * self.attn_dim :]

    def new_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> LayerKV:
        """This layer's slot in a ``KVCache``: the keys and values of its KV heads."""
        return LayerKV(batch_size, self.n_kv_heads, max_len, self.head_dim, device, dtype)

    def residual_projections(self) -> list[nn.Linear]:
        """The layers that write into the residual stream (GPT-2 scales their init)."""
        return [self.out_proj]

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """x (B, T, d_model) -> (B, T, d_model).

        ``mask``: boolean, broadcastable to (B, H, T, L), True = may attend. None means plain
        causal when the T queries are the whole sequence, or no mask for a single new token.
        """
        B, T, _ = x.shape
        q, k, v = self.project(x)  # (B, H, T, hd), (B, H_kv, T, hd) twice
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H_kv, L, hd), L = past + T
        y = self.attend(q, k, v, mask)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, self.attn_dim))  # heads side by side, then mixed

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of x (B, T, d_model), heads as a dimension: (B, heads, T, hd)."""
        B, T, _ = x.shape
        qkv = self.W_qkv(x).view(B, T, 3, self.n_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        return q, k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The attention core on (B, H, T, hd) queries and (B, H_kv, L, hd) keys and values (the
        last T of the L keys are the queries' own), with ALiBi's bias when the config asks for it."""
        T, L = q.shape[2], k.shape[2]
        if self.alibi:  # a per-row offset (the engine's shorter rows read columns [0, c] of L) shifts
            # a row's biases by one constant, which softmax ignores: columns serve as positions
            if mask is None:
                mask = causal_mask(T, L, q.device)
            cols = torch.arange(L, device=q.device)
            bias = alibi_bias(alibi_slopes(self.n_heads, q.device), cols[L - T :], cols).to(q.dtype)  # (H, T, L)
            mask = torch.where(mask, bias, float("-inf"))  # (B or 1, H, T, L)
        return self.core(q, k, v, mask)

    def core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """softmax(q k^T / sqrt(hd) + mask) v, by SDPA or written out; with fewer KV heads, each
        group of H / H_kv query heads reads one of them. ``mask``: boolean, float (added), or None (causal)."""
        enable_gqa = k.shape[1] != q.shape[1]
        # For bf16 on a CPU the formula written out is the fastest way: torch's flash kernel has a
        # slow bf16 backward there and its math fallback adds NaN guards (benchmarks/train.py).
        cpu_bf16 = q.device.type == "cpu" and q.dtype == torch.bfloat16
        T = q.shape[2]
        if self.explicit or self.store_attention or cpu_bf16:
            if mask is None and T == 1:
                mask = torch.ones(1, k.shape[2], dtype=torch.bool, device=q.device)
            if enable_gqa:  # each group of query heads reads its one key/value head
                group = q.shape[1] // k.shape[1]
                k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            y, weights = masked_softmax_attention(q, k, v, mask, self.dropout)
            if self.store_attention:
                self.last_attention = weights.detach()
            return y
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout_p if self.training else 0.0,
            is_causal=mask is None and T > 1, enable_gqa=enable_gqa,
        )
