"""ALiBi (Press et al. 2022, "Train Short, Test Long"): positions as a linear penalty on distance.

No vector is added to the tokens. Instead every attention score of head h gets a bias that falls
linearly with how far back the key is:

    score(i, j) = q_i . k_j / sqrt(d_k) - m_h (i - j)          (j <= i)

with one fixed slope m_h per head, a geometric sequence: for n heads (n a power of two)
m_h = 2^(-8 h / n), h = 1..n (8 heads: 1/2, 1/4, ..., 1/256). For other n the paper takes the
2^floor(log2 n) slopes of the power of two below n and adds every other slope of the next power of
two. Steep heads look at the last few tokens, shallow heads far back. The bias depends only on the
distance i - j, which is what lets a model trained at one length read longer texts.

Attention applies it (``MultiHeadAttention`` and the window and sparse layers, from the query's
and the keys' positions); the position part below only names the choice, so ``pos_encoding =
"alibi"`` is one setting beside learned, sinusoidal and rotary.
"""

from __future__ import annotations

import math

import torch

from scratchllm.model.config import GPTConfig
from scratchllm.model.positions import PositionEncoding
from scratchllm.model.registry import register


def alibi_slopes(n_heads: int, device: torch.device | None = None) -> torch.Tensor:
    """The paper's head slopes m_1..m_n, (n_heads,).

    >>> alibi_slopes(4)
    tensor([0.2500, 0.0625, 0.0156, 0.0039])
    """
    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (h + 1) for h in range(n)]

    below = 2 ** math.floor(math.log2(n_heads))
    slopes = power_of_two(below) + power_of_two(2 * below)[0::2][: n_heads - below]
    return torch.tensor(slopes, dtype=torch.float32, device=device)


def alibi_bias(slopes: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """-m_h (i - j) for queries at ``q_pos`` (..., T) and keys at ``k_pos`` (..., L): (..., H, T, L).

    >>> alibi_bias(torch.tensor([0.5]), torch.tensor([3]), torch.arange(3))
    tensor([[[-1.5000, -1.0000, -0.5000]]])
    """
    distance = (q_pos[..., :, None] - k_pos[..., None, :]).float()  # (..., T, L)
    return -slopes[:, None, None] * distance.unsqueeze(-3)  # (..., H, T, L)


@register("position", "alibi")
class ALiBiPositions(PositionEncoding):
    """Nothing added to the tokens and nothing to rotate: attention adds the distance bias
    (``uses_alibi``). Defined for any distance, so no position limit."""

    def __init__(self, config: GPTConfig, layer_index: int = 0) -> None:
        super().__init__()


def uses_alibi(config: GPTConfig) -> bool:
    """Whether attention layers of this config add ALiBi's bias."""
    return config.pos_encoding == "alibi"
