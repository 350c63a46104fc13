"""The inference stage: an engine for sequences that join and leave a running batch, sampling,
and text as it streams.

- ``engine.py``: ``Engine`` (slots of one KV cache, prefill, batched decode steps), ``Event``
- ``sampling.py``: ``SamplingSettings`` (one sequence's settings), ``sample_next``
- ``text.py``: ``TextStream`` (incremental UTF-8 decoding of streamed tokens), ``StopStrings`` (stop strings
  that span pieces), ``cut_at_stop``

``scratchllm.generate`` (``generate``, ``stream``) is the one-call front of the engine.
"""

from scratchllm.inference.engine import Engine, Event, check_fits, eval_mode
from scratchllm.inference.sampling import SamplingSettings, check_sampling, sample_next
from scratchllm.inference.text import StopStrings, TextStream, cut_at_stop

__all__ = [
    "Engine", "Event", "SamplingSettings", "StopStrings", "TextStream", "check_fits", "check_sampling", "cut_at_stop",
    "eval_mode", "sample_next",
]
