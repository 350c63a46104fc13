"""The Sparse Transformer's factorized patterns (Child et al. 2019, "Generating Long Sequences
with Sparse Transformers"), each as one attention layer over the union of its two parts.

With stride (block length) l = ``config.sparse_stride``:

- strided: A1 = the previous l tokens and itself (i - j <= l), A2 = every l-th token back
  ((i - j) mod l = 0). Suits data with a period (images, audio).
- fixed: A1 = the tokens of the query's own block (j // l = i // l), A2 = the last
  c = ``config.sparse_summary`` tokens of every block (j mod l >= l - c), which carry a block's
  summary forward. Suits text.

The paper splits A1 and A2 over heads or layers; here every head reads the union ("merged"
attention, the paper's second way), so a query reads about l + i / l keys instead of i.
``blockwise_attention`` computes it a block of queries at a time; the keys still reach back to
the start, so generation keeps a full cache.

>>> from scratchllm.model.patterns import pattern_mask
>>> pattern_mask(fixed_rule(3, 1), 7)[6].int()          # block [6], and the summary cells 2 and 5
tensor([0, 0, 1, 0, 0, 1, 1], dtype=torch.int32)
"""

from __future__ import annotations

from scratchllm.errors import ScratchLLMError
from scratchllm.model.config import GPTConfig
from scratchllm.model.patterns import PatternAttention, fixed_rule, strided_rule
from scratchllm.model.registry import register


@register("attention", "sparse_strided")
class StridedAttention(PatternAttention):
    def __init__(self, config: GPTConfig, layer_index: int = 0) -> None:
        super().__init__(config, layer_index)
        self.rule = strided_rule(config.sparse_stride)

    @classmethod
    def check_config(cls, config: GPTConfig) -> None:
        if not isinstance(config.sparse_stride, int) or config.sparse_stride < 1:
            raise ScratchLLMError(f"sparse_stride must be a positive number of tokens, got {config.sparse_stride!r}")


@register("attention", "sparse_fixed")
class FixedAttention(PatternAttention):
    def __init__(self, config: GPTConfig, layer_index: int = 0) -> None:
        super().__init__(config, layer_index)
        self.rule = fixed_rule(config.sparse_stride, config.sparse_summary)

    @classmethod
    def check_config(cls, config: GPTConfig) -> None:
        StridedAttention.check_config(config)
        c = config.sparse_summary
        if not isinstance(c, int) or not 1 <= c <= config.sparse_stride:
            raise ScratchLLMError(f"sparse_summary must be between 1 and sparse_stride={config.sparse_stride} "
                                  f"(summary tokens at the end of each block), got {c!r}")
