"""Byte-level BPE tokenizer: train, encode, decode, save, and read/write other tools' files.

>>> from scratchllm.tokenizer import BPETokenizer
>>> tok = BPETokenizer.train("hello hello world", vocab_size=260, progress=False)
>>> tok.decode(tok.encode("hello"))
'hello'
"""

from scratchllm.tokenizer.bpe import DEFAULT_SPECIAL_TOKENS, ENDOFTEXT, PADDING, BPETokenizer
from scratchllm.tokenizer.patterns import GPT2_PATTERN, GPT4_PATTERN, PATTERNS

__all__ = ["BPETokenizer", "DEFAULT_SPECIAL_TOKENS", "ENDOFTEXT", "PADDING", "GPT2_PATTERN", "GPT4_PATTERN", "PATTERNS"]
