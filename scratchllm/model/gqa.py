"""Grouped-query attention (Ainslie et al. 2023): fewer key/value heads than query heads.

The ``n_heads`` query heads fall into ``n_kv_heads`` groups, and every head of a group reads the
same key and value head. The KV cache, which dominates memory when generating long texts, then
holds ``n_kv_heads`` heads instead of ``n_heads``; ``n_kv_heads = 1`` is multi-query attention
(Shazeer 2019), and ``n_kv_heads = n_heads`` is plain multi-head attention, weight for weight.

    q (B, n_heads, T, hd)      k, v (B, n_kv_heads, L, hd)
    head h reads key/value head h // (n_heads / n_kv_heads)

``W_qkv`` stacks W_query (n_heads hd rows), W_key and W_value (n_kv_heads hd rows each), the
layout of ``MultiHeadAttention`` when the counts are equal. Caching, the attention core and the
output projection are ``MultiHeadAttention``'s; only the projection into heads differs.
"""

from __future__ import annotations

import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.model.attention import MultiHeadAttention
from scratchllm.model.config import GPTConfig
from scratchllm.model.registry import register


@register("attention", "grouped_query")
class GroupedQueryAttention(MultiHeadAttention):
    def kv_heads(self, config: GPTConfig) -> int:
        return config.n_kv_heads or config.n_heads

    @classmethod
    def check_config(cls, config: GPTConfig) -> None:
        n_kv = config.n_kv_heads or config.n_heads
        if not isinstance(n_kv, int) or n_kv < 1 or config.n_heads % n_kv:
            raise ScratchLLMError(
                f"n_kv_heads={config.n_kv_heads!r} must divide n_heads={config.n_heads} "
                f"(groups of query heads share one key/value head); 1 is multi-query attention"
            )

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def W_key(self) -> torch.Tensor:
        return self.W_qkv.weight[self.attn_dim : self.attn_dim + self.kv_dim]  # (kv_dim, d_in)

    @property
    def W_value(self) -> torch.Tensor:
        return self.W_qkv.weight[self.attn_dim + self.kv_dim :]

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, _ = x.shape
        q, k, v = self.W_qkv(x).split([self.attn_dim, self.kv_dim, self.kv_dim], dim=-1)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, H_kv, T, hd)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v
