"""LoRA (Hu et al. 2021; the book's appendix E): train a low-rank update beside each frozen weight.

A linear layer ``y = x W^T + b`` gets two small matrices, A (r, in) and B (out, r):

    y = x W^T + b + (alpha / r) * x A^T B^T         W frozen; A, B trained; r << in, out

A starts as ``nn.Linear`` initialises its weights (Kaiming-uniform, as the book and PEFT do) and B
at zero, so the adapted model starts exactly as the base. ``merge`` adds ``(alpha / r) B A`` into W
(one plain ``nn.Linear`` again, no cost at inference); ``unmerge`` takes it out.

A fused projection (attention's ``W_qkv``: queries, keys and values in one matrix) can get one
adapter per part (``splits``), which is what the book's separate ``W_query``, ``W_key`` and
``W_value`` layers get; without splits it gets one adapter for the whole matrix, as PEFT gives
GPT-2's fused ``c_attn``.

>>> layer = LoRALinear(nn.Linear(8, 6), rank=2, alpha=4)
>>> x = torch.randn(3, 8)
>>> bool(torch.equal(layer(x), layer.base(x)))      # B = 0: the base model, exactly
True
>>> sum(p.numel() for p in layer.parameters() if p.requires_grad)   # A (2, 8) + B (6, 2)
28
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from scratchllm import fileio
from scratchllm.errors import ScratchLLMError
from scratchllm.model.surgery import replace_linears

FORMAT = "scratchllm-lora"
VERSION = 1
TARGETS = ("attention", "ffn", "head")  # which linear layers get adapters; "all" means every one


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus trainable low-rank updates, one per output slice in ``splits``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, splits: Sequence[int] | None = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if rank < 1:
            raise ScratchLLMError(f"LoRA rank must be at least 1, got {rank}")
        splits = list(splits or [base.out_features])
        if sum(splits) != base.out_features:
            raise ScratchLLMError(f"LoRA splits {splits} do not add up to the layer's {base.out_features} outputs")
        self.base = base.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha, self.splits = rank, alpha, splits
        self.scaling = alpha / rank
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.ParameterList(nn.Parameter(torch.empty(rank, self.in_features, **like)) for _ in splits)
        self.lora_B = nn.ParameterList(nn.Parameter(torch.zeros(n, rank, **like)) for n in splits)
        for A in self.lora_A:
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))  # nn.Linear's own initialisation
        self.dropout = nn.Dropout(dropout)
        self.merged = False

    def delta(self) -> torch.Tensor:
        """(out, in): the update ``(alpha / r) B A``, the parts stacked as the outputs are."""
        return self.scaling * torch.cat([B @ A for A, B in zip(self.lora_A, self.lora_B, strict=True)])

    @property
    def weight(self) -> torch.Tensor:
        """The weight this layer applies, update included (for inspection: attention maps, exports)."""
        return self.base.weight if self.merged else self.base.weight + self.delta()

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        y = self.base(x)
        if self.merged:
            return y
        h = self.dropout(x)
        update = torch.cat([(h @ A.T) @ B.T for A, B in zip(self.lora_A, self.lora_B, strict=True)], dim=-1)
        return y + self.scaling * update

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into the base weight (outputs unchanged; the adapters stop costing time)."""
        if not self.merged:
            self.base.weight += self.delta()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update out of the base weight again (to go on training or swap adapters)."""
        if self.merged:
            self.base.weight -= self.delta()
            self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, splits={self.splits}"


def target_layers(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Names of the ``nn.Linear`` layers of a GPT that ``targets`` choose (see ``TARGETS``).

    >>> from scratchllm.model import GPT, GPTConfig
    >>> target_layers(GPT(GPTConfig.preset("tiny", n_layers=1)), ["attention"])
    ['trf_blocks.0.att.W_qkv', 'trf_blocks.0.att.out_proj']
    """
    unknown = sorted(set(targets) - {*TARGETS, "all"})
    if unknown or not targets:
        raise ScratchLLMError(f"unknown LoRA targets {unknown or list(targets)}: use some of {', '.join(TARGETS)}, "
                              "or all")
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if "all" in targets:
        return names
    parts = {"attention": ".att.", "ffn": ".ff."}
    return [n for n in names if any(parts.get(t, "\0") in f".{n}." for t in targets) or
            ("head" in targets and n == "out_head")]


