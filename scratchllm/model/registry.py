"""Model parts by name: the GPT looks up each layer it builds here, so a new part is one file plus
one ``@register``.

Each kind of part maps names to a factory ``factory(config, layer_index) -> nn.Module`` (a class
with that constructor is a factory). ``GPTConfig`` takes its allowed values from here, and a
factory may carry a ``check_config(config)`` classmethod (or attribute) that refuses settings it
cannot run with one clear line, when the config is made rather than deep inside a forward pass.

    @register("attention", "my_attention")
    class MyAttention(nn.Module):
        def __init__(self, config: GPTConfig, layer_index: int) -> None: ...

>>> "multihead" in names("attention") and "layernorm" in names("norm")
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from scratchllm.errors import ScratchLLMError, did_you_mean

# kind -> what it is, for error messages; the kinds a config names
KINDS: dict[str, str] = {
    "attention": "attention kind",
    "ffn": "feed-forward kind",
    "norm": "normalisation",
    "position": "position encoding",
    "block": "block kind",
}

_PARTS: dict[str, dict[str, Callable[..., Any]]] = {kind: {} for kind in KINDS}


def register(kind: str, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: make ``factory`` the part ``name`` of ``kind``; a name is registered once."""
    if kind not in _PARTS:
        raise ScratchLLMError(f"unknown part kind {kind!r}; kinds: {', '.join(KINDS)}")

    def add(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in _PARTS[kind] and _PARTS[kind][name] is not factory:
            raise ScratchLLMError(f"{KINDS[kind]} {name!r} is already registered ({_PARTS[kind][name]!r})")
        _PARTS[kind][name] = factory
        return factory

    return add


def names(kind: str) -> tuple[str, ...]:
    """The registered names of ``kind``, in registration order."""
    _load_builtin_parts()
    return tuple(_PARTS[kind])


def lookup(kind: str, name: str) -> Callable[..., Any]:
    """The factory registered as ``name``; an unknown name gets the closest one suggested."""
    _load_builtin_parts()
    parts = _PARTS[kind]
    if name not in parts:
        raise ScratchLLMError(
            f"unknown {KINDS[kind]} {name!r}{did_you_mean(name, parts, cutoff=0.4)}; known: {', '.join(parts)}"
        )
    return parts[name]


def build(kind: str, name: str, config: Any, layer_index: int = 0) -> Any:
    """``lookup(kind, name)(config, layer_index)``."""
    return lookup(kind, name)(config, layer_index)


def check(kind: str, name: str, config: Any) -> None:
    """Run the part's own ``check_config(config)``, if it has one (unknown names are refused)."""
    checker = getattr(lookup(kind, name), "check_config", None)
    if checker is not None:
        checker(config)


def _load_builtin_parts() -> None:
    # The modules that register the built-in parts; imported on first use, since they import the config.
    import scratchllm.model.alibi
    import scratchllm.model.attention
    import scratchllm.model.gpt
    import scratchllm.model.gqa
    import scratchllm.model.layers
    import scratchllm.model.mamba
    import scratchllm.model.moe
    import scratchllm.model.positions
    import scratchllm.model.sliding
    import scratchllm.model.sparse  # noqa: F401
