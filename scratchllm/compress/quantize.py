"""Weight-only quantization by hand: each weight becomes a small integer and a shared scale.

A weight matrix W is (out, in), as ``nn.Linear`` stores it; row i makes output i.

int8, per output channel, symmetric (one scale per row, no zero point)::

    s_i  = max_j |W_ij| / 127
    q_ij = clamp(round(W_ij / s_i), -127, 127)                 int8
    W'_ij = s_i q_ij                                           |W'_ij - W_ij| <= s_i / 2

int4, group-wise, asymmetric: each row is cut into groups of g consecutive inputs, and each group
gets a scale and a zero point (the integer that stands for 0.0)::

    lo = min(0, min W_group),  hi = max(0, max W_group)       the range always holds 0
    s  = (hi - lo) / 15
    z  = clamp(round(-lo / s), 0, 15)
    q  = clamp(round(W / s) + z, 0, 15)                        4 bits, 0..15
    W' = s (q - z)                                             |W' - W| <= s / 2

Why at most half a step: ``W / s + z`` lies in [-0.5, 15.5] (z is -lo/s rounded), so rounding
and then clamping to 0..15 moves it by at most 0.5. A group (or row) of zeros gets s = 1 so the
formulas need no special case. Two 4-bit codes share a byte: ``byte = q[2k] | q[2k+1] << 4``.

>>> w = torch.tensor([[0.5, -1.0, 0.25, 0.0]])
>>> qw = quantize_weight(w, bits=8)
>>> qw.q.tolist(), round(float(qw.scales[0]) * 127, 6)
([[64, -127, 32, 0]], 1.0)
>>> (qw.dequantize() - w).abs().max() <= qw.scales[0] / 2
tensor(True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scratchllm.errors import ScratchLLMError

BITS = (8, 4)
INT8_MAX = 127
INT4_MAX = 15


def int8_scales(w: torch.Tensor) -> torch.Tensor:
    """(out,) symmetric scales of the rows of ``w`` (out, in): max |row| / 127 (1 for a row of zeros).

    >>> int8_scales(torch.tensor([[0.0, -2.54], [0.0, 0.0]])).tolist()
    [0.019999999552965164, 1.0]
    """
    s = w.abs().amax(dim=-1) / INT8_MAX
    return torch.where(s > 0, s, torch.ones_like(s))


def int8_codes(w: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """int8 codes of ``w`` (..., in) with one scale per row (...): clamp(round(w / s), -127, 127)."""
    return torch.clamp(torch.round(w / scales[..., None]), -INT8_MAX, INT8_MAX).to(torch.int8)


def int4_params(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of each group, the last dimension of ``w`` (..., g): float (...), uint8 (...).

    >>> s, z = int4_params(torch.tensor([[-1.0, 0.5], [2.0, 3.0]]))
    >>> [round(v, 4) for v in s.tolist()], z.tolist()      # [-1, 0.5]: step 0.1, 0.0 is code 10
    ([0.1, 0.2], [10, 0])
    """
    lo = w.amin(dim=-1).clamp(max=0)
    hi = w.amax(dim=-1).clamp(min=0)
    s = (hi - lo) / INT4_MAX
    s = torch.where(s > 0, s, torch.ones_like(s))
    z = torch.clamp(torch.round(-lo / s), 0, INT4_MAX)
    return s, z.to(torch.uint8)


