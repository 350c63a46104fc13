"""``GPTConfig``: every shape and choice of the model in one dataclass, plus named presets.

The config is passed down to every module (nanoGPT style), saved as JSON next to the weights
(``to_dict``/``from_dict``), and validated up front so that a bad setting fails with one clear
line instead of a shape error deep inside a forward pass.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from scratchllm import presets
from scratchllm.errors import ScratchLLMError, check_range, did_you_mean
from scratchllm.model import registry

# Settings that are options of a part rather than parts; parts' names come from the registry.
CHOICES: dict[str, tuple[str, ...]] = {
    "gelu": ("tanh", "exact"),
    "impl": ("fused", "explicit"),
}
# field -> kind of part in the registry; "attention", "ffn" and "block" may also be a list of
# names, one per layer, repeated over the stack (["sliding", "sliding", "sliding", "multihead"])
PART_FIELDS: dict[str, str] = {
    "attention": "attention",
    "ffn": "ffn",
    "block": "block",
    "norm": "norm",
    "pos_encoding": "position",
}
PER_LAYER = ("attention", "ffn", "block")


@dataclass
class GPTConfig:
    """The shape of a GPT. Defaults are the book's GPT_CONFIG_124M.

    ``impl`` picks how the same math runs: ``"fused"`` calls torch's one-kernel equivalents
    (``scaled_dot_product_attention``, ``layer_norm``, ``gelu``), ``"explicit"`` runs the
    hand-written formulas of this package (masked softmax attention, LayerNorm from mean and
    variance, GELU's formula). Tests prove both equal; it can be changed at run time.

    >>> GPTConfig.preset("gpt2-124m", tie_embeddings=True).d_model
    768
    """

    vocab_size: int = 50257
    context_length: int = 1024
    d_model: int = 768
    n_heads: int = 12
    n_layers: int = 12
    dropout: float = 0.1
    qkv_bias: bool = False
    bias: bool = True  # biases of the other linear layers and LayerNorm's shift (GPT-2); nanoGPT drops them
    pos_encoding: str = "learned"
    norm: str = "layernorm"
    attention: str | list[str] = "multihead"
    ffn: str | list[str] = "gelu"
    block: str | list[str] = "pre_norm"
    gelu: str = "tanh"  # GPT-2's tanh approximation, or the exact erf form (nanoGPT; ~3x faster on CPUs)
    tie_embeddings: bool = False
    impl: str = "fused"
    ffn_hidden: int | None = None  # None: 4*d_model for gelu, about 8/3*d_model for swiglu
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    n_kv_heads: int | None = None  # grouped-query attention: heads of keys and values (None: n_heads)
    head_size: int | None = None  # outputs of a replaced head, with a bias (surgery.replace_head); None: vocab_size
    # sliding_window attention (sliding.py): tokens each query reads, itself included, one or one per
    # layer (0: that layer full); and the first tokens every query reads too (attention sinks)
    window: int | list[int] | None = None
    sinks: int = 0
    sparse_stride: int = 16  # sparse_strided / sparse_fixed attention (sparse.py): stride, block length
    sparse_summary: int = 1  # sparse_fixed: summary tokens at the end of each block
    # the state-space layer (mamba.py): state per channel, channels = ssm_expand * d_model, conv kernel
    ssm_state: int = 16
    ssm_expand: int = 2
    ssm_conv: int = 4
    # the mixture-of-experts feed-forward (moe.py): experts of kind moe_expert, each token's top k of them;
    # moe_capacity: None = dropless, else a capacity factor (assignments past it are dropped in training)
    n_experts: int = 8
    moe_top_k: int = 2
    moe_expert: str = "gelu"
    moe_capacity: float | None = None
    moe_balance_weight: float = 0.01  # Switch Transformer's load-balancing loss, alpha
    moe_z_weight: float = 0.001  # ST-MoE's router z-loss
    attn_head_dim: int | None = None  # width of one attention head; None: d_model // n_heads (pruned heads keep theirs)

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ScratchLLMError(f"{name}={value!r} is not one of {', '.join(allowed)}{_hint(value, allowed)}")
        for name, kind in PART_FIELDS.items():
            if isinstance(getattr(self, name), tuple):  # a list read back from TOML or Python
                setattr(self, name, list(getattr(self, name)))
            value = getattr(self, name)
            if isinstance(value, list) and name not in PER_LAYER:
                raise ScratchLLMError(f"{name} must be one name, got {value!r}")
            if value == []:
                raise ScratchLLMError(f"{name} must be one name or a non-empty list of names, one per layer")
            for part in self.part_names(name):
                if not isinstance(part, str):
                    raise ScratchLLMError(f"{name} must name a {registry.KINDS[kind]}, got {part!r}")
                if part not in registry.names(kind):
                    raise ScratchLLMError(f"{name}={part!r} is not one of {', '.join(registry.names(kind))}"
                                          f"{_hint(part, registry.names(kind))}")
        for name in ("vocab_size", "context_length", "d_model", "n_heads", "n_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ScratchLLMError(f"{name} must be a positive integer, got {value!r}")
        for name in PER_LAYER:
            if len(self.part_names(name)) > self.n_layers:
                raise ScratchLLMError(f"{name} lists {len(self.part_names(name))} names for {self.n_layers} layers; "
                                      "give at most one per layer (a shorter list repeats over the stack)")
        if self.attn_head_dim is not None and (not isinstance(self.attn_head_dim, int) or self.attn_head_dim < 1):
            raise ScratchLLMError(f"attn_head_dim must be a positive integer or null, got {self.attn_head_dim!r}")
        if self.attn_head_dim is None and self.d_model % self.n_heads:
            raise ScratchLLMError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                f"pick n_heads among {_divisors(self.d_model)}"
            )
        check_range("dropout", self.dropout, 0, 1, high_open=True)
        check_range("norm_eps", self.norm_eps, 0, low_open=True, note="added to the variance before its root")
        check_range("rope_base", self.rope_base, 1, low_open=True, note="the slowest rotation's period grows with it")
        if self.head_size is not None and (not isinstance(self.head_size, int) or self.head_size < 1):
            raise ScratchLLMError(f"head_size must be a positive integer or null, got {self.head_size!r}")
        if self.ffn_hidden is not None and self.ffn_hidden < 1:
            raise ScratchLLMError(f"ffn_hidden must be a positive integer or null, got {self.ffn_hidden}")
        for name, kind in PART_FIELDS.items():  # each part's own rules
            for part in dict.fromkeys(self.part_names(name)):
                registry.check(kind, part, self)

    def part_names(self, name: str) -> list[str]:
        """The names a part field gives, one or one per layer of its pattern."""
        value = getattr(self, name)
        return value if isinstance(value, list) else [value]

    def part(self, name: str, layer: int) -> str:
        """The part ``name`` ("attention", "ffn", "block") of layer ``layer``: a per-layer list repeats.

        >>> GPTConfig(n_layers=4, attention=["multihead", "grouped_query"], n_kv_heads=4).part("attention", 3)
        'grouped_query'
        """
        names = self.part_names(name)
        return names[layer % len(names)]

    @property
    def head_dim(self) -> int:
        """Width of one attention head: ``attn_head_dim``, else d_model / n_heads."""
        return self.attn_head_dim or self.d_model // self.n_heads

    @property
    def attn_dim(self) -> int:
        """Width of all query heads side by side: d_model, unless heads were pruned away."""
        return self.n_heads * self.head_dim

    @property
    def hidden_dim(self) -> int:
        """Width of the (first layer's) feed-forward layer."""
        return self.ffn_hidden_dim(self.part("ffn", 0))

    def ffn_hidden_dim(self, kind: str) -> int:
        """Width of a feed-forward layer of ``kind``: ``ffn_hidden``, else 4*d_model for GELU and
        about 8/3*d_model for SwiGLU, which keeps the parameter count of the 4*d GELU."""
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        if kind == "swiglu":
            return 64 * math.ceil(8 * self.d_model / 3 / 64)
        return 4 * self.d_model

    # -- presets and (de)serialisation ------------------------------------------------------

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> GPTConfig:
        """The model shape of a preset (``scratchllm.presets``), with any field overridden."""
        return cls.from_dict({**presets.get(name).model, **overrides})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        """Inverse of ``to_dict``; an unknown key is an error that names the closest field."""
        fields = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in fields:
                raise ScratchLLMError(f"unknown config key {key!r}{_hint(key, fields)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field."""
        return dataclasses.asdict(self)


def _hint(wrong: str, choices: Any) -> str:
    return did_you_mean(wrong, choices, cutoff=0.4)


def _divisors(n: int) -> str:
    return ", ".join(str(k) for k in range(1, min(n, 64) + 1) if n % k == 0)
