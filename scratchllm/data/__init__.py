"""Data: corpora (named, downloaded once, or your own files), token shards, and batches.

- ``scratchllm.data.corpora``: ``corpus_files``, ``split_corpus``, the download cache.
- ``scratchllm.data.batches``: ``RandomBatches`` (nanoGPT) and ``SlidingWindows`` (the book).
"""
