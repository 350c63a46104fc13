"""Grouped-query attention (Ainslie et al. 2023): fewer key/value heads than query heads.

The ``n_heads`` query heads fall into ``n_kv_heads`` groups, and every head of a group reads the
same key and value head. The KV cache, which dominates memory when generating long texts, then
holds ``n_kv_heads`` heads instead of ``n_heads``; ``n_kv_heads = 1`` is multi-query attention
(Shazeer 2019), and ``n_kv_heads = n_heads`` is plain multi-head attention, weight for weight.

    q (B, n_heads, T, hd)      k, v (B, n_kv_heads, L, hd)
    head h reads key/value head h // (n_heads / n_kv_heads)

``W_qkv`` stacks W_query (n_heads hd rows), W_key and W_value (n_kv_heads hd rows each), the
layout of ``MultiHeadAttention`` when the counts are equal.
"""

from __future__ import annotations

import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.model.attention import KVCache, LayerKV, MultiHeadAttention
from scratchllm.model.config import GPTConfig
from scratchllm.model.positions import apply_rope
from scratchllm.model.registry import register


@register("attention", "grouped_query")
class GroupedQueryAttention(MultiHeadAttention):
    def __init__(self, config: GPTConfig, layer_index: int = 0) -> None:
        super().__init__(config, layer_index)
        self.n_kv_heads = config.n_kv_heads or config.n_heads
        self.kv_dim = self.n_kv_heads * self.head_dim

    def qkv_width(self, config: GPTConfig) -> int:
        return config.d_model + 2 * (config.n_kv_heads or config.n_heads) * config.head_dim

    @classmethod
    def check_config(cls, config: GPTConfig) -> None:
        n_kv = config.n_kv_heads or config.n_heads
        if not isinstance(n_kv, int) or n_kv < 1 or config.n_heads % n_kv:
            raise ScratchLLMError(
                f"n_kv_heads={config.n_kv_heads!r} must divide n_heads={config.n_heads} "
                f"(groups of query heads share one key/value head); 1 is multi-query attention"
            )

    @property
    def W_key(self) -> torch.Tensor:
        return self.W_qkv.weight[self.d_model : self.d_model + self.kv_dim]  # (kv_dim, d_in)

    @property
    def W_value(self) -> torch.Tensor:
        return self.W_qkv.weight[self.d_model + self.kv_dim :]

    def new_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> LayerKV:
        """Only the key/value heads are cached."""
        return LayerKV(batch_size, self.n_kv_heads, max_len, self.head_dim, device, dtype)

    @property
    def cache_values_per_token(self) -> int:
        return 2 * self.kv_dim

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = self.W_qkv(x).split([d, self.kv_dim, self.kv_dim], dim=-1)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, H_kv, T, hd)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H_kv, L, hd)
        y = self.attend(q, k, v, mask, enable_gqa=self.n_kv_heads != self.n_heads)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, d))
