"""Quantizing a whole GPT: every linear layer (the output head too) and the token table.

``quantize_model(model, bits, group_size, method=...)`` swaps each ``nn.Linear`` for a
``QuantizedLinear`` by model surgery (``replace_linears``), in place:

- ``rtn``: round to nearest, the formulas of ``scratchllm.compress.quantize``, layer by layer;
- ``gptq``: ``scratchllm.compress.gptq`` over calibration windows, block by block.

The token table (``embeddings=True``, the default) becomes a ``QuantizedEmbedding`` that
dequantizes only the rows it looks up. With tied embeddings (GPT-2) the head *is* the table: one
(vocab, d_model) matrix, quantized once, stored once under the head's name, and read by both;
that shared matrix is rounded to nearest even under ``gptq``, because GPTQ tunes a matrix to its
inputs as a head (its compensation moves single weights by more than half a step), while a table
lookup reads the rows as they are. With ``embeddings=False`` the table stays in float32 (a tied
head then gets its own quantized copy: better embeddings, a larger file).

What was done is ``quantization_spec(model)``: bits, group size, each layer's method and the
table's kind. Checkpoints store it in config.json, and ``apply_quantization_spec`` rebuilds the
same empty layers before the integers are loaded (``scratchllm.checkpoint.load_checkpoint``
builds the float model on the meta device, so its float32 weights never exist in memory).

>>> from scratchllm.model import GPT, GPTConfig
>>> model = GPT(GPTConfig.preset("tiny", n_layers=1, tie_embeddings=True))
>>> spec = quantize_model(model, bits=8)
>>> spec["embedding"], sorted(spec["layers"].items())[-1]
('tied', ('trf_blocks.0.ff.fc_out', 'rtn'))
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from scratchllm.compress.awq import awq_quantize_layers
from scratchllm.compress.gptq import gptq_quantize_layers
from scratchllm.compress.quantize import check_bits, check_width, quantize_weight
from scratchllm.compress.quantized_layers import KERNELS, QuantizedEmbedding, QuantizedLinear
from scratchllm.errors import ScratchLLMError
from scratchllm.finetune.lora import lora_layers
from scratchllm.model.surgery import replace_linears

METHODS = ("rtn", "gptq", "awq")
SPEC_VERSION = 1


def quantize_model(model: nn.Module, bits: int, group_size: int | None = None, *, method: str = "rtn",
                   calibration: torch.Tensor | None = None, batch_size: int = 8, embeddings: bool = True,
                   progress: bool = False) -> dict[str, Any]:
    """Quantize ``model`` (a ``GPT``) in place and return its ``quantization_spec``.

    ``calibration``: (N, T) token ids for ``gptq`` and ``awq`` (N at least ``batch_size``; see
    ``scratchllm.compress.gptq.calibration_windows``).
    """
    check_bits(bits, group_size)
    if method not in METHODS:
        raise ScratchLLMError(f"unknown quantization method {method!r}: use one of {', '.join(METHODS)}")
    existing = quantization_spec(model)
    if existing is not None:
        group = f", group size {existing['group_size']}" if existing["group_size"] else ""
        raise ScratchLLMError(f"the model is already quantized (int{existing['bits']}{group}): quantize the original "
                              "float checkpoint instead")
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    adapters = lora_layers(model)
    if adapters:
        raise ScratchLLMError(f"{next(iter(adapters))} has LoRA adapters: merge them into the weights first "
                              "(scratchllm.finetune.lora.merge_lora)")
    for name, linear in linears.items():
        check_width(name, linear.in_features, group_size)
    tied = model.out_head.weight is model.tok_emb.weight
    if embeddings and not tied:
        check_width("tok_emb", model.tok_emb.embedding_dim, group_size)
    if method in ("gptq", "awq") and calibration is None:
        raise ScratchLLMError(f"--method {method} needs calibration text: give --calibration CORPUS")
    # The table first, so that GPTQ calibrates the blocks on the embeddings the model will really read.
    if embeddings and tied:  # the shared matrix, rounded to nearest (module docstring)
        model.out_head = QuantizedLinear.from_linear(model.out_head, bits, group_size)
        model.tok_emb = QuantizedEmbedding.tied_to(model.out_head)
    elif embeddings:
        model.tok_emb = QuantizedEmbedding.from_weight(quantize_weight(model.tok_emb.weight, bits, group_size))
    if method == "gptq":
        gptq_quantize_layers(model, calibration, bits, group_size, batch_size=batch_size, progress=progress)
    elif method == "awq":
        awq_quantize_layers(model, calibration, bits, group_size, batch_size=batch_size, progress=progress)
    replace_linears(model, lambda name, linear: QuantizedLinear.from_linear(linear, bits, group_size))
    return quantization_spec(model)


def quantization_spec(model: nn.Module) -> dict[str, Any] | None:
    """What ``quantize_model`` did to ``model`` (None: nothing), as JSON for config.json:
    ``{"bits", "group_size", "layers": {name: "rtn"|"gptq"|"awq"}, "embedding": "tied"|"own"|None}``."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    if not layers:
        return None
    first = next(iter(layers.values()))
    table = getattr(model, "tok_emb", None)
    embedding = None
    if isinstance(table, QuantizedEmbedding):
        embedding = "tied" if table.tied else "own"
    return {"version": SPEC_VERSION, "bits": first.bits, "group_size": first.group_size,
            "layers": {name: m.method for name, m in layers.items()}, "embedding": embedding}


