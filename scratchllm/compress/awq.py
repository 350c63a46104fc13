"""AWQ (Lin et al. 2023, activation-aware weight quantization): before rounding, scale up the
weights of the inputs that carry large activations, so that their rounding error shrinks.

For a layer y = x W^T, any per-input scales s > 0 leave it unchanged: y = (x / s) (W diag(s))^T.
Rounding W diag(s) instead of W, a weight of input j moves by at most half a step of the scaled
matrix, which after dividing by s_j is smaller for large s_j (the group's step is set by its largest
weight, so inputs scaled up gain precision while the rest lose little). Inputs whose activations
are large matter most to the output, so AWQ takes s from the activations' mean magnitude
a_j = mean |x_j| over calibration data and searches one exponent::

    s(alpha) = a^alpha / sqrt(max(a^alpha) min(a^alpha))     alpha in {0, 1/n, ..., (n-1)/n}
    W'(alpha) = Q(W diag(s)) diag(1/s)                          Q: round to nearest (int4 groups or int8)
    alpha*  = argmin ||X W^T - X W'^T||^2 = argmin sum_i (W - W')_i H (W - W')_i^T

with H = 2 X^T X / n, the same statistic GPTQ uses (``scratchllm.compress.gptq.Hessian``), so the
error is measured on every calibration row without keeping them. alpha = 0 is s = 1, plain
round to nearest, so the search never does worse than it on the calibration data. The paper folds
1/s into the operation before the layer (a norm, or the previous linear layer); here each layer
keeps s as a vector, ``QuantizedLinear.input_scale``, and its weight is Q(W diag(s)) diag(1/s)
(``dequantized_weight``): one (in,) division, and it works behind the GELU too, where nothing
before the layer is linear. The paper's second step, clipping the weight range, is not done.
"""

from __future__ import annotations

import torch
from torch import nn

from scratchllm.compress.gptq import Hessian, calibrated_quantize
from scratchllm.compress.quantize import QuantizedWeight, quantize_weight
from scratchllm.compress.quantized_layers import QuantizedLinear

GRID = 20  # exponents tried, the paper's n_grid


def awq_scales(mean_abs: torch.Tensor, alpha: float) -> torch.Tensor:
    """s(alpha) of the module docstring from (in,) mean |x| (inputs never seen get the floor 1e-4).

    >>> awq_scales(torch.tensor([1.0, 4.0]), 0.5).tolist()      # sqrt: [1, 2], over sqrt(2 * 1)
    [0.7071067690849304, 1.4142135381698608]
    """
    s = mean_abs.clamp(min=1e-4) ** alpha
    return s / (s.max() * s.min()).sqrt()


def output_error(weight: torch.Tensor, approx: torch.Tensor, hessian: torch.Tensor) -> float:
    """sum_i (W - W')_i H (W - W')_i^T: 2 x the mean squared output error over the calibration rows."""
    d = (weight - approx).double()
    return float(((d @ hessian.double()) * d).sum())


def awq_weight(weight: torch.Tensor, stats: Hessian, bits: int, group_size: int | None = None, *,
               grid: int = GRID) -> tuple[QuantizedWeight, torch.Tensor, list[float]]:
    """AWQ of one (out, in) ``weight`` from its inputs' ``stats``: the quantized W diag(s*), s* (in,),
    and the output error of every exponent tried (``alpha = k / grid``).

    >>> x = torch.randn(256, 16) * torch.linspace(0.1, 4, 16)      # some inputs far larger
    >>> stats = Hessian(16); stats.add(x)
    >>> qw, s, errors = awq_weight(torch.randn(4, 16), stats, bits=4, group_size=8)
    >>> s.shape, min(errors) <= errors[0]                           # errors[0]: round to nearest
    (torch.Size([16]), True)
    """
    w = weight.detach().float()
    hessian, mean_abs = stats.matrix(), stats.mean_abs().to(w.device)
    best, errors = None, []
    for k in range(grid):
        s = awq_scales(mean_abs, k / grid)
        qw = quantize_weight(w * s, bits, group_size)
        errors.append(output_error(w, qw.dequantize() / s, hessian))
        if best is None or errors[-1] < best[0]:
            best = errors[-1], qw, s
    return best[1], best[2], errors


def awq_quantize_layers(model: nn.Module, calibration: torch.Tensor, bits: int, group_size: int | None = None, *,
                        batch_size: int = 8, progress: bool = False) -> list[str]:
    """Replace every ``nn.Linear`` of the blocks and the output head of ``model`` (a ``GPT``) by its
    AWQ-quantized ``QuantizedLinear``, block by block as GPTQ does; returns the names done."""
    def quantize(linear: nn.Linear, stats: Hessian) -> QuantizedLinear:
        qw, s, _ = awq_weight(linear.weight, stats, bits, group_size)
        layer = QuantizedLinear.from_weight(qw, linear.bias)
        layer.input_scale = s.float()
        return layer
    return calibrated_quantize(model, calibration, quantize, "awq", batch_size=batch_size, progress=progress)
