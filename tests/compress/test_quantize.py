"""Quantization formulas and layers: every weight within half a step, int8 codes equal torch's own
per-channel quantizer, packed int4 round trips, fbgemm's path equals the dequantize fallback within
the activation rounding it adds, and a quantized GPT keeps its table usable."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scratchllm.compress.quantize import pack_int4, quantize_weight, unpack_int4
from scratchllm.compress.quantize_model import quantization_spec, quantize_model, set_kernel
from scratchllm.compress.quantized_layers import QuantizedEmbedding, QuantizedLinear, fbgemm_available
from scratchllm.errors import ScratchLLMError
from scratchllm.model import GPT, GPTConfig


def _awkward_weight(out: int = 12, n_in: int = 128, seed: int = 0) -> torch.Tensor:
    """Random rows plus the cases a formula can slip on: a row of zeros, a constant row, all-positive
    and all-negative rows, an outlier."""
    w = torch.randn(out, n_in, generator=torch.Generator().manual_seed(seed))
    w[1] = 0.0
    w[2] = 0.37
    w[3] = w[3].abs() + 0.5
    w[4] = -w[4].abs()
    w[5, 7] = 40.0
    return w


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")  # the oracle is deprecated, not wrong
def test_int8_codes_are_torchs_per_channel_quantizer_and_within_half_a_step():
    w = _awkward_weight()
    qw = quantize_weight(w, bits=8)
    assert qw.q.dtype == torch.int8 and qw.q.shape == w.shape and qw.scales.shape == (12,)
    # the oracle: torch's own symmetric per-channel int8 quantizer, given the same scales
    theirs = torch.quantize_per_channel(w, qw.scales.double(), torch.zeros(12, dtype=torch.long), 0, torch.qint8)
    assert torch.equal(qw.q, theirs.int_repr())
    row_max = w.abs().amax(1)
    assert torch.equal(qw.scales, torch.where(row_max > 0, row_max / 127, 1.0))  # a row of zeros gets scale 1
    assert qw.q.abs().max() == 127  # the largest weight of a row lands on the end of the grid
    err = (qw.dequantize() - w).abs()
    assert bool((err <= qw.step() / 2 + 1e-6 * w.abs()).all())


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_groups_dequantize_within_half_a_step(group_size):
    w = _awkward_weight()
    qw = quantize_weight(w, bits=4, group_size=group_size)
    groups = 128 // group_size
    assert qw.q.shape == (12, 64) and qw.q.dtype == torch.uint8  # two codes a byte
    assert qw.scales.shape == (12, groups) and qw.zeros.shape == (12, groups)
    err = (qw.dequantize() - w).abs()
    assert bool((err <= qw.step() / 2 + 1e-6 * w.abs().clamp(min=1)).all())
    # the formula written out in float64 for one group: step (hi - lo) / 15, 0.0 exactly representable
    g = w[0, :group_size].double()
    lo, hi = min(g.min().item(), 0.0), max(g.max().item(), 0.0)
    assert qw.scales[0, 0].item() == pytest.approx((hi - lo) / 15, rel=1e-6)
    assert qw.zeros[0, 0].item() == round(-lo / ((hi - lo) / 15))
    zero_code = qw.zeros[1]  # the row of zeros dequantizes to exactly 0
    assert torch.equal(qw.dequantize()[1], torch.zeros(128)) and bool((zero_code <= 15).all())


def test_packed_int4_round_trips_every_pair_of_codes():
    codes = torch.cartesian_prod(torch.arange(16), torch.arange(16)).to(torch.uint8).reshape(1, -1)  # (1, 512)
    packed = pack_int4(codes)
    assert packed.shape == (1, 256) and packed.dtype == torch.uint8
    assert sorted(packed.flatten().tolist()) == list(range(256))  # 256 pairs, 256 different bytes
    assert torch.equal(unpack_int4(packed), codes)
    assert (packed[0, 1].item(), codes[0, 2].item(), codes[0, 3].item()) == (16, 0, 1)  # low nibble first


def _activation_step(x: torch.Tensor) -> float:
    """fbgemm's dynamic quantization of x: one uint8 scale over the tensor, its range holding 0."""
    return (max(x.max().item(), 0.0) - min(x.min().item(), 0.0)) / 255


