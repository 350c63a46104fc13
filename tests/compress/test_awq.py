"""AWQ: the scale search picks the exponent with the least output error, recomputed here from the
calibration inputs themselves; it beats round to nearest where some inputs carry large activations;
the layer multiplies by Q(W diag(s)) diag(1/s); and a GPT quantized so saves and loads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scratchllm.checkpoint import load_checkpoint, save_checkpoint
from scratchllm.compress.awq import GRID, awq_weight
from scratchllm.compress.gptq import Hessian
from scratchllm.compress.quantize import quantize_weight
from scratchllm.compress.quantize_model import quantize_model, set_kernel
from scratchllm.compress.quantized_layers import QuantizedLinear
from scratchllm.model import GPT, GPTConfig


def _outlier_inputs(n: int, d: int, seed: int) -> torch.Tensor:
    """Activations where a few input channels are 20x larger than the rest (as LLMs' are)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    x[:, :: d // 4] *= 20
    return x


@pytest.mark.parametrize(("bits", "group_size"), [(4, 16), (8, None)])
def test_the_chosen_scales_have_the_least_output_error_measured_on_the_inputs(bits, group_size):
    x, w = _outlier_inputs(512, 64, 0), torch.randn(24, 64, generator=torch.Generator().manual_seed(1))
    stats = Hessian(64)
    stats.add(x.double())
    qw, s, errors = awq_weight(w, stats, bits, group_size)
    a = x.abs().mean(dim=0)
    measured, scales = [], []
    for k in range(GRID):  # s = a^alpha / sqrt(max * min), W' = Q(W s) / s, error ||X W^T - X W'^T||^2
        s_k = a ** (k / GRID)
        s_k = s_k / (s_k.max() * s_k.min()).sqrt()
        scales.append(s_k)
        approx = quantize_weight(w * s_k, bits, group_size).dequantize() / s_k
        measured.append(float(((x.double() @ (w - approx).double().T) ** 2).sum()))
    best = min(range(GRID), key=measured.__getitem__)
    torch.testing.assert_close(torch.tensor(errors), 2 * torch.tensor(measured) / len(x), rtol=1e-3, atol=0)
    torch.testing.assert_close(s, scales[best])
    assert torch.equal(qw.q, quantize_weight(w * s, bits, group_size).q)


def test_awq_beats_round_to_nearest_where_some_inputs_are_large():
    x, w = _outlier_inputs(512, 128, 2), torch.randn(32, 128, generator=torch.Generator().manual_seed(3))
    stats = Hessian(128)
    stats.add(x.double())
    qw, s, errors = awq_weight(w, stats, 4, 32)
    held_out = _outlier_inputs(256, 128, 4)
    rtn = quantize_weight(w, 4, 32).dequantize()
    awq = qw.dequantize() / s
    assert errors[0] == max(errors[0], min(errors)) and min(errors) < 0.8 * errors[0]  # errors[0]: alpha 0, rtn
    assert ((held_out @ (w - awq).T) ** 2).sum() < 0.8 * ((held_out @ (w - rtn).T) ** 2).sum()


def test_the_layer_multiplies_by_the_scaled_integers_divided_by_the_scales():
    x, w = _outlier_inputs(64, 64, 5), torch.randn(16, 64, generator=torch.Generator().manual_seed(6))
    bias = torch.randn(16)
    stats = Hessian(64)
    stats.add(x.double())
    qw, s, _ = awq_weight(w, stats, 4, 32)
    layer = QuantizedLinear.from_weight(qw, bias)
    layer.input_scale = s
    expected = F.linear(x, qw.dequantize() / s, bias)
    layer.kernel = "dequantize"
    torch.testing.assert_close(layer(x), expected)
    layer.kernel = "auto"  # fbgemm for a few rows: the same weight, re-quantized to int8 per channel
    assert (layer(x[:2]) - expected[:2]).abs().max() < 0.02 * expected[:2].abs().max()


def test_a_gpt_quantized_with_awq_saves_and_loads_the_same_model(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", tie_embeddings=True)).eval()
    calibration = torch.randint(0, 512, (8, 64), generator=torch.Generator().manual_seed(7))
    spec = quantize_model(model, 4, 32, method="awq", calibration=calibration, batch_size=4)
    assert spec["layers"]["out_head"] == "rtn"  # the shared table is rounded to nearest, as with GPTQ
    assert {m for name, m in spec["layers"].items() if name != "out_head"} == {"awq"}
    assert model.trf_blocks[0].att.W_qkv.input_scale is not None
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "awq", model, None))
    torch.testing.assert_close(loaded.trf_blocks[1].ff.fc_out.input_scale, model.trf_blocks[1].ff.fc_out.input_scale)
    for m in (model, loaded):
        set_kernel(m, "dequantize")
    with torch.no_grad():
        torch.testing.assert_close(loaded(calibration[:2]), model(calibration[:2]))
