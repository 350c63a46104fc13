"""How each linear weight sits in memory: same (out_features, in_features) shape, same values,
its longer side contiguous.

One token's decode step multiplies a single vector by every weight, and on a CPU the BLAS
matrix-vector product runs faster over a weight whose longer side is contiguous: for GPT-2
124M on 2 cores, 1.92 against 2.49 ms per block for nn.Linear's row-major (out, in), and
7.3 against 13.3 ms for the 50257 x 768 head (docs/benchmarks.md, "The open core, before and
after"). Only the strides change, so every tool that reads ``nn.Linear`` still applies.

A GPT is built row-major, as torch builds every ``nn.Linear``, and trains that way: the other
layout takes other matrix kernels whose float rounding differs, and the speedrun preset's
validation loss came out 0.010 worse on average over 5 seeds when it trained in it (unexplained;
docs/benchmarks.md). So the decode layout is applied where training is over: ``scratchllm
generate``, ``chat`` and ``serve`` load their model with it; from Python, call
``lay_out_weights(model)`` before generating. FSDP wants contiguous parameters and gets them back
with ``contiguous_weights``.
"""

from __future__ import annotations

import torch
from torch import nn


def lay_out_weights(module: nn.Module) -> nn.Module:
    """Store every ``nn.Linear`` weight in ``module`` with its longer side contiguous, in place
    (the Parameter objects stay, so optimizers, ties and hooks see no change). Returns ``module``.

    >>> linear = lay_out_weights(nn.Linear(2, 3))
    >>> linear.weight.shape, linear.weight.stride()
    (torch.Size([3, 2]), (1, 3))
    >>> lay_out_weights(nn.Linear(3, 2)).weight.stride()
    (3, 1)
    """
    for linear in module.modules():
        if not isinstance(linear, nn.Linear) or type(linear.weight.data) is not torch.Tensor:
            continue  # a quantized or sharded weight keeps its own layout
        weight = linear.weight.data
        if linear.out_features >= linear.in_features:  # column-major: the (longer) out side contiguous
            if not weight.t().is_contiguous():
                linear.weight.data = weight.t().contiguous().t()
        elif not weight.is_contiguous():
            linear.weight.data = weight.contiguous()
    return module


def contiguous_weights(module: nn.Module) -> nn.Module:
    """Make every parameter of ``module`` row-major contiguous again, in place (FSDP shards rows
    and refuses any other layout). Returns ``module``.

    >>> contiguous_weights(lay_out_weights(nn.Linear(2, 3))).weight.stride()
    (2, 1)
    """
    for parameter in module.parameters():
        if not parameter.data.is_contiguous():
            parameter.data = parameter.data.contiguous()
    return module
