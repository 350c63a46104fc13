"""The GPT: token embedding, position information, a stack of transformer blocks, and a
linear head that turns each position's final vector into next-token logits.

    x_0 = tok_emb(idx) (+ pos_emb)
    x_l = x_{l-1} + Attention(Norm(x_{l-1}));  x_l = x_l + FeedForward(Norm(x_l))   (pre-norm)
    logits = out_head(final_norm(x_L))

With ``tie_embeddings`` the head and the token embedding are one (vocab, d_model) matrix (GPT-2,
and the weight-tying section of the book): ``out_head.weight`` is ``tok_emb.weight``, as in
nanoGPT, so replacing the head leaves the token table as it was.

Every layer is looked up by name in ``registry`` (attention, feed-forward, norm, position
encoding, block), per layer where the config gives a list, so a new part needs no new model class.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import nn

from scratchllm.errors import ScratchLLMError
from scratchllm.model import registry
from scratchllm.model.attention import KVCache, causal_mask
from scratchllm.model.config import CHOICES, GPTConfig
from scratchllm.model.registry import register


@register("block", "pre_norm")
class TransformerBlock(nn.Module):
    """Pre-norm residual block: attention then feed-forward, each added to the stream."""

    def __init__(self, config: GPTConfig, layer_index: int = 0) -> None:
        super().__init__()
        self.norm1 = registry.build("norm", config.norm, config, layer_index)
        self.att = registry.build("attention", config.part("attention", layer_index), config, layer_index)
        self.norm2 = registry.build("norm", config.norm, config, layer_index)
        self.ff = registry.build("ffn", config.part("ffn", layer_index), config, layer_index)
        self.drop_shortcut = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rope=None, mask=None, cache: KVCache | None = None, layer: int = 0):
        x = x + self.drop_shortcut(self.att(self.norm1(x), rope, mask, cache, layer))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))

    @property
    def attention(self) -> nn.Module:
        """The block's attention layer (inspection, the tour, caches)."""
        return self.att

    def residual_projections(self) -> list[nn.Linear]:
        """The linear layers that write into the residual stream (GPT-2 scales their init)."""
        return [*self.att.residual_projections(), *self.ff.residual_projections()]


