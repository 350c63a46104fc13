"""Causal self-attention: every token builds its output from the tokens up to itself.

For queries Q, keys K and values V (each x times a learned matrix),

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + M) V,     M[i, j] = -inf where j > i

and multi-head attention runs n_heads of these on d_model/n_heads-wide slices, concatenates the
heads and mixes them with an output projection. Three versions live here:

- ``CausalAttention`` and ``MultiHeadAttentionWrapper``: the book's teaching version, one module
  per head, heads run one after the other and concatenated.
- ``MultiHeadAttention``: the efficient one the GPT uses: one matmul projects Q, K and V for all
  heads, the heads are a tensor dimension, and the core runs either the hand-written masked
  softmax (``explicit=True``) or torch's fused ``scaled_dot_product_attention``.
- ``KVCache``: keys and values of past tokens, preallocated, so generation computes only the
  new token's projections each step.

tests/model/test_attention.py proves all of them compute the same function.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.model.config import GPTConfig
from scratchllm.model.layers import Linear
from scratchllm.model.positions import apply_rope


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

    ``mask`` is boolean, broadcastable to (..., T, L), True = may attend; None = causal.
    Returns the output (..., T, d_k) and the attention weights (..., T, L).
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., T, L)
    if mask is None:
        mask = causal_mask(q.shape[-2], k.shape[-2], q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if dropout is not None:
        weights = dropout(weights)
    return weights @ v, weights


class CausalAttention(nn.Module):
    """One attention head, as the book's chapter 3 builds it."""

    def __init__(self, d_in: int, d_out: int, dropout: float = 0.0, qkv_bias: bool = False) -> None:
        super().__init__()
        self.W_query = Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = Linear(d_in, d_out, bias=qkv_bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, T, d_in)
        q, k, v = self.W_query(x), self.W_key(x), self.W_value(x)  # each (B, T, d_out)
        return masked_softmax_attention(q, k, v, None, self.dropout)[0]


class MultiHeadAttentionWrapper(nn.Module):
    """The book's first multi-head attention: independent heads, outputs concatenated, then the
    output projection that mixes them (which ``MultiHeadAttention`` also applies)."""

    def __init__(self, d_in: int, d_out: int, n_heads: int, dropout: float = 0.0, qkv_bias: bool = False) -> None:
        super().__init__()
        self.heads = nn.ModuleList(CausalAttention(d_in, d_out // n_heads, dropout, qkv_bias) for _ in range(n_heads))
        self.out_proj = Linear(d_out, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(torch.cat([head(x) for head in self.heads], dim=-1))


class KVCache:
    """Keys and values of every layer, preallocated for ``max_len`` positions.

    ``length`` positions are filled; the model writes the new tokens' keys and values at
    [length, length + T) in each layer and then advances ``length`` once.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device=None, dtype=None) -> None:
        shape = (config.n_layers, batch_size, config.n_heads, max_len, config.head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, T, hd) after the filled positions; return all keys and values so far."""
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention with all heads in one tensor.

    ``W_qkv`` is the book's W_query, W_key and W_value side by side in one Linear (columns
    [0, d), [d, 2d), [2d, 3d) of its (d_in, 3 d) weight), so one matmul computes all three; the
    properties ``W_query``, ``W_key``, ``W_value`` give those slices of the weight. Head h
    uses columns [h hd, (h+1) hd) of each.

    Set ``store_attention = True`` to keep the last attention weights (B, H, T, L) in
    ``last_attention`` (this forces the explicit path, as the fused kernel never forms them).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.d_model, self.n_heads, self.head_dim = config.d_model, config.n_heads, config.head_dim
        self.W_qkv = Linear(config.d_model, 3 * config.d_model, bias=config.qkv_bias)
        self.out_proj = Linear(config.d_model, config.d_model, bias=config.bias)
        self.dropout_p = config.dropout
        self.dropout = nn.Dropout(config.dropout)
        self.explicit = False
        self.store_attention = False
        self.last_attention: torch.Tensor | None = None

    @property
    def W_query(self) -> torch.Tensor:
        return self.W_qkv.weight[:, : self.d_model]  # (d_in, d_out)

    @property
    def W_key(self) -> torch.Tensor:
        return self.W_qkv.weight[:, self.d_model : 2 * self.d_model]

    @property
    def W_value(self) -> torch.Tensor:
        return self.W_qkv.weight[:, 2 * self.d_model :]

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
        B, T, d = x.shape
        qkv = self.W_qkv(x).view(B, T, 3, self.n_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, hd)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H, L, hd), L = past + T
        # Under bf16 autocast on a CPU the formula written out is the fastest way: torch's flash
        # kernel has a slow bf16 backward there and its math fallback adds NaN guards (benchmarks/train.py).
        cpu_autocast = x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
        if self.explicit or self.store_attention or cpu_autocast:
            if mask is None and T == 1:
                mask = torch.ones(1, k.shape[2], dtype=torch.bool, device=x.device)
            y, weights = masked_softmax_attention(q, k, v, mask, self.dropout)
            if self.store_attention:
                self.last_attention = weights.detach()
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout_p if self.training else 0.0,
                is_causal=mask is None and T > 1,
            )
        return self.out_proj(y.transpose(1, 2).reshape(B, T, d))  # heads side by side, then mixed