def apply_lora(model: nn.Module, rank: int = 16, alpha: float = 16.0, targets: Sequence[str] = ("all",), *,
               split_qkv: bool = True, dropout: float = 0.0) -> list[str]:
    """Freeze ``model`` and give the chosen linear layers LoRA adapters, in place; returns their names.

    With ``split_qkv`` attention's fused ``W_qkv`` gets one adapter each for queries, keys and
    values (the book's count: 2,666,528 trainable parameters at rank 16 for GPT-2 124M with a
    two-class head); without it one adapter for the whole matrix (PEFT's on GPT-2's ``c_attn``).
    """
    chosen = set(target_layers(model, targets))
    if "out_head" in chosen and model.out_head.weight is getattr(model, "tok_emb", model.out_head).weight:
        raise ScratchLLMError("the output head is the token embedding table (tied), so merging an adapter there "
                              "would change the embeddings too: leave 'head' out of the LoRA targets")
    model.requires_grad_(False)
    splits = {}
    if split_qkv:
        for name, module in model.named_modules():
            if hasattr(module, "qkv_sizes"):
                splits[f"{name}.W_qkv"] = module.qkv_sizes
    return replace_linears(model, lambda name, layer: LoRALinear(layer, rank, alpha, splits.get(name), dropout),
                           where=lambda name, layer: name in chosen)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The LoRA layers of ``model`` by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight and put plain ``nn.Linear`` layers back, all trainable: the
    model is then an ordinary one that saves, exports and generates as any other (changed in place)."""
    for name, layer in lora_layers(model).items():
        layer.merge()
        _set_submodule(model, name, layer.base)
    return model.requires_grad_(True)


def lora_spec(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{layer name: {rank, alpha, splits}}`` of the model's adapters ({} without any): what
    ``apply_lora_spec`` needs to rebuild them (checkpoints and adapter files store it)."""
    return {n: {"rank": m.rank, "alpha": m.alpha, "splits": m.splits} for n, m in lora_layers(model).items()}


def apply_lora_spec(model: nn.Module, spec: dict[str, dict[str, Any]]) -> None:
    """Freeze ``model`` and give the named layers adapters as ``spec`` describes (values untrained)."""
    model.requires_grad_(False)
    for name, layer_spec in spec.items():
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            layer = None
        if not isinstance(layer, nn.Linear):
            raise ScratchLLMError(f"there is an adapter for {name}, which is not a linear layer of this model")
        _set_submodule(model, name, LoRALinear(layer, layer_spec["rank"], layer_spec["alpha"], layer_spec["splits"]))


def save_adapters(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the adapters alone (``adapters.safetensors`` in folder ``path``), with what they fit on:
    the base model's config, and each layer's rank, alpha and splits."""
    layers = lora_layers(model)
    if not layers:
        raise ScratchLLMError("the model has no LoRA layers to save: apply_lora first")
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items() if ".lora_" in k}
    meta = {"format": FORMAT, "version": VERSION, "base": _base_shape(model), "layers": lora_spec(model)}
    path = Path(path)
    with fileio.atomic_path(path) as tmp:
        tmp.mkdir()
        save_file(tensors, tmp / "adapters.safetensors", metadata={"format": FORMAT})
        (tmp / "adapters.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return path


def load_adapters(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Put the adapters saved at ``path`` onto ``model`` (a base of the same shape), freezing the base."""
    path = Path(path)
    meta = fileio.read_json(path / "adapters.json", "save the adapters again with save_adapters")
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ScratchLLMError(f"{path} does not hold scratchllm LoRA adapters (format {FORMAT}, version {VERSION})")
    base, saved = _base_shape(model), meta["base"]
    differ = sorted(k for k in saved if saved[k] != base.get(k))
    if differ:
        detail = ", ".join(f"{k} {saved[k]!r} (this model: {base.get(k)!r})" for k in differ)
        raise ScratchLLMError(f"the adapters in {path} were made for another base model: {detail}")
    apply_lora_spec(model, meta["layers"])
    tensors = load_file(path / "adapters.safetensors")
    expected = {k for k in model.state_dict() if ".lora_" in k}
    if set(tensors) != expected:
        odd = sorted(set(tensors) ^ expected)[:3]
        raise ScratchLLMError(f"{path}/adapters.safetensors does not match adapters.json ({', '.join(odd)} ...): "
                              "save the adapters again")
    model.load_state_dict(tensors, strict=False)
    return list(meta["layers"])


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _base_shape(model: nn.Module) -> dict[str, Any]:
    """What an adapter depends on: the model config (shape and parts), without run-time choices."""
    config = dict(model.config.to_dict())
    for key in ("dropout", "impl"):
        config.pop(key, None)
    return config
