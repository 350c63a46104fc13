"""Where a token stands: learned, sinusoidal and rotary position encodings.

Attention by itself is blind to order, so position enters in one of three ways:

- learned (GPT-2, the book): a trainable vector per position 0..context_length-1 added to the
  token embedding; it cannot go past the last trained position.
- sinusoidal (Vaswani et al. 2017): a fixed vector per position,
  PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)); defined for any p.
- rotary (RoPE, Su et al. 2021): queries and keys are rotated by an angle proportional to p in
  each pair of dimensions, so q.k depends only on the distance between the two positions;
  defined for any p.

``positions`` is a tensor of absolute positions, (T,) or (B, T) (left-padded batches give each
row its own positions). Each encoding is also a registered part (``PositionEncoding``): it may
add a vector to the token embeddings (``add_to``) and/or give attention its rotation (``rotation``).
"""

from __future__ import annotations

import torch
from torch import nn

from scratchllm.errors import ScratchLLMError
from scratchllm.model.config import GPTConfig
from scratchllm.model.registry import register


def inverse_frequencies(dim: int, base: float = 10000.0, device: torch.device | None = None) -> torch.Tensor:
    """1 / base^(2i/dim) for i in 0..dim/2-1: one frequency per pair of dimensions.

    >>> inverse_frequencies(4)
    tensor([1.0000, 0.0100])
    """
    return 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim)


def sinusoidal_encoding(positions: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """The fixed encoding of each position, (..., dim), sin and cos interleaved.

    >>> sinusoidal_encoding(torch.tensor([0]), 4)
    tensor([[0., 1., 0., 1.]])
    """
    angles = positions.float()[..., None] * inverse_frequencies(dim, base, positions.device)  # (..., dim/2)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of each position's rotation angles, each (..., 1, T, head_dim) for (B, H, T, hd).

    The angles repeat as [theta_0..theta_{h/2-1}, theta_0..theta_{h/2-1}]: dimension i is paired
    with i + head_dim/2 (the "rotate half" layout of GPT-NeoX and Llama).
    """
    angles = positions.float()[..., None] * inverse_frequencies(head_dim, base, positions.device)  # (..., T, hd/2)
    angles = torch.cat((angles, angles), dim=-1).unsqueeze(-3)  # (..., 1, T, hd)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x_i, x_{i+h/2}) of x (B, H, T, hd) by its position's angle.

    >>> q = torch.randn(1, 1, 3, 4); cos, sin = rope_cos_sin(torch.arange(3), 4)
    >>> torch.allclose(apply_rope(q, cos, sin).norm(dim=-1), q.norm(dim=-1))  # rotations keep length
    True
    """
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class PositionEncoding(nn.Module):
    """What a position encoding does to the GPT; this base does nothing (the ``none`` encoding)."""

    max_positions: int | None = None  # the last position + 1 it can encode; None: any

    def add_to(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x (B, T, d_model) with each position's vector added."""
        return x

    def rotation(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(cos, sin) that attention rotates queries and keys by, or None."""
        return None


@register("position", "none")
def no_positions(config: GPTConfig, layer_index: int) -> PositionEncoding:
    return PositionEncoding()


@register("position", "learned")
class LearnedPositions(nn.Embedding, PositionEncoding):
    """A trainable vector per position 0..context_length-1 (its table is ``weight``)."""

    def __init__(self, config: GPTConfig, layer_index: int = 0) -> None:
        super().__init__(config.context_length, config.d_model)
        self.max_positions = config.context_length

    def add_to(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return x + self(positions)


@register("position", "sinusoidal")
class SinusoidalPositions(PositionEncoding):
    def __init__(self, config: GPTConfig, layer_index: int = 0) -> None:
        super().__init__()
        self.d_model = config.d_model

    def add_to(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return x + sinusoidal_encoding(positions, self.d_model).to(x.dtype)

    @classmethod
    def check_config(cls, config: GPTConfig) -> None:
        if config.d_model % 2:
            raise ScratchLLMError(f"sinusoidal positions need an even d_model, got {config.d_model}")


@register("position", "rope")
class RotaryPositions(PositionEncoding):
    def __init__(self, config: GPTConfig, layer_index: int = 0) -> None:
        super().__init__()
        self.head_dim, self.base = config.head_dim, config.rope_base

    def rotation(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rope_cos_sin(positions, self.head_dim, self.base)

    @classmethod
    def check_config(cls, config: GPTConfig) -> None:
        if config.head_dim % 2:
            raise ScratchLLMError(f"rope needs an even head size, got d_model/n_heads={config.head_dim}")
