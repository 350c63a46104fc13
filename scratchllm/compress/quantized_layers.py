"""Layers that hold quantized weights: ``QuantizedLinear`` for every ``nn.Linear``, and
``QuantizedEmbedding`` for the token table.

Two ways to compute ``y = x W'^T + b`` (``kernel``):

- ``"dequantize"``: the fallback that runs anywhere: W' = dequantize(q, scales, zeros) in x's
  dtype, then an ordinary matmul. Exact in the quantized weights; it unpacks the whole matrix per call.
- ``"fbgemm"``: the int8 kernels PyTorch ships for CPUs (``torch.ops.quantized.linear_prepack`` /
  ``linear_dynamic``, what ``torch.ao``'s dynamic quantization runs). The weights are packed once,
  on the first call, into fbgemm's layout; each call quantizes the activations to 8 bits on the fly
  (one scale and zero point for the whole input tensor), multiplies in integers and rescales. So it
  differs from the fallback by that activation rounding: at most one activation step s_x =
  (max(x, 0) - min(x, 0)) / 255 per input, i.e. |dy_i| <= s_x * sum_j |W'_ij|
  (tests/compress/test_quantize.py checks the bound). int4 weights have no fast kernel on this CPU
  (``torch._weight_int4pack_mm_for_cpu`` measured 0.07x fp32), so they are stored packed and, once,
  re-quantized to int8 per output channel for fbgemm: one more rounding of at most half an int8
  step, s8_i / 2 = max_j |W'_ij| / 254, per weight.
- ``"auto"`` (default): fbgemm on a CPU for inputs of at most ``FBGEMM_MAX_ROWS`` rows (decoding:
  one row per running sequence), the fallback otherwise (prefill, evaluation), where a float
  matmul is as fast and the activations keep their full precision. See docs/quantization.md.

>>> layer = QuantizedLinear.from_linear(nn.Linear(64, 8), bits=4, group_size=32)
>>> layer.q.dtype, tuple(layer.q.shape), tuple(layer.scales.shape)
(torch.uint8, (8, 32), (8, 2))
>>> layer(torch.randn(3, 64)).shape
torch.Size([3, 8])
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.compress.quantize import QuantizedWeight, check_bits, int8_codes, int8_scales, quantize_weight
from scratchllm.errors import ScratchLLMError

KERNELS = ("auto", "fbgemm", "dequantize")
FBGEMM_MAX_ROWS = 16  # measured: docs/quantization.md#choosing-the-kernel


def fbgemm_available() -> bool:
    """Whether this build of torch has fbgemm's quantized CPU kernels (x86 builds do)."""
    return any(engine in torch.backends.quantized.supported_engines for engine in ("x86", "fbgemm"))