@pytest.mark.skipif(not fbgemm_available(), reason="needs torch's fbgemm (x86) kernels")
@pytest.mark.parametrize("bits,group_size", [(8, None), (4, 32), (4, 128)])
@pytest.mark.parametrize("shape", [(1, 1), (3,), (2, 4)])
def test_the_fbgemm_kernel_equals_the_dequantize_fallback_within_its_activation_rounding(bits, group_size, shape):
    torch.manual_seed(0)
    linear = nn.Linear(256, 96)
    layer = QuantizedLinear.from_linear(linear, bits, group_size)
    x = torch.randn(*shape, 256) * 3
    layer.kernel = "dequantize"
    slow = layer(x)
    torch.testing.assert_close(slow, x @ layer.dequantized_weight().T + linear.bias)  # the fallback: W' x + b
    layer.kernel = "fbgemm"
    fast = layer(x)
    assert fast.shape == slow.shape == (*shape, 96)
    w = layer.dequantized_weight()
    # |dy_i| <= s_x sum_j |W'_ij|  (+ for int4, re-quantized to int8 per row: sum_j |x_j| s8_i / 2)
    bound = _activation_step(x) * w.abs().sum(1)
    if bits == 4:
        bound = bound + x.abs().sum(-1, keepdim=True) * (w.abs().amax(1) / 127 / 2)
    diff = (fast - slow).abs()
    assert bool((diff <= bound + 1e-4).all()), (diff / bound).max()
    assert diff.max() > 0  # the two paths really are different computations
    assert diff.max() < 0.25 * bound.max()  # and the rounding errors mostly cancel, as random ones do


@pytest.mark.skipif(not fbgemm_available(), reason="needs torch's fbgemm (x86) kernels")
def test_auto_uses_fbgemm_for_decoding_rows_and_the_fallback_for_long_inputs():
    torch.manual_seed(0)
    layer = QuantizedLinear.from_linear(nn.Linear(64, 32), 8)
    few, many = torch.randn(2, 1, 64), torch.randn(4, 64, 64)
    layer.kernel = "fbgemm"
    fast_few = layer(few)
    layer.kernel = "dequantize"
    slow_few, slow_many = layer(few), layer(many)
    layer.kernel = "auto"
    assert torch.equal(layer(few), fast_few) and not torch.equal(fast_few, slow_few)
    assert torch.equal(layer(many), slow_many)


def _tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("tiny", **overrides)).eval()


@pytest.mark.parametrize("bits,group_size", [(8, None), (4, 32)])
def test_a_tied_model_reads_its_table_from_the_quantized_head(bits, group_size):
    model = _tiny(tie_embeddings=True)
    original = model.tok_emb.weight.detach().clone()
    spec = quantize_model(model, bits, group_size)
    assert isinstance(model.out_head, QuantizedLinear) and isinstance(model.tok_emb, QuantizedEmbedding)
    assert spec["embedding"] == "tied" and model.tok_emb.tied
    assert not any(isinstance(m, nn.Linear) for m in model.modules())  # every linear layer, the head included
    assert not any(k.startswith("tok_emb") for k in model.state_dict())  # the shared matrix is stored once
    idx = torch.tensor([[0, 5, 511, 5]])
    table = model.out_head.dequantized_weight()
    assert torch.equal(model.tok_emb(idx), table[idx])  # the lookup is the head's rows, dequantized
    step = model.out_head.weight_quantized.step()
    assert bool(((table - original).abs() <= step / 2 + 1e-6).all())


def test_an_untied_table_is_quantized_on_its_own_or_kept():
    model = _tiny()
    table = model.tok_emb.weight.detach().clone()
    assert quantize_model(model, 4, 32)["embedding"] == "own"
    qw = quantize_weight(table, 4, 32)
    assert torch.equal(model.tok_emb(torch.tensor([3, 7])), qw.dequantize()[[3, 7]])
    kept = _tiny(tie_embeddings=True)
    table = kept.tok_emb.weight.detach().clone()
    spec = quantize_model(kept, 8, embeddings=False)
    assert spec["embedding"] is None and isinstance(kept.tok_emb, nn.Embedding)
    assert torch.equal(kept.tok_emb.weight, table)  # float32, no longer tied to the (quantized) head


def test_quantized_logits_stay_close_to_float_and_int8_closer_than_int4():
    idx = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = _tiny()(idx)
        errors = {}
        for bits, g in [(8, None), (4, 32)]:
            model = _tiny()
            quantize_model(model, bits, g)
            set_kernel(model, "dequantize")
            errors[bits] = ((model(idx) - ref).norm() / ref.norm()).item()
    assert 0 < errors[8] < errors[4] < 0.2
    assert errors[8] < 0.02


def test_bad_requests_are_one_line_errors():
    with pytest.raises(ScratchLLMError, match="does not divide the 48 inputs of trf_blocks.0.att.W_qkv"):
        quantize_model(_tiny(d_model=48, n_heads=4), 4, 32)
    with pytest.raises(ScratchLLMError, match="int8 has one scale per output channel"):
        quantize_model(_tiny(), 8, 32)
    with pytest.raises(ScratchLLMError, match="--bits must be 8 or 4"):
        quantize_model(_tiny(), 3)
    model = _tiny()
    quantize_model(model, 4, 64)
    assert quantization_spec(model)["group_size"] == 64
    with pytest.raises(ScratchLLMError, match=r"already quantized \(int4, group size 64\)"):
        quantize_model(model, 8)
    with pytest.raises(ScratchLLMError, match="needs calibration text"):
        quantize_model(_tiny(), 4, 32, method="gptq")
