"""The book's own GPTModel (PyPI ``llms-from-scratch``) holding one of our models' weights: the oracle
of tests/model/test_book_oracle.py and tests/finetune/test_lora.py."""

from __future__ import annotations

import torch
from llms_from_scratch import ch04

from scratchllm.model import GPT


def book_copy(model: GPT) -> torch.nn.Module:
    """The book's GPTModel holding ``model``'s weights, name by name."""
    cfg = model.config
    book = ch04.GPTModel({"vocab_size": cfg.vocab_size, "context_length": cfg.context_length, "emb_dim": cfg.d_model,
                          "n_heads": cfg.n_heads, "n_layers": cfg.n_layers, "drop_rate": 0.0, "qkv_bias": cfg.qkv_bias})
    d = cfg.d_model
    state = {"tok_emb.weight": model.tok_emb.weight, "pos_emb.weight": model.pos_emb.weight,
             "final_norm.scale": model.final_norm.scale, "final_norm.shift": model.final_norm.shift,
             "out_head.weight": model.out_head.weight}
    for i, block in enumerate(model.trf_blocks):
        ours = f"trf_blocks.{i}."
        att = block.att
        for j, name in enumerate(("W_query", "W_key", "W_value")):
            state[f"{ours}att.{name}.weight"] = getattr(att, name)  # (d_out, d_in), nn.Linear's layout
            if cfg.qkv_bias:
                state[f"{ours}att.{name}.bias"] = att.W_qkv.bias[j * d : (j + 1) * d]
        state |= {f"{ours}att.out_proj.weight": att.out_proj.weight, f"{ours}att.out_proj.bias": att.out_proj.bias,
                  f"{ours}ff.layers.0.weight": block.ff.fc_in.weight, f"{ours}ff.layers.0.bias": block.ff.fc_in.bias,
                  f"{ours}ff.layers.2.weight": block.ff.fc_out.weight, f"{ours}ff.layers.2.bias": block.ff.fc_out.bias,
                  f"{ours}norm1.scale": block.norm1.scale, f"{ours}norm1.shift": block.norm1.shift,
                  f"{ours}norm2.scale": block.norm2.scale, f"{ours}norm2.shift": block.norm2.shift}
    state |= {k: v for k, v in book.state_dict().items() if k.endswith(".att.mask")}  # the book's causal masks
    book.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)
    return book.eval()