def int4_codes(w: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """uint8 codes 0..15 of ``w`` (..., g) with one scale and zero point per group (...)."""
    q = torch.round(w / scales[..., None]) + zeros[..., None].to(w.dtype)
    return torch.clamp(q, 0, INT4_MAX).to(torch.uint8)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two codes 0..15 per byte along the last dimension (even length): (..., n) -> (..., n/2) uint8.

    >>> pack_int4(torch.tensor([[1, 2, 15, 0]], dtype=torch.uint8)).tolist()      # 1 | 2 << 4, 15 | 0 << 4
    [[33, 15]]
    """
    q = q.to(torch.uint8)
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of ``pack_int4``: (..., n/2) uint8 -> (..., n) codes 0..15.

    >>> unpack_int4(torch.tensor([[33, 15]], dtype=torch.uint8)).tolist()
    [[1, 2, 15, 0]]
    """
    low, high = packed & 0x0F, packed >> 4
    return torch.stack((low, high), dim=-1).flatten(-2)


@dataclass
class QuantizedWeight:
    """An (out, in) weight as integers and scales.

    bits 8: ``q`` int8 (out, in), ``scales`` (out,), ``zeros`` None, ``group_size`` None.
    bits 4: ``q`` uint8 (out, in/2), two codes a byte; ``scales`` float and ``zeros`` uint8, (out, in/g).
    """

    q: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    bits: int
    group_size: int | None

    @property
    def shape(self) -> tuple[int, int]:
        out, stored = self.q.shape
        return out, stored * 2 if self.bits == 4 else stored

    def dequantize(self, rows: torch.Tensor | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """W' = s q (int8) or s (q - z) (int4), (out, in); with ``rows`` (any shape of indices)
        only those rows, (*rows.shape, in): an embedding lookup that never unpacks the whole table."""
        q, s, z = self.q, self.scales, self.zeros
        if rows is not None:
            q, s = q[rows], s[rows]
            z = z[rows] if z is not None else None
        if self.bits == 8:
            return q.to(dtype) * s.to(dtype)[..., None]
        codes = unpack_int4(q)  # (..., in)
        groups = codes.unflatten(-1, (-1, self.group_size)).to(dtype)  # (..., in/g, g)
        w = (groups - z.to(dtype)[..., None]) * s.to(dtype)[..., None]
        return w.flatten(-2)

    def step(self) -> torch.Tensor:
        """(out, in): the quantization step of each weight, its row's or group's scale."""
        out, n_in = self.shape
        if self.bits == 8:
            return self.scales[:, None].expand(out, n_in)
        return self.scales.repeat_interleave(self.group_size, dim=1)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.q, self.scales, self.zeros) if t is not None)


def check_bits(bits: int, group_size: int | None) -> None:
    """Refuse what the formats above do not cover: other bit widths, int8 with groups, int4 without."""
    if bits not in BITS:
        raise ScratchLLMError(f"--bits must be 8 or 4, got {bits}")
    if bits == 8 and group_size is not None:
        raise ScratchLLMError("int8 has one scale per output channel, no groups: leave out --group-size (it is "
                              "for --bits 4)")
    if bits == 4 and (group_size is None or group_size < 2 or group_size % 2):
        raise ScratchLLMError(f"--bits 4 needs an even --group-size (32, 64 or 128), got {group_size}")


def check_width(name: str, n_in: int, group_size: int | None) -> None:
    """Refuse a group size that does not divide a layer's input width, naming the layer."""
    if group_size is not None and n_in % group_size:
        raise ScratchLLMError(f"--group-size {group_size} does not divide the {n_in} inputs of {name}: choose a "
                              f"group size that divides every layer's width (for {n_in}: "
                              f"{', '.join(str(g) for g in (32, 64, 128) if n_in % g == 0) or 'none of 32, 64, 128'})")


def quantize_weight(w: torch.Tensor, bits: int, group_size: int | None = None) -> QuantizedWeight:
    """Round-to-nearest quantization of ``w`` (out, in) with the formulas of this module.

    >>> w = torch.randn(4, 64)
    >>> qw = quantize_weight(w, bits=4, group_size=32)
    >>> qw.q.shape, qw.scales.shape, bool(((qw.dequantize() - w).abs() <= qw.step() / 2 + 1e-7).all())
    (torch.Size([4, 32]), torch.Size([4, 2]), True)
    """
    check_bits(bits, group_size)
    w = w.detach().float()
    if bits == 8:
        scales = int8_scales(w)
        return QuantizedWeight(int8_codes(w, scales), scales, None, 8, None)
    check_width("the weight", w.shape[-1], group_size)
    groups = w.unflatten(-1, (-1, group_size))  # (out, in/g, g)
    scales, zeros = int4_params(groups)
    codes = int4_codes(groups, scales, zeros).flatten(-2)  # (out, in)
    return QuantizedWeight(pack_int4(codes), scales, zeros, 4, group_size)
