"""Numeric precision: which float format the matrix products run in, and how fast that can be.

- fp32: everything in float32.
- bf16: ``torch.autocast`` runs matrix products in bfloat16 (8 exponent bits like float32, so no
  loss scaling is needed) while weights, optimizer state and reductions stay float32. On CPUs
  with AMX / AVX512-BF16 and on recent GPUs, big bf16 products are several times faster.
- fp16: float16 autocast on CUDA, with a ``GradScaler`` that multiplies the loss so small
  gradients do not underflow float16's range, and skips steps whose gradients overflowed.

``auto`` picks bf16 on GPUs that support it; on a CPU it times one training step of the actual
model both ways and keeps the faster, because small matrices lose more to the casts than they
gain (nanoGPT's 128-wide model is ~30% slower in bf16 on this project's CPU).
"""

from __future__ import annotations

import contextlib
import copy
import time

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.errors import ScratchLLMError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a forward pass runs in for ``precision`` (a no-op for fp32).

    Under bf16 on a CPU, attention sees bf16 queries and runs the written-out formula (see
    ``MultiHeadAttention.attend``).
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse precisions the device cannot train in, saying what to use instead."""
    if precision == "fp16" and device.type != "cuda":
        raise ScratchLLMError(
            f"train.precision=fp16 needs a CUDA GPU (it relies on a gradient scaler); on {device.type} use bf16 or fp32"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ScratchLLMError("this GPU has no bf16 support; use train.precision=fp16 or fp32")


def resolve_precision(precision: str, model: nn.Module, batch_shape: tuple[int, int], device: torch.device) -> str:
    """Turn ``auto`` into a concrete precision for this model and device; check any other."""
    if precision != "auto":
        check_precision(precision, device)
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_bf16():
        fp32, bf16 = (time_training_step(model, batch_shape, device, p) for p in ("fp32", "bf16"))
        return "bf16" if bf16 < 0.9 * fp32 else "fp32"
    return "fp32"


def cpu_has_bf16() -> bool:
    """Whether oneDNN can run bf16 products natively here (AVX512-BF16 or AMX)."""
    return bool(getattr(torch.backends.mkldnn, "is_available", lambda: False)()) and _cpu_flags_have_bf16()


def _cpu_flags_have_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def time_training_step(model: nn.Module, batch_shape: tuple[int, int], device: torch.device, precision: str,
                       repeats: int = 2) -> float:
    """Seconds for one forward + backward of a copy of ``model`` on random tokens (best of
    ``repeats`` after one warm-up). The model and the global RNG are left untouched."""
    trial = copy.deepcopy(model).train()
    vocab = trial.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, batch_shape, generator=gen).to(device)
    best = float("inf")
    with torch.random.fork_rng(devices=[]):
        for i in range(repeats + 1):
            start = time.perf_counter()
            with autocast(precision, device):
                logits = trial(x)
            F.cross_entropy(logits.float().flatten(0, 1), x.flatten()).backward()
            trial.zero_grad(set_to_none=True)
            if i:
                best = min(best, time.perf_counter() - start)
    return best


def matmul_peak_flops(precision: str, device: torch.device, n: int | None = None, repeats: int = 3) -> float:
    """Achieved FLOP/s of an n x n x n matrix product in ``precision``: the practical peak that
    MFU (model FLOPs utilisation) is measured against. n defaults to 1024 on a CPU (a few
    milliseconds per product) and 8192 on a GPU."""
    n = n or (8192 if device.type == "cuda" else 1024)
    dtype = DTYPES.get(precision, torch.float32)
    a = torch.full((n, n), 0.5, device=device, dtype=dtype)  # values do not change the speed
    b = torch.full((n, n), 0.25, device=device, dtype=dtype)
    best = float("inf")
    for i in range(repeats + 1):
        _synchronize(device)
        start = time.perf_counter()
        a @ b
        _synchronize(device)
        if i:
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
