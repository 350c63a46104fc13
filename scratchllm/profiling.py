"""How much tensor memory a computation holds at its peak, on any device (a CPU has no allocator
statistics like ``torch.cuda.max_memory_allocated``).

``TensorMemory`` is a dispatch mode: every tensor an operation creates inside it is counted from
its creation until the tensor (and so every view of it) is gone. Tensors that existed before
(weights, inputs) are not counted; memory a kernel uses inside itself and frees before returning
(a fused attention's tiles) is not seen either.

>>> import torch
>>> with TensorMemory() as mem:
...     a = torch.ones(1000)              # 4000 bytes
...     b = a * 2                          # 4000 more
...     del a, b
...     c = torch.ones(10)
>>> mem.peak
8000
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class TensorMemory(TorchDispatchMode):
    """Within ``with TensorMemory() as mem:``, ``mem.live`` bytes are held now and ``mem.peak`` at most."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._storages: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {id(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or id(t) in inputs or t._is_view() or t.device.type == "meta":
                continue  # an in-place result or a view shares memory that is counted already
            ptr = t.untyped_storage().data_ptr()
            if ptr in self._storages or ptr == 0:
                continue
            self._storages.add(ptr)
            size = t.untyped_storage().nbytes()
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._free, ptr, size)
        return out

    def _free(self, ptr: int, size: int) -> None:
        self._storages.discard(ptr)
        self.live -= size
