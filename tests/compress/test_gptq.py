"""GPTQ: the blocked Cholesky algorithm equals the Optimal Brain Quantizer recursion written out
with an explicit inverse Hessian, lowers a layer's output error against round-to-nearest on the
same calibration data, and quantizes a GPT block by block."""

from __future__ import annotations

import pytest
import torch

from scratchllm.compress.gptq import calibration_windows, gptq_weight
from scratchllm.compress.quantize import int4_codes, int4_params, int8_codes, int8_scales, quantize_weight, unpack_int4
from scratchllm.compress.quantize_model import quantize_model, set_kernel
from scratchllm.compress.quantized_layers import QuantizedLinear
from scratchllm.errors import ScratchLLMError
from scratchllm.model import GPT, GPTConfig


def _correlated_inputs(n: int, d: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """Inputs whose features are correlated (as a layer's are), so H is far from diagonal."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=gen, dtype=torch.float64) / d**0.5 + torch.eye(d, dtype=torch.float64)
    return (torch.randn(n, d, generator=gen, dtype=torch.float64) @ mix).to(dtype)


def _obq_reference(w: torch.Tensor, h: torch.Tensor, bits: int, group_size: int | None,
                   damp: float = 0.01) -> torch.Tensor:
    """The codes of the paper's recursion (OBS for one column at a time, in order), with the
    inverse Hessian of the remaining columns updated by Gaussian elimination; float64."""
    W = w.clone()
    H = h.clone()
    H.diagonal().add_(damp * H.diagonal().mean())
    Hinv = torch.linalg.inv(H)
    codes = torch.empty(W.shape, dtype=torch.long)
    scales = int8_scales(W) if bits == 8 else None
    for c in range(W.shape[1]):
        if bits == 8:
            code = int8_codes(W[:, c : c + 1], scales)[:, 0]
            q = code.double() * scales
        else:
            if c % group_size == 0:
                s, z = int4_params(W[:, c : c + group_size])
            code = int4_codes(W[:, c : c + 1], s, z)[:, 0]
            q = (code.double() - z.double()) * s
        codes[:, c] = code.long()
        err = (W[:, c] - q) / Hinv[c, c]
        W -= err[:, None] * Hinv[c][None, :]  # the optimal change of every column not yet quantized
        W[:, c] = q
        Hinv = Hinv - Hinv[:, c : c + 1] @ Hinv[c : c + 1, :] / Hinv[c, c]  # remove column c
    return codes


@pytest.mark.parametrize("bits,group_size", [(8, None), (4, 8)])
def test_blocked_gptq_gives_the_codes_of_the_column_by_column_recursion(bits, group_size):
    x = _correlated_inputs(200, 48, seed=1, dtype=torch.float64)
    w = torch.randn(6, 48, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    h = 2 * x.T @ x / 200
    qw = gptq_weight(w, h, bits, group_size, block_size=16)  # 3 blocks: both the in-block and the lazy updates
    ours = qw.q.long() if bits == 8 else unpack_int4(qw.q).long()
    assert torch.equal(ours, _obq_reference(w, h, bits, group_size))


@pytest.mark.parametrize("bits,group_size", [(8, None), (4, 32), (4, 128)])
def test_gptq_lowers_the_layer_output_error_against_round_to_nearest(bits, group_size):
    x = _correlated_inputs(1024, 256, seed=3)
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(4)) * 0.05
    h = 2 * x.T @ x / len(x)
    gptq, rtn = gptq_weight(w, h, bits, group_size), quantize_weight(w, bits, group_size)

    def output_error(qw):
        return ((x @ w.T - x @ qw.dequantize().T) ** 2).sum().item()

    assert output_error(gptq) < 0.8 * output_error(rtn)
    held_out = _correlated_inputs(1024, 256, seed=3)[torch.randperm(1024)]  # same distribution
    assert ((held_out @ (w - gptq.dequantize()).T) ** 2).sum() < ((held_out @ (w - rtn.dequantize()).T) ** 2).sum()


def test_inputs_that_are_always_zero_get_zero_weights():
    x = _correlated_inputs(300, 32, seed=5)
    x[:, 3] = 0
    w = torch.randn(4, 32, generator=torch.Generator().manual_seed(6))
    qw = gptq_weight(w, 2 * x.T @ x / 300, 4, 16)
    assert torch.equal(qw.dequantize()[:, 3], torch.zeros(4))


def _model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("tiny", tie_embeddings=True)).eval()


def test_a_gpt_is_quantized_block_by_block_and_its_shared_table_rounded_to_nearest():
    calibration = torch.randint(0, 512, (8, 64), generator=torch.Generator().manual_seed(7))
    model = _model()
    spec = quantize_model(model, 4, 32, method="gptq", calibration=calibration, batch_size=4)
    assert spec["layers"]["out_head"] == "rtn" and spec["embedding"] == "tied"
    assert {m for name, m in spec["layers"].items() if name != "out_head"} == {"gptq"}
    assert len(spec["layers"]) == 2 * 4 + 1
    # the first block saw the quantized table's embeddings (the table was quantized first, as a model
    # quantized by rounding has it): GPTQ on those inputs, called directly, gives the same integers
    rounded, weight = _model(), _model().trf_blocks[0].att.W_qkv.weight
    quantize_model(rounded, 4, 32)
    inputs = []
    hook = rounded.trf_blocks[0].att.W_qkv.register_forward_hook(lambda m, args, out: inputs.append(args[0]))
    with torch.no_grad():
        for batch in calibration.split(4):
            rounded(batch)
    hook.remove()
    x = torch.cat(inputs).reshape(-1, 64).double()
    direct = gptq_weight(weight, (2 * x.T @ x / len(x)).float(), 4, 32)
    assert torch.equal(model.trf_blocks[0].att.W_qkv.q, direct.q)
    set_kernel(model, "dequantize")
    assert isinstance(model.trf_blocks[1].ff.fc_out, QuantizedLinear)
    assert torch.isfinite(model(calibration[:2])).all()


def test_a_calibration_set_smaller_than_one_batch_is_refused():
    with pytest.raises(ScratchLLMError, match="holds 3 windows of 64 tokens, fewer than one batch of 8"):
        calibration_windows(list(range(3 * 64 + 10)), 64, n_windows=32, batch_size=8)
    with pytest.raises(ScratchLLMError, match="holds 4 windows, fewer than one batch of 8"):
        quantize_model(_model(), 4, 32, method="gptq", calibration=torch.zeros(4, 64, dtype=torch.long))
    windows = calibration_windows(list(range(10 * 8)), 8, n_windows=4, batch_size=2)
    assert windows.shape == (4, 8) and bool((windows[:, 0] % 8 == 0).all())  # whole, non-overlapping windows
    assert windows[:, 0].unique().numel() == 4
