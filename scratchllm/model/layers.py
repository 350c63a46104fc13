"""The small layers of a transformer block: normalisation, activation, feed-forward.

Linear maps are torch's own ``nn.Linear`` (weight stored (out_features, in_features)), as in
nanoGPT and the book, so that the ecosystem's tools (PEFT's LoRA, torch.ao quantization, FSDP)
apply to this model unchanged.

Each normalisation and activation is written by hand (``explicit=True`` runs the formula below) and also runs through
torch's single fused kernel for the same formula (the default, fewer and faster kernels);
tests/model/test_layers.py checks the two against each other and against torch's modules.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.model.config import GPTConfig
from scratchllm.model.registry import register


class LayerNorm(nn.Module):
    """y = (x - mean) / sqrt(var + eps) * scale + shift, over the last dimension (biased var);
    ``bias=False`` drops the shift (nanoGPT).

    >>> LayerNorm(4)(torch.tensor([[1.0, 2.0, 3.0, 4.0]])).mean().abs() < 1e-6
    tensor(True)
    """

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.explicit = False
        self.scale = nn.Parameter(torch.ones(dim))
        self.shift = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.explicit:
            return F.layer_norm(x, self.scale.shape, self.scale, self.shift, self.eps)
        var, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=0)
        y = (x - mean) * torch.rsqrt(var + self.eps) * self.scale
        return y if self.shift is None else y + self.shift


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * scale: LayerNorm without centring or shift (Llama)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.explicit = False
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.explicit:
            return F.rms_norm(x, self.scale.shape, self.scale, self.eps)
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.scale


class GELU(nn.Module):
    """GELU(x) = x * Phi(x), Phi the standard normal CDF, in one of two forms:

    exact: 0.5 x (1 + erf(x / sqrt(2)))                            (nanoGPT, torch's default)
    tanh:  0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))         (GPT-2, the book)

    They differ by less than 1e-3; on our CPUs the exact form runs about 3x faster (benchmarks/train.py).
    """

    def __init__(self, form: str = "tanh") -> None:
        super().__init__()
        self.form = form
        self.explicit = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.explicit:
            return F.gelu(x, approximate="tanh" if self.form == "tanh" else "none")
        if self.form == "exact":
            return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


class FeedForward(nn.Module):
    """Position-wise MLP: d_model -> hidden -> d_model.

    gelu:   fc_out(GELU(fc_in(x)))                       (GPT-2, the book)
    swiglu: fc_out(SiLU(x W_gate) * (x W_up))            (Llama); fc_in holds [W_gate; W_up]
    so that one matmul computes both halves.
    """

    def __init__(self, config: GPTConfig, kind: str | None = None) -> None:
        super().__init__()
        kind = kind or config.part("ffn", 0)
        self.swiglu = kind == "swiglu"
        hidden = config.ffn_hidden_dim(kind)
        self.fc_in = nn.Linear(config.d_model, 2 * hidden if self.swiglu else hidden, bias=config.bias)
        self.activation = GELU(config.gelu)
        self.fc_out = nn.Linear(hidden, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc_in(x)  # (B, T, hidden) or (B, T, 2*hidden)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = swiglu(gate, up, explicit=self.activation.explicit)
        else:
            h = self.activation(h)
        return self.fc_out(h)

    def residual_projections(self) -> list[nn.Linear]:
        """The layers that write into the residual stream (GPT-2 scales their init)."""
        return [self.fc_out]


@register("ffn", "gelu")
def gelu_feed_forward(config: GPTConfig, layer_index: int) -> FeedForward:
    return FeedForward(config, "gelu")


@register("ffn", "swiglu")
def swiglu_feed_forward(config: GPTConfig, layer_index: int) -> FeedForward:
    return FeedForward(config, "swiglu")


def swiglu(gate: torch.Tensor, up: torch.Tensor, explicit: bool = False) -> torch.Tensor:
    """SiLU(gate) * up, where SiLU(z) = z * sigmoid(z).

    >>> swiglu(torch.zeros(2), torch.ones(2))
    tensor([0., 0.])
    """
    if explicit:
        return gate * torch.sigmoid(gate) * up
    return F.silu(gate) * up


@register("norm", "layernorm")
def layer_norm(config: GPTConfig, layer_index: int) -> LayerNorm:
    return LayerNorm(config.d_model, config.norm_eps, bias=config.bias)


@register("norm", "rmsnorm")
def rms_norm(config: GPTConfig, layer_index: int) -> RMSNorm:
    return RMSNorm(config.d_model, config.norm_eps)
