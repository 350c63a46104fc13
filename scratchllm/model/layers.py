"""The small layers of a transformer block: linear maps, normalisation, activation, feed-forward.

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


class Linear(nn.Module):
    """y = x W + b, with W stored (in_features, out_features).

    This is how the book's chapter 3 writes attention (``x @ W_query``) and how GPT-2 stored
    its weights; ``nn.Linear`` stores the transpose. The layout matters for speed: generating
    one token multiplies a single vector by every matrix, and MKL's matrix-vector product reads
    an (in, out) matrix at full memory bandwidth but an (out, in) one at about half of it on
    our CPUs (benchmarks/generate.py).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.normal_(self.weight, std=in_features**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return x @ self.weight
        flat = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)  # one fused kernel
        return flat.view(*x.shape[:-1], flat.shape[-1])


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
    swiglu: fc_out(SiLU(x W_gate) * (x W_up))            (Llama); fc_in holds [W_gate | W_up]
    so that one matmul computes both halves.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.swiglu = config.ffn == "swiglu"
        hidden = config.hidden_dim
        self.fc_in = Linear(config.d_model, 2 * hidden if self.swiglu else hidden, bias=config.bias)
        self.activation = GELU(config.gelu)
        self.fc_out = Linear(hidden, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc_in(x)  # (B, T, hidden) or (B, T, 2*hidden)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = swiglu(gate, up, explicit=self.activation.explicit)
        else:
            h = self.activation(h)
        return self.fc_out(h)


def swiglu(gate: torch.Tensor, up: torch.Tensor, explicit: bool = False) -> torch.Tensor:
    """SiLU(gate) * up, where SiLU(z) = z * sigmoid(z).

    >>> swiglu(torch.zeros(2), torch.ones(2))
    tensor([0., 0.])
    """
    if explicit:
        return gate * torch.sigmoid(gate) * up
    return F.silu(gate) * up


def make_norm(config: GPTConfig) -> nn.Module:
    """The normalisation layer the config asks for."""
    if config.norm == "rmsnorm":
        return RMSNorm(config.d_model, config.norm_eps)
    return LayerNorm(config.d_model, config.norm_eps, bias=config.bias)