def _quantized_buffers(module: nn.Module, out: int, n_in: int, bits: int, group_size: int | None,
                       device: torch.device | str | None) -> None:
    """Empty buffers of the stored format (filled by ``copy_from`` or a state dict)."""
    if bits == 8:
        module.register_buffer("q", torch.empty(out, n_in, dtype=torch.int8, device=device))
        module.register_buffer("scales", torch.empty(out, device=device))
        module.register_buffer("zeros", None)
    else:
        groups = n_in // group_size
        module.register_buffer("q", torch.empty(out, n_in // 2, dtype=torch.uint8, device=device))
        module.register_buffer("scales", torch.empty(out, groups, device=device))
        module.register_buffer("zeros", torch.empty(out, groups, dtype=torch.uint8, device=device))


class QuantizedLinear(nn.Module):
    """``y = x W'^T + b`` with W' (out, in) stored as ``QuantizedWeight`` buffers ``q``, ``scales``,
    ``zeros`` (int4) and an fp32 ``bias``; inference only (no gradients reach the integers)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, bits: int, group_size: int | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        check_bits(bits, group_size)
        self.in_features, self.out_features, self.bits, self.group_size = in_features, out_features, bits, group_size
        _quantized_buffers(self, out_features, in_features, bits, group_size, device)
        if bias:
            self.register_buffer("bias", torch.empty(out_features, device=device))
        else:
            self.register_buffer("bias", None)
        # AWQ's per-input scales s (in,): the integers hold W diag(s), the layer computes with W' diag(1/s)
        self.register_buffer("input_scale", None)
        self.kernel = "auto"
        self.method = "rtn"  # how the integers were chosen: round to nearest, "gptq" or "awq"
        self._packed = None  # fbgemm's packed weights, made on the first fbgemm call

    @classmethod
    def from_weight(cls, weight: QuantizedWeight, bias: torch.Tensor | None = None) -> QuantizedLinear:
        """A layer holding ``weight`` (and an optional bias, kept in float32)."""
        out, n_in = weight.shape
        layer = cls(n_in, out, bias is not None, weight.bits, weight.group_size, device=weight.q.device)
        layer.q, layer.scales = weight.q, weight.scales.float()
        if weight.zeros is not None:
            layer.zeros = weight.zeros
        if bias is not None:
            layer.bias = bias.detach().float().clone()
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int | None = None) -> QuantizedLinear:
        """Round-to-nearest quantization of an ``nn.Linear``."""
        return cls.from_weight(quantize_weight(linear.weight, bits, group_size), linear.bias)

    @property
    def weight_quantized(self) -> QuantizedWeight:
        return QuantizedWeight(self.q, self.scales, self.zeros, self.bits, self.group_size)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """W' (out, in) in ``dtype``: what the layer multiplies by (inspection, the fallback);
        with AWQ's ``input_scale`` s, the stored integers' W' diag(1/s)."""
        w = self.weight_quantized.dequantize(dtype=dtype)
        return w / self.input_scale.to(dtype) if self.input_scale is not None else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if self._use_fbgemm(x):
            return self._fbgemm(x)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def _use_fbgemm(self, x: torch.Tensor) -> bool:
        if self.kernel == "dequantize":
            return False
        usable = x.device.type == "cpu" and fbgemm_available()
        if self.kernel == "fbgemm":
            if not usable:
                raise ScratchLLMError(f"kernel 'fbgemm' needs a CPU with fbgemm; this input is on {x.device} "
                                      "(use kernel 'auto' or 'dequantize')")
            return True
        return usable and x.numel() // self.in_features <= FBGEMM_MAX_ROWS

    def _fbgemm(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None:
            self._packed = self._prepack()
        y = torch.ops.quantized.linear_dynamic(x.float().contiguous(), self._packed, False)
        return y.to(x.dtype)

    def _prepack(self):
        """fbgemm's packed int8 weights (per output channel, zero points 0) and the bias."""
        if self.bits == 8 and self.input_scale is None:
            q, scales = self.q, self.scales
        else:  # int4 (no fast int4 kernel here) or AWQ's W' diag(1/s), once, re-quantized to int8 per output channel
            w = self.dequantized_weight()
            scales = int8_scales(w)
            q = int8_codes(w, scales)
        with warnings.catch_warnings():  # torch 2.13 marks quantized tensors deprecated (torchao's future);
            warnings.simplefilter("ignore", UserWarning)  # the fallback stays when they go
            qweight = torch._make_per_channel_quantized_tensor(
                q, scales.double(), torch.zeros(self.out_features, dtype=torch.long), 0)
        return torch.ops.quantized.linear_prepack(qweight, self.bias.float() if self.bias is not None else None)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._packed = None  # new integers: pack them again on the next fbgemm call
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, recurse: bool = True):
        self._packed = None  # moved or cast: the packed copy is stale
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.group_size else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"bits={self.bits}{group}, kernel={self.kernel}")


class QuantizedEmbedding(nn.Module):
    """A token table of quantized rows: ``forward(idx)`` dequantizes only the rows looked up.

    ``tied_to(head)`` reads the rows of a quantized output head instead of holding a table
    (tied embeddings: one matrix, two uses, stored once under the head's name); the head is kept
    as a plain attribute, not a submodule, so that its buffers appear once in the state dict and
    ``.to()`` moves them once.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, bits: int, group_size: int | None = None,
                 device: torch.device | str | None = None, *, own: bool = True) -> None:
        super().__init__()
        check_bits(bits, group_size)
        self.num_embeddings, self.embedding_dim, self.bits, self.group_size = (num_embeddings, embedding_dim,
                                                                               bits, group_size)
        if own:
            _quantized_buffers(self, num_embeddings, embedding_dim, bits, group_size, device)
        self.__dict__["_head"] = None

    @classmethod
    def from_weight(cls, weight: QuantizedWeight) -> QuantizedEmbedding:
        vocab, dim = weight.shape
        table = cls(vocab, dim, weight.bits, weight.group_size, device=weight.q.device)
        table.q, table.scales = weight.q, weight.scales.float()
        if weight.zeros is not None:
            table.zeros = weight.zeros
        return table

    @classmethod
    def tied_to(cls, head: QuantizedLinear) -> QuantizedEmbedding:
        """A table that is ``head``'s (vocab, d_model) matrix."""
        table = cls(head.out_features, head.in_features, head.bits, head.group_size, own=False)
        table.__dict__["_head"] = head
        return table

    @property
    def tied(self) -> bool:
        return self._head is not None

    @property
    def weight_quantized(self) -> QuantizedWeight:
        source = self._head if self._head is not None else self
        return QuantizedWeight(source.q, source.scales, source.zeros, self.bits, self.group_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) ids -> (B, T, embedding_dim)
        return self.weight_quantized.dequantize(rows=idx)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.group_size else ""
        tied = ", tied to the output head" if self.tied else ""
        return f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}{group}{tied}"
