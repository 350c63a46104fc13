"""GPTQ (Frantar et al. 2022): quantize a layer's weights one input column at a time, and after
each column move the not-yet-quantized columns so that the layer's *outputs* on calibration data
change as little as possible.

For a layer y = x W^T with calibration inputs X (n, in), the output error of a quantized W' is
||X W^T - X W'^T||^2 = sum_i (W_i - W'_i) H (W_i - W'_i)^T with the Hessian H = 2 X^T X / n
(the same for every row i). Quantizing column c to q costs (w_c - q)^2 / [H^-1]_cc, and the best
change of the remaining columns F is (Optimal Brain Surgeon, the paper's eq. 2-3)::

    err     = (w_c - q) / [H_F^-1]_cc
    W_F    -= err [H_F^-1]_{c, F}                        every row at once
    H_F^-1 <- the inverse Hessian with column c removed

GPTQ's two tricks: every row uses the same column order, so H^-1 is shared; and the rows of the
upper Cholesky factor U of H^-1 (H^-1 = U^T U) are exactly the successive removals, scaled:
U[c, c:] = [H_F^-1]_{c, c:} / sqrt([H_F^-1]_cc). So the update is ``err = (w_c - q) / U[c, c]``,
``W[:, c:] -= err U[c, c:]``, with no matrix inverted per column. Columns go in blocks of 128:
inside a block each column updates the rest of the block; the columns after it get the block's
errors in one matmul. The paper adds 1% of the mean diagonal to H (dampening) so that its
Cholesky factor exists; inputs that were always 0 (H_cc = 0) are quantized to 0.

With int4 groups, a group's scale and zero point are chosen from its columns' *updated* values
when the algorithm reaches its first column (groups never straddle a block: the block is a
multiple of the group size). int8 scales are per row, chosen once from the original weights.

The model is quantized block by block, as in the paper: the calibration windows run once to the
first block; each block's linear layers collect their H from the inputs the already-quantized
blocks produce, are quantized, and the block's quantized outputs feed the next block.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from scratchllm.compress.quantize import (
    QuantizedWeight,
    check_bits,
    int4_codes,
    int4_params,
    int8_codes,
    int8_scales,
    pack_int4,
)
from scratchllm.compress.quantized_layers import QuantizedLinear
from scratchllm.errors import ScratchLLMError

DAMP = 0.01  # of the mean of diag(H), the paper's default
BLOCK = 128


class Hessian:
    """H = 2 X^T X / n over every row that ``add`` sees (inputs (..., in) of one linear layer), and
    the mean |x| of each input (AWQ's activation statistic)."""

    def __init__(self, n_in: int, device: torch.device | str | None = None) -> None:
        self.sum = torch.zeros(n_in, n_in, dtype=torch.float64, device=device)
        self.abs_sum = torch.zeros(n_in, dtype=torch.float64, device=device)
        self.rows = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).double()
        self.sum += x.T @ x
        self.abs_sum += x.abs().sum(dim=0)
        self.rows += x.shape[0]

    def matrix(self) -> torch.Tensor:
        return (2 * self.sum / max(self.rows, 1)).float()

    def mean_abs(self) -> torch.Tensor:
        return (self.abs_sum / max(self.rows, 1)).float()


