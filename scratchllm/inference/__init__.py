"""The inference stage: an engine for sequences that join and leave a running batch, sampling,
and text as it streams.

- ``engine.py``: ``Engine`` (slots of one KV cache, prefill, batched decode steps), ``Event``
- ``sampling.py``: ``SamplingSettings`` (one sequence's settings), ``sample_next``
- ``text.py``: ``TextStream`` (incremental UTF-8 decoding of streamed tokens)

``scratchllm.generate`` (``generate``, ``stream``) is the one-call front of the engine.
"""

from scratchllm.inference.engine import Engine, Event, check_fits, eval_mode
from scratchllm.inference.sampling import SamplingSettings, check_sampling, sample_next
from scratchllm.inference.text import TextStream

__all__ = [
    "Engine", "Event", "SamplingSettings", "TextStream", "check_fits", "check_sampling", "eval_mode", "sample_next",
]
