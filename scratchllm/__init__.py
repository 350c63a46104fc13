"""scratchllm: a large language model built from scratch, end to end."""

__version__ = "0.1.0"