def apply_quantization_spec(model: nn.Module, spec: dict[str, Any]) -> None:
    """Give ``model`` (a float ``GPT``, e.g. on the meta device) the empty quantized layers that
    ``spec`` describes, on the device of the layers they replace; a state dict then fills them."""
    try:
        bits, group_size, layers, embedding = spec["bits"], spec["group_size"], spec["layers"], spec["embedding"]
    except (KeyError, TypeError):
        raise ScratchLLMError(f"the quantization record {spec!r} lacks bits, group_size, layers or embedding: "
                              "quantize the float checkpoint again") from None
    if spec.get("version", 1) > SPEC_VERSION:
        raise ScratchLLMError(f"the quantization record has version {spec['version']}; upgrade scratchllm")
    missing = sorted(set(layers) - {name for name, m in model.named_modules() if isinstance(m, nn.Linear)})
    if missing:
        raise ScratchLLMError(f"the quantization record names {missing[0]}, which is not a linear layer of this model")

    def empty(name: str, linear: nn.Linear) -> QuantizedLinear:
        layer = QuantizedLinear(linear.in_features, linear.out_features, linear.bias is not None, bits, group_size,
                                device=linear.weight.device)
        layer.method = layers[name]
        if layer.method == "awq":  # its per-input scales, filled by the state dict
            layer.input_scale = torch.empty(linear.in_features, device=linear.weight.device)
        return layer

    replace_linears(model, empty, where=lambda name, linear: name in layers)
    if embedding == "tied":
        model.tok_emb = QuantizedEmbedding.tied_to(model.out_head)
    elif embedding == "own":
        table = model.tok_emb
        model.tok_emb = QuantizedEmbedding(table.num_embeddings, table.embedding_dim, bits, group_size,
                                           device=table.weight.device)


def set_kernel(model: nn.Module, kernel: str) -> None:
    """Choose how every quantized linear layer computes: ``auto``, ``fbgemm`` or ``dequantize``
    (``scratchllm.compress.quantized_layers``)."""
    if kernel not in KERNELS:
        raise ScratchLLMError(f"unknown kernel {kernel!r}: use one of {', '.join(KERNELS)}")
    for module in model.modules():
        if isinstance(module, QuantizedLinear):
            module.kernel = kernel