def gptq_weight(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int | None = None, *,
                damp: float = DAMP, block_size: int = BLOCK) -> QuantizedWeight:
    """GPTQ of one (out, in) ``weight`` given its inputs' (in, in) ``hessian``.

    The arithmetic runs in float64 when ``weight`` is float64 (tests), float32 otherwise.

    >>> x = torch.randn(256, 16) @ torch.randn(16, 16)            # correlated inputs
    >>> w = torch.randn(4, 16)
    >>> qw = gptq_weight(w, 2 * x.T @ x / 256, bits=4, group_size=8)
    >>> qw.q.shape, qw.scales.shape
    (torch.Size([4, 8]), torch.Size([4, 2]))
    """
    check_bits(bits, group_size)
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    W = weight.detach().clone().to(dtype)
    H = hessian.detach().clone().to(dtype)
    n_out, n_in = W.shape
    dead = H.diagonal() == 0  # inputs that were always zero: any weight there is free, make it 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H.diagonal().add_(damp * H.diagonal().mean())
    try:
        U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    except RuntimeError:  # torch.linalg.LinAlgError: not positive definite even after dampening
        raise ScratchLLMError("the calibration inputs' Hessian is not positive definite: give more calibration "
                              "windows (or more varied text)") from None
    codes = torch.empty(n_out, n_in, dtype=torch.int8 if bits == 8 else torch.uint8, device=W.device)
    if bits == 8:
        scales, zeros = int8_scales(W), None
    else:
        block_size = group_size * max(1, block_size // group_size)
        scales = torch.empty(n_out, n_in // group_size, dtype=dtype, device=W.device)
        zeros = torch.empty(n_out, n_in // group_size, dtype=torch.uint8, device=W.device)
    for b0 in range(0, n_in, block_size):
        b1 = min(b0 + block_size, n_in)
        W1, U1 = W[:, b0:b1].clone(), U[b0:b1, b0:b1]
        errors = torch.zeros_like(W1)
        for i in range(b1 - b0):
            col = b0 + i
            if bits == 8:
                c = int8_codes(W1[:, i : i + 1], scales)[:, 0]
                q = c.to(dtype) * scales
            else:
                g = col // group_size
                if col % group_size == 0:  # a new group: its parameters from its columns as they are now
                    scales[:, g], zeros[:, g] = int4_params(W1[:, i : i + group_size])
                c = int4_codes(W1[:, i : i + 1], scales[:, g], zeros[:, g])[:, 0]
                q = (c.to(dtype) - zeros[:, g].to(dtype)) * scales[:, g]
            codes[:, col] = c
            err = (W1[:, i] - q) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]  # column i becomes q; the rest compensate
            errors[:, i] = err
        W[:, b1:] -= errors @ U[b0:b1, b1:]  # the block's errors, on every later column at once
    q = codes if bits == 8 else pack_int4(codes)
    return QuantizedWeight(q, scales.float(), zeros, bits, group_size)


def calibration_windows(tokens: np.ndarray | list[int], context_length: int, n_windows: int, batch_size: int,
                        seed: int = 0) -> torch.Tensor:
    """(N, context_length) token ids: ``n_windows`` non-overlapping windows of ``tokens`` (a random
    choice, in text order, when there are more), refused when fewer than one batch fit.

    >>> calibration_windows(list(range(100)), 8, n_windows=4, batch_size=2).shape
    torch.Size([4, 8])
    """
    tokens = np.asarray(tokens)
    available = len(tokens) // context_length
    if available < batch_size or n_windows < batch_size:
        raise ScratchLLMError(
            f"the calibration set holds {min(available, n_windows)} windows of {context_length} tokens, fewer than "
            f"one batch of {batch_size}: give more calibration text (or more windows), or a smaller --batch-size")
    chosen = np.arange(available)
    if available > n_windows:
        chosen = np.sort(np.random.default_rng(seed).choice(available, n_windows, replace=False))
    starts = chosen * context_length
    return torch.from_numpy(np.stack([tokens[s : s + context_length] for s in starts]).astype(np.int64))


class _Caught(Exception):
    """Raised by a hook to stop a forward pass once the first block's inputs are caught."""


def gptq_quantize_layers(model: nn.Module, calibration: torch.Tensor, bits: int, group_size: int | None = None, *,
                         batch_size: int = 8, progress: bool = False) -> list[str]:
    """Replace every ``nn.Linear`` of the blocks and the output head of ``model`` (a ``GPT``) by
    its GPTQ-quantized ``QuantizedLinear`` (layers quantized already are left); returns the names done.

    ``calibration`` (N, T) token ids run in batches of ``batch_size``, block by block (module docstring).
    """
    def quantize(linear: nn.Linear, stats: Hessian) -> QuantizedLinear:
        return QuantizedLinear.from_weight(gptq_weight(linear.weight, stats.matrix(), bits, group_size), linear.bias)
    return calibrated_quantize(model, calibration, quantize, "gptq", batch_size=batch_size, progress=progress)


@torch.no_grad()
def calibrated_quantize(model: nn.Module, calibration: torch.Tensor,
                        quantize: Callable[[nn.Linear, Hessian], QuantizedLinear], method: str, *,
                        batch_size: int = 8, progress: bool = False) -> list[str]:
    """Replace every ``nn.Linear`` of the blocks and the output head of ``model`` by
    ``quantize(linear, stats of its calibration inputs)``, marked ``method``, block by block
    (module docstring); returns the names done. Shared by GPTQ and AWQ."""
    if calibration.shape[0] < batch_size:
        raise ScratchLLMError(f"the calibration set holds {calibration.shape[0]} windows, fewer than one batch of "
                              f"{batch_size}: give more calibration windows, or a smaller --batch-size")
    was_training = model.training
    model.eval()
    caught: dict[str, tuple] = {}

    def catch(module: nn.Module, args: tuple) -> None:
        caught["args"] = args
        raise _Caught

    handle = model.trf_blocks[0].register_forward_pre_hook(catch)
    inputs = []
    try:
        for batch in calibration.split(batch_size):
            try:
                model(batch.to(model.device))
            except _Caught:
                inputs.append(caught["args"][0])  # (B, T, d_model): the first block's input
    finally:
        handle.remove()
    rope, mask = caught["args"][1], caught["args"][2]  # the same positions in every window
    done = []
    for layer, block in enumerate(tqdm(model.trf_blocks, desc=method, unit="block", disable=not progress)):
        prefix = f"trf_blocks.{layer}."
        linears = {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}
        hessians = _collect(linears, lambda block=block, layer=layer, inputs=inputs:
                            [block(x, rope, mask, None, layer) for x in inputs])
        for name, linear in linears.items():
            _quantize_into(block, name, quantize(linear, hessians[name]), method)
            done.append(prefix + name)
        inputs = [block(x, rope, mask, None, layer) for x in inputs]  # what the quantized block passes on
    if isinstance(model.out_head, nn.Linear):
        hessian = Hessian(model.out_head.in_features, model.device)
        for x in inputs:
            hessian.add(model.final_norm(x))  # the head's input (no need to compute the logits)
        _quantize_into(model, "out_head", quantize(model.out_head, hessian), method)
        done.append("out_head")
    model.train(was_training)
    return done


def _collect(linears: dict[str, nn.Linear], run) -> dict[str, Hessian]:
    """The Hessian (and mean |x|) of each layer's inputs while ``run()`` runs."""
    hessians = {name: Hessian(m.in_features, m.weight.device) for name, m in linears.items()}
    hooks = [m.register_forward_hook(lambda mod, args, out, h=hessians[name]: h.add(args[0]))
             for name, m in linears.items()]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return hessians


def _quantize_into(parent: nn.Module, name: str, layer: QuantizedLinear, method: str) -> None:
    layer.method = method
    owner_name, _, child = name.rpartition(".")
    setattr(parent.get_submodule(owner_name) if owner_name else parent, child, layer)
