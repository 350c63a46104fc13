"""The book's chapter 3 attention, for learning: one module per head, heads run one after another.

``CausalAttention`` is one head written as the book writes it (``W_query``, ``W_key``,
``W_value`` as ``nn.Linear`` layers); ``MultiHeadAttentionWrapper`` runs several and concatenates
them. The GPT uses the efficient ``attention.MultiHeadAttention``, which computes the same function
(tests/model/test_attention.py).
"""

from __future__ import annotations

import torch
from torch import nn

from scratchllm.model.attention import masked_softmax_attention


class CausalAttention(nn.Module):
    """One attention head, as the book's chapter 3 builds it."""

    def __init__(self, d_in: int, d_out: int, dropout: float = 0.0, qkv_bias: bool = False) -> None:
        super().__init__()
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
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
        self.out_proj = nn.Linear(d_out, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(torch.cat([head(x) for head in self.heads], dim=-1))