class GPT(nn.Module):
    """A GPT built from a ``GPTConfig``; ``model(idx)`` maps token ids (B, T) to logits (B, T, vocab).

    >>> model = GPT(GPTConfig.preset("tiny"))
    >>> model(torch.zeros(2, 5, dtype=torch.long)).shape
    torch.Size([2, 5, 512])
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = registry.build("position", config.pos_encoding, config)
        self.drop_emb = nn.Dropout(config.dropout)
        self.trf_blocks = nn.ModuleList(
            registry.build("block", config.part("block", i), config, i) for i in range(config.n_layers)
        )
        self.final_norm = registry.build("norm", config.norm, config)
        if config.head_size is None:
            self.out_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        else:  # a replaced head (classification): its own matrix and a bias
            self.out_head = nn.Linear(config.d_model, config.head_size, bias=True)
        self.tie_weights()
        self.init_weights()
        self.set_impl(config.impl)

    def tie_weights(self) -> None:
        """With ``tie_embeddings``, make the head's weight the token table: one (vocab, d_model)
        matrix, two uses. (Again after anything that replaces parameters, such as loading with assign.)"""
        if self.config.tie_embeddings and self.config.head_size is None:
            self.out_head.weight = self.tok_emb.weight

    def init_weights(self) -> None:
        """GPT-2's init: N(0, 0.02) weights, zero biases, and the projections that write into the
        residual stream scaled by 1/sqrt(2 n_layers), so the stream's variance does not grow
        with depth. Norms keep their ones and zeros."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for block in self.trf_blocks:
            for linear in block.residual_projections():
                nn.init.normal_(linear.weight, mean=0.0, std=residual_std)

    @property
    def token_embeddings(self) -> torch.Tensor:
        """The (vocab, d_model) table of token vectors (the head's weight too, when tied)."""
        return self.tok_emb.weight

    @property
    def max_positions(self) -> int | None:
        """How many positions the model can read (learned positions stop there); None: any."""
        return self.pos_emb.max_positions

    @property
    def device(self) -> torch.device:
        return self._float_tensor().device

    def _float_tensor(self) -> torch.Tensor:
        """A floating-point parameter or buffer: the device and dtype the model computes in (a
        quantized model's token table and head hold integers, scratchllm.compress.quantize_model)."""
        return next(t for t in itertools.chain(self.parameters(), self.buffers()) if t.is_floating_point())

    def set_impl(self, impl: str) -> None:
        """Switch every layer between torch's fused kernels ("fused") and the hand-written
        formulas ("explicit"); the weights and the function stay the same."""
        if impl not in CHOICES["impl"]:
            raise ScratchLLMError(f"impl={impl!r} is not one of {', '.join(CHOICES['impl'])}")
        self.config.impl = impl
        for module in self.modules():
            if hasattr(module, "explicit"):
                module.explicit = impl == "explicit"

    def forward(
        self,
        idx: torch.Tensor,
        *,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        last_only: bool = False,
        at: torch.Tensor | None = None,
        hidden: bool = False,
        record: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids ``idx`` (B, T).

        cache: keys/values of earlier positions (generation); the new tokens follow them.
        positions: absolute positions (T,) or (B, T); default cache.length + arange(T).
        mask: boolean, broadcastable to (B, 1, T, cache.length + T), True = may attend
            (left-padded batches); default causal.
        last_only: the output of the last position only (B, 1, ...): the head runs on one row.
        at: the output of one chosen position per row, (B,) indices into T (B, 1, ...): the last
            real token of right-padded texts, for classification.
        hidden: return the final hidden states (after ``final_norm``, (B, T, d_model)) instead
            of logits (classification heads, distillation).
        record: a dict to fill with the embeddings and the residual stream after each block.
        """
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        limit = self.max_positions
        if limit is not None and start + T > limit:
            raise ScratchLLMError(
                f"{start + T} tokens exceed this model's context_length of {limit} "
                f"(learned positions stop there); crop the input to its last {limit} tokens"
            )
        if cache is not None and start + T > cache.max_len:
            raise ScratchLLMError(f"the KV cache holds {cache.max_len} positions, {start + T} were asked for")
        if mask is None and start > 0 and T > 1:
            mask = causal_mask(T, start + T, idx.device)

        if positions is None:
            positions = torch.arange(start, start + T, device=idx.device)
        x = self.pos_emb.add_to(self.tok_emb(idx), positions)  # (B, T, d_model)
        rope = self.pos_emb.rotation(positions)
        x = self.drop_emb(x)
        if record is not None:
            record["embeddings"] = x.detach()
            record["residual"] = []
        for layer, block in enumerate(self.trf_blocks):
            x = block(x, rope, mask, cache, layer)
            if record is not None:
                record["residual"].append(x.detach())
        if cache is not None:
            cache.length += T
        if last_only:
            x = x[:, -1:]
        elif at is not None:
            x = x[torch.arange(B, device=x.device), at].unsqueeze(1)  # (B, 1, d_model)
        x = self.final_norm(x)
        return x if hidden else self.out_head(x)  # (B, T, vocab)

    @torch.no_grad()
    def inspect(self, idx: torch.Tensor) -> dict[str, Any]:
        """Run ``idx`` (B, T) once and return what happens inside, for pictures and the tour:

        embeddings (B, T, d), residual: per block (B, T, d), attention: per block the weights
        (B, H, T, T) (row i = how much token i reads from each token), logits (B, T, vocab).
        """
        attns = [block.attention for block in self.trf_blocks]
        record: dict[str, Any] = {}
        for att in attns:
            att.store_attention = True
        try:
            record["logits"] = self(idx, record=record)
            record["attention"] = [att.last_attention for att in attns]
        finally:
            for att in attns:
                att.store_attention, att.last_attention = False, None
        return record

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        """An empty KV cache for ``batch_size`` sequences of up to ``max_len`` positions."""
        p = self._float_tensor()
        return KVCache([block.attention.new_cache(batch_size, max_len, p.device, p.dtype)
                        for block in self.trf_blocks])

    # -- sizes ------------------------------------------------------------------------------

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters (a tied matrix counts once). ``non_embedding`` leaves out the
        token and position embedding tables (with tied weights the head goes with them)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.token_embeddings.numel()
            n -= sum(p.numel() for p in self.pos_emb.parameters())
        return n

    def matmul_params(self) -> int:
        """Weights each token is multiplied by on its way through (every Linear, the head too)."""
        return sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))

    def flops_per_token(self, seq_len: int | None = None, training: bool = True) -> int:
        """FLOPs to process one token at context ``seq_len`` (default context_length):
        forward 2N + 4 L d T (N = ``matmul_params``; Q K^T and the weighted sum of V cost
        2 d T each per layer); training (forward + backward) is three times that: 6N + 12 L d T,
        the estimate of the PaLM paper used for MFU."""
        cfg = self.config
        T = seq_len or cfg.context_length
        forward = 2 * self.matmul_params() + 4 * cfg.n_layers * cfg.d_model * T
        return 3 * forward if training else forward

    def memory_estimate(self, batch_size: int = 1, seq_len: int | None = None, bytes_per_value: int = 4) -> dict:
        """Bytes needed, approximately: weights; training state (weights, gradients and AdamW's
        two moments: 4x the weights); the cache of ``batch_size`` sequences of ``seq_len`` (exact:
        each layer's own cache, built on the meta device: keys and values, a sliding window's
        ring, a state-space layer's state); training activations (Korthikanti et al. 2022:
        L B T d (34 + 5 H T / d) at 2 bytes)."""
        cfg = self.config
        T = seq_len or cfg.context_length
        if bytes_per_value not in _FLOAT_OF_SIZE:
            raise ScratchLLMError(f"bytes_per_value must be one of {sorted(_FLOAT_OF_SIZE)}, got {bytes_per_value}")
        weights = self.num_params() * bytes_per_value
        per_layer_acts = batch_size * T * cfg.d_model * (34 + 5 * cfg.n_heads * T / cfg.d_model) / 2
        dtype = _FLOAT_OF_SIZE[bytes_per_value]
        return {
            "weights": weights,
            "training_state": 4 * weights,
            "kv_cache": sum(b.attention.new_cache(batch_size, T, "meta", dtype).nbytes for b in self.trf_blocks),
            "activations": int(cfg.n_layers * per_layer_acts * bytes_per_value),
        }


_FLOAT_OF_SIZE = {2: torch.bfloat16, 4: torch.float32, 8: torch.float64}
