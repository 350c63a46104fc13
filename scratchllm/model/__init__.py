"""The GPT of the book, one idea per module: config, registry, layers, layout, positions, attention, gqa, gpt
(and teaching: the chapter-3 attention, for learning)."""

from scratchllm.model.config import GPTConfig
from scratchllm.model.gpt import GPT, TransformerBlock
from scratchllm.model.layout import contiguous_weights, lay_out_weights
from scratchllm.model.registry import register

__all__ = ["GPT", "GPTConfig", "TransformerBlock", "contiguous_weights", "lay_out_weights", "register"]
