"""Data: corpora (named, downloaded once, or your own files), token shards, and batches.

- ``scratchllm.data.corpora``: ``corpus_files``, ``split_corpus``, the download cache.
- ``scratchllm.data.shards``: ``prepare`` (tokenize once into memory-mapped shards) and
  ``open_prepared`` -> ``PreparedData`` (``.train``, ``.val``, ``.tokenizer``, ``.manifest``).
- ``scratchllm.data.batches``: ``RandomBatches`` (nanoGPT) and ``SlidingWindows`` (the book);
  imported on its own, since it needs torch.
"""

from scratchllm.data.corpora import corpus_files, split_corpus
from scratchllm.data.shards import PreparedData, open_prepared, prepare

__all__ = ["PreparedData", "corpus_files", "open_prepared", "prepare", "split_corpus"]
