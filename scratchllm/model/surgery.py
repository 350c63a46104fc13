"""Model surgery: swap layers of a built GPT for others, for fine-tuning and compression.

- ``replace_linears(model, make, where)``: every ``nn.Linear`` that ``where`` picks becomes
  ``make(name, linear)`` (a LoRA wrapper, a quantized layer, ...), under the same name. The new
  module's own parameters are then named below it: a wrapper that keeps the original layer as
  ``base`` has ``trf_blocks.0.att.W_qkv.base.weight``, so a state dict stays strict and stable.
- ``replace_head(model, num_outputs)``: a new output head of ``num_outputs`` rows with a bias (the
  book's chapter-6 classifier). The token table is untouched, tied or not, and the config records
  ``head_size`` so that a saved checkpoint loads into the same shape.

>>> from scratchllm.model import GPT, GPTConfig
>>> model = GPT(GPTConfig.preset("tiny", tie_embeddings=True))
>>> replace_head(model, 2).weight.shape, model.tok_emb.weight.shape
(torch.Size([2, 64]), torch.Size([512, 64]))
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def replace_linears(
    model: nn.Module,
    make: Callable[[str, nn.Linear], nn.Module],
    where: Callable[[str, nn.Linear], bool] | None = None,
) -> list[str]:
    """Replace each ``nn.Linear`` of ``model`` that ``where(name, layer)`` accepts (default: all)
    by ``make(name, layer)``, in place; returns the names replaced, in model order.

    >>> from scratchllm.model import GPT, GPTConfig
    >>> model = GPT(GPTConfig.preset("tiny"))
    >>> replace_linears(model, lambda name, lin: nn.Sequential(lin), where=lambda name, lin: name.endswith("W_qkv"))
    ['trf_blocks.0.att.W_qkv', 'trf_blocks.1.att.W_qkv']
    """
    chosen = [(name, module) for name, module in model.named_modules()
              if isinstance(module, nn.Linear) and (where is None or where(name, module))]
    for name, linear in chosen:  # listed first: a replacement that wraps the layer is not visited again
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(name, linear))
    return [name for name, _ in chosen]


def replace_head(model: nn.Module, num_outputs: int) -> nn.Linear:
    """Give ``model`` (a ``GPT``) a new output head with ``num_outputs`` rows and a bias, initialised as
    GPT-2 initialises its layers; the token embedding table stays as it was."""
    d_model = model.config.d_model
    head = nn.Linear(d_model, num_outputs, bias=True).to(model.tok_emb.weight.device, model.tok_emb.weight.dtype)
    nn.init.normal_(head.weight, mean=0.0, std=0.02)
    nn.init.zeros_(head.bias)
    model.out_head = head
    model.config.head_size = num_outputs
    return head
