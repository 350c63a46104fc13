"""The GPT of the book, one idea per module: config, layers, positions, attention, gpt."""

from scratchllm.model.config import GPTConfig
from scratchllm.model.gpt import GPT

__all__ = ["GPT", "GPTConfig"]
