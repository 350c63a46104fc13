"""Every named recipe, in one table: a model shape, optionally training settings and the size of
the tokenizer the demo trains. ``scratchllm model info``, ``train`` and ``demo`` read the same names.

- ``model``: ``GPTConfig`` fields. The vocabulary comes from the prepared data when training.
- ``train``: ``TrainConfig`` fields (a shape alone trains with the defaults).
- ``vocab_size``: the BPE vocabulary ``scratchllm demo`` trains for this recipe.

>>> get("baby-shakespeare").model["d_model"], get("demo").vocab_size
(128, 4096)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scratchllm.errors import ScratchLLMError, did_you_mean


@dataclass(frozen=True)
class Preset:
    """A named recipe; ``about`` says what it is for."""

    about: str
    model: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)
    vocab_size: int = 4096


# nanoGPT's model choices, which its recipes were tuned with: no biases, exact GELU, tied head.
_NANOGPT = {"bias": False, "gelu": "exact", "tie_embeddings": True}
_GPT2 = {"vocab_size": 50257, "context_length": 1024, "dropout": 0.1, "qkv_bias": False}

PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        "for tests and quick looks: builds and runs in milliseconds",
        {"vocab_size": 512, "context_length": 64, "d_model": 64, "n_heads": 4, "n_layers": 2, "dropout": 0.0},
    ),
    "demo": Preset(
        "`make demo`: tuned for about 10 minutes on a 2-core CPU (docs/tour.md gives what it reaches)",
        {"n_layers": 4, "n_heads": 4, "d_model": 256, "context_length": 128, "dropout": 0.0, "tie_embeddings": True,
         "gelu": "exact"},
        {"batch_size": 16, "lr": 2e-3, "min_lr": 2e-4, "warmup_steps": 100, "weight_decay": 0.1},
        vocab_size=4096,
    ),
    "demo-tiny": Preset(
        "the demo in seconds: a check that every stage runs",
        {"n_layers": 2, "n_heads": 2, "d_model": 32, "context_length": 32, "dropout": 0.0},
        {"batch_size": 8, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 20},
        vocab_size=300,
    ),
    "baby-shakespeare": Preset(
        "nanoGPT's CPU recipe for Tiny Shakespeare (its README: \"I only have a macbook\")",
        {"n_layers": 4, "n_heads": 4, "d_model": 128, "context_length": 64, "dropout": 0.0, **_NANOGPT},
        {"max_steps": 2000, "batch_size": 12, "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 100},
    ),
    "shakespeare-small": Preset(
        "nanoGPT's config/train_shakespeare_char.py shape",
        {"n_layers": 6, "n_heads": 6, "d_model": 384, "context_length": 256, "dropout": 0.2, **_NANOGPT},
        {"max_steps": 5000, "batch_size": 12, "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 100},
    ),
    # 3 Llama-style blocks (RoPE, RMSNorm, SwiGLU), twice the context, a 4x hotter and 4x shorter
    # schedule, bf16 products, one evaluation (the whole validation split) at the end.
    "speedrun-tinyshakespeare": Preset(
        "Tiny Shakespeare at the byte level to nanoGPT's 2000-step validation loss (1.886) in a fraction of its time",
        {"n_layers": 3, "n_heads": 4, "d_model": 128, "context_length": 128, "dropout": 0.0, "pos_encoding": "rope",
         "norm": "rmsnorm", "ffn": "swiglu"},
        {"max_steps": 540, "batch_size": 12, "lr": 4e-3, "min_lr": 1e-4, "warmup_steps": 30, "beta2": 0.95,
         "precision": "bf16", "eval_interval": 0, "eval_batches": 0, "eval_at_start": False},
    ),
    # The book's GPT_CONFIG_124M: 163,009,536 parameters untied, 124,412,160 tied; trained with
    # 12 x 40 x 1024 = ~0.5M tokens per update as in GPT-3's table.
    "gpt2-124m": Preset(
        "GPT-2 small, the book's GPT_CONFIG_124M, with GPT-3's training recipe for its size",
        {**_GPT2, "d_model": 768, "n_heads": 12, "n_layers": 12},
        {"max_steps": 600000, "batch_size": 12, "grad_accum_steps": 40, "lr": 6e-4, "min_lr": 6e-5,
         "warmup_steps": 2000, "beta2": 0.95, "eval_interval": 1000, "eval_batches": 100},
    ),
    "gpt2-medium": Preset("GPT-2 medium's shape (355M)", {**_GPT2, "d_model": 1024, "n_heads": 16, "n_layers": 24}),
    "gpt2-large": Preset("GPT-2 large's shape (774M)", {**_GPT2, "d_model": 1280, "n_heads": 20, "n_layers": 36}),
    "gpt2-xl": Preset("GPT-2 XL's shape (1.5B)", {**_GPT2, "d_model": 1600, "n_heads": 25, "n_layers": 48}),
}


def get(name: str) -> Preset:
    """The preset called ``name``; an unknown name is an error that suggests the closest."""
    if name not in PRESETS:
        hint = did_you_mean(name, PRESETS, cutoff=0.4) or ""
        raise ScratchLLMError(f"unknown preset '{name}'{hint}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def describe() -> str:
    """One line per preset, for ``--help`` texts and error messages."""
    return "; ".join(f"{name}: {preset.about}" for name, preset in PRESETS.items())
