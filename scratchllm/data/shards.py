"""Prepare: tokenize a corpus once into memory-mapped token shards described by a JSON manifest.

Training reads the same tokens thousands of times, so they are encoded once and stored as a flat
array of ids on disk that ``numpy.memmap`` pages in on demand (nanoGPT's ``train.bin``). Layout::

    DATA_DIR/
      manifest.json   format version, tokenizer fingerprint, dtype, token counts, sources + sha256
      train.bin       token ids, little-endian uint16 (vocabulary <= 65,536) or uint32
      val.bin         the same for validation
      tokenizer/      the tokenizer that made them (BPETokenizer.save)

Documents are joined with ``<|endoftext|>`` *between* them, so decoding a shard gives back the
split's documents exactly. Text is streamed in pieces (a corpus larger than memory works), cut
only where pre-tokenization cannot straddle the cut (``patterns.SAFE_CUT``), so the ids are the
same as encoding each document whole; the pieces are encoded in parallel processes.

Public API:

- ``prepare(corpus, out, tokenizer=None, vocab_size=4096, val_fraction=0.1, ...) -> Path``
- ``open_prepared(data_dir, tokenizer=None) -> PreparedData`` with ``.train`` and ``.val``
  (1-D memmaps of ids), ``.manifest``, ``.tokenizer``, ``.vocab_size``, ``.eot_id``; it checks
  that the tokenizer's fingerprint is the one the shards were made with.
- ``token_dtype(vocab_size)``: uint16 or uint32.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from scratchllm import __version__
from scratchllm.data.corpora import (
    CorpusSplit,
    Source,
    iter_pieces,
    no_space_is_an_error,
    sha256_file,
    split_corpus,
)
from scratchllm.errors import ScratchLLMError, check_range
from scratchllm.fileio import atomic_path, atomic_write_json, check_replaceable, exclusive_lock, read_json
from scratchllm.tokenizer import DEFAULT_SPECIAL_TOKENS, ENDOFTEXT, BPETokenizer
from scratchllm.tokenizer.patterns import last_safe_cut

FORMAT_VERSION = 1
SPLITS = ("train", "val")
JOB_CHARS = 1 << 18  # characters per encoding job: small enough to keep all processes busy
TOKENIZER_TRAIN_CHARS = 200_000_000  # a tokenizer trained by prepare sees at most this much text


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id: uint16 up to 65,536 ids, else uint32.

    >>> token_dtype(50257), token_dtype(100277)
    (dtype('uint16'), dtype('uint32'))
    """
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def encoding_jobs(sources: Iterable[Source], job_chars: int = JOB_CHARS) -> Iterator[list[str | None]]:
    """Group a split's text into jobs of about ``job_chars`` characters; ``None`` stands for ``<|endoftext|>``.

    ``None`` goes before every document but the first. A document longer than a job is cut at
    the last safe cut point, so encoding the jobs one by one gives the ids of the whole text.

    >>> list(encoding_jobs([]))
    []
    """
    job: list[str | None] = []
    size = 0
    text = ""  # the current document's text not yet put into a job
    first = True
    new_document = True
    for source in sources:
        for piece, ends in iter_pieces(source, job_chars):
            if new_document:
                if not first:
                    job.append(None)
                first = new_document = False
            text += piece
            if ends:
                job.append(text)
                size += len(text)
                text, new_document = "", True
            elif len(text) >= job_chars:
                cut = last_safe_cut(text)
                if cut == 0 and len(text) >= 16 * job_chars:
                    cut = len(text)  # no line break in sight: cut anyway (ids may differ at this one spot)
                if cut:
                    job.append(text[:cut])
                    size += cut
                    text = text[cut:]
            if size >= job_chars:
                yield job
                job, size = [], 0
    if job:
        yield job


_WORKER: tuple[BPETokenizer, int, np.dtype] | None = None


def _init_worker(tokenizer_dir: str) -> None:
    global _WORKER
    tokenizer = BPETokenizer.load(tokenizer_dir)
    _WORKER = (tokenizer, tokenizer.special_tokens[ENDOFTEXT], token_dtype(tokenizer.vocab_size))


def _encode_job(job: list[str | None]) -> tuple[np.ndarray, int, int]:
    """Encode one job in a worker: (ids, characters, document separators)."""
    assert _WORKER is not None, "call _init_worker first"
    tokenizer, eot, dtype = _WORKER
    return np.asarray(encode_job(job, tokenizer, eot), dtype=dtype), sum(map(len, filter(None, job))), job.count(None)


def encode_job(job: list[str | None], tokenizer: BPETokenizer, eot: int | None) -> list[int]:
    """The ids of one job: its texts encoded as plain text, ``eot`` for each ``None`` (left out if None).

    >>> encode_job(["ab", None, "c"], BPETokenizer([], special_tokens={ENDOFTEXT: 256}), 256)
    [97, 98, 256, 99]
    """
    ids: list[int] = []
    for item in job:
        if item is not None:
            ids += tokenizer.encode_ordinary(item)
        elif eot is not None:
            ids.append(eot)
    return ids


def encode_sources(sources: Iterable[Source], tokenizer: BPETokenizer) -> np.ndarray:
    """A split's text encoded as ``prepare`` encodes it, in this process (for evaluation).

    >>> encode_sources([], BPETokenizer([])).tolist()
    []
    """
    eot = tokenizer.special_tokens.get(ENDOFTEXT)
    ids = [i for job in encoding_jobs(sources) for i in encode_job(job, tokenizer, eot)]
    return np.asarray(ids, dtype=token_dtype(tokenizer.vocab_size))


def _write_split(path: Path, jobs: Iterator[list[str | None]], pool, bar: tqdm) -> dict[str, Any]:
    """Encode ``jobs`` (in ``pool`` if any) and stream the ids to ``path``; return the split's stats."""
    digest = hashlib.sha256()
    tokens = chars = separators = n_jobs = 0
    results = pool.imap(_encode_job, jobs) if pool is not None else map(_encode_job, jobs)
    with open(path, "wb") as f:
        for ids, n_chars, n_separators in results:
            f.write(ids.tobytes())
            digest.update(ids.tobytes())
            tokens += len(ids)
            chars += n_chars
            separators += n_separators
            n_jobs += 1
            bar.update(n_chars)
            bar.set_postfix(tokens=f"{tokens:,}", refresh=False)
    documents = separators + 1 if n_jobs else 0
    return {"file": path.name, "tokens": tokens, "characters": chars, "documents": documents,
            "sha256": digest.hexdigest()}


def _training_text(sources: list[Source], limit: int) -> Iterator[str]:
    """The split's text for training a tokenizer, at most ``limit`` characters, in safe pieces."""
    seen = 0
    for job in encoding_jobs(sources, JOB_CHARS):
        for item in job:
            if item is not None:
                yield item
                seen += len(item)
        if seen >= limit:
            return


def _train_tokenizer(split: CorpusSplit, vocab_size: int, pattern: str) -> BPETokenizer:
    n_specials = len(DEFAULT_SPECIAL_TOKENS)  # <|endoftext|> and <|padding|>, BPETokenizer.train's defaults
    if vocab_size < 256:
        raise ScratchLLMError(f"--vocab-size {vocab_size} is too small: 256 is the smallest (the bytes, no merges)")
    # 256 up to 256 + specials means byte level: the 256 bytes and the special tokens, no merges.
    return BPETokenizer.train(_training_text(split.train, TOKENIZER_TRAIN_CHARS), max(vocab_size, 256 + n_specials),
                              pattern=pattern)


def prepare(
    corpus: str | os.PathLike,
    out: str | os.PathLike,
    tokenizer: str | os.PathLike | BPETokenizer | None = None,
    vocab_size: int = 4096,
    val_fraction: float = 0.1,
    workers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    pattern: str = "gpt4",
) -> Path:
    """Tokenize ``corpus`` into ``out``: train.bin, val.bin, tokenizer/ and manifest.json, atomically.

    With no ``tokenizer`` one is trained first on the training split (``vocab_size`` ids in all,
    special tokens included; 256 means byte level). ``workers`` processes encode (default: all CPUs).

    >>> prepare("the-verdict", "data/verdict", vocab_size=512)                 # doctest: +SKIP
    PosixPath('data/verdict')
    """
    out = Path(out)
    if workers is not None:
        check_range("workers", workers, 1, note="or None for all CPUs")
    with exclusive_lock(out, out.parent / f".{out.name}.lock"):  # the folder itself is replaced whole
        check_replaceable(out, "manifest.json", "a prepared data folder")
        return _prepare(corpus, out, tokenizer, vocab_size, val_fraction, workers, cache_dir, pattern)


def _prepare(corpus: str | os.PathLike, out: Path, tokenizer: str | os.PathLike | BPETokenizer | None,
             vocab_size: int, val_fraction: float, workers: int | None, cache_dir: str | os.PathLike | None,
             pattern: str) -> Path:
    split = split_corpus(corpus, val_fraction, cache_dir)
    started = time.perf_counter()
    if tokenizer is None:
        tok = _train_tokenizer(split, vocab_size, pattern)
    elif isinstance(tokenizer, BPETokenizer):
        tok = tokenizer
    else:
        tok = BPETokenizer.load(tokenizer)
    if ENDOFTEXT not in tok.special_tokens:
        raise ScratchLLMError(f"the tokenizer has no {ENDOFTEXT} special token, which separates documents in "
                              f"the shards: train one with it (special_tokens=[{ENDOFTEXT!r}, ...])")
    dtype = token_dtype(tok.vocab_size)
    workers = workers or os.cpu_count() or 1
    total_chars = sum(s.path.stat().st_size * (s.stop - s.start) for s in split.train + split.val)
    with no_space_is_an_error(out, "the token shards"), atomic_path(out) as tmp:
        tmp.mkdir()
        tok.save(tmp / "tokenizer")
        pool = None
        if workers > 1:
            # fork starts a worker in milliseconds (forkserver/spawn re-import the caller's main module,
            # seconds with torch); the workers run only Python and numpy, never torch, so fork is safe.
            context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
            pool = context.Pool(workers, initializer=_init_worker, initargs=(str(tmp / "tokenizer"),))
        else:
            _init_worker(str(tmp / "tokenizer"))
        try:
            with tqdm(total=int(total_chars), unit="char", unit_scale=True, desc="tokenizing") as bar:
                stats = {name: _write_split(tmp / f"{name}.bin", encoding_jobs(getattr(split, name), JOB_CHARS),
                                            pool, bar)
                         for name in SPLITS}
        finally:
            if pool is not None:
                pool.terminate()
        elapsed = time.perf_counter() - started
        files = sorted({s.path for s in split.train + split.val})
        manifest = {
            "format_version": FORMAT_VERSION,
            "created_by": f"scratchllm {__version__}",
            "corpus": str(corpus),
            "split_rule": split.rule,
            "val_fraction": val_fraction,
            "dtype": dtype.name,
            "tokenizer": {"dir": "tokenizer", "fingerprint": tok.fingerprint(), "vocab_size": tok.vocab_size,
                          "special_tokens": tok.special_tokens},
            "eot_id": tok.special_tokens[ENDOFTEXT],
            "splits": stats,
            "sources": [
                {"path": str(path), "bytes": path.stat().st_size, "sha256": sha256_file(path),
                 "splits": [name for name in SPLITS if any(s.path == path for s in getattr(split, name))]}
                for path in files
            ],
            "seconds": round(elapsed, 3),
        }
        atomic_write_json(tmp / "manifest.json", manifest)
    return out


@dataclass
class PreparedData:
    """A prepared data folder: token memmaps, the manifest and the tokenizer that made them."""

    path: Path
    manifest: dict[str, Any]
    tokenizer: BPETokenizer
    train: np.ndarray  # (N_train,) token ids, memory-mapped
    val: np.ndarray  # (N_val,)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def eot_id(self) -> int:
        return self.manifest["eot_id"]


def _rerun_hint(data_dir: Path, manifest: dict[str, Any] | None = None) -> str:
    corpus = manifest.get("corpus", "NAME") if manifest else "NAME"
    return f"re-run `scratchllm prepare --corpus {corpus} --out {data_dir}`"


def _read_manifest(data_dir: Path) -> dict[str, Any]:
    """Load and check ``data_dir/manifest.json``: valid JSON, this format version, every key open_prepared reads."""
    path = data_dir / "manifest.json"
    if not path.is_file():
        raise ScratchLLMError(f"{data_dir} is not a prepared data folder (no manifest.json): "
                              f"run `scratchllm prepare --corpus NAME --out {data_dir}` first")
    manifest = read_json(path, _rerun_hint(data_dir))
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise ScratchLLMError(f"{path} has format version {version}, this scratchllm reads {FORMAT_VERSION}: "
                              f"{_rerun_hint(data_dir)}")
    try:
        for key in ("dir", "fingerprint"):
            manifest["tokenizer"][key]
        np.dtype(manifest["dtype"])
        int(manifest["eot_id"])
        for name in SPLITS:
            info = manifest["splits"][name]
            info["file"], int(info["tokens"]), info["sha256"]
    except (KeyError, TypeError, ValueError) as err:
        raise ScratchLLMError(f"{path} is incomplete or damaged ({type(err).__name__}: {err}): "
                              f"{_rerun_hint(data_dir, manifest)}") from err
    return manifest


def open_prepared(data_dir: str | os.PathLike, tokenizer: str | os.PathLike | BPETokenizer | None = None,
                  verify: bool = False) -> PreparedData:
    """Open a folder written by ``prepare``, checking the manifest, the shards and the tokenizer.

    ``tokenizer`` (default: ``DATA_DIR/tokenizer``) must have the fingerprint the shards were
    made with. ``verify=True`` also checks the shards' sha256 (reads them whole).

    >>> data = open_prepared("data/verdict")                                    # doctest: +SKIP
    >>> data.train[:5], data.tokenizer.decode(data.val[:20].tolist())            # doctest: +SKIP
    """
    data_dir = Path(data_dir)
    manifest = _read_manifest(data_dir)
    if tokenizer is None:
        tokenizer = data_dir / manifest["tokenizer"]["dir"]
    tok = tokenizer if isinstance(tokenizer, BPETokenizer) else BPETokenizer.load(tokenizer)
    want, got = manifest["tokenizer"]["fingerprint"], tok.fingerprint()
    if got != want:
        raise ScratchLLMError(
            f"the tokenizer (fingerprint {got}) is not the one the shards in {data_dir} were made with (fingerprint "
            f"{want}): use {data_dir}/tokenizer, or {_rerun_hint(data_dir, manifest)} with --tokenizer set to yours"
        )
    dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
    arrays = {}
    for name in SPLITS:
        info = manifest["splits"][name]
        path = data_dir / info["file"]
        expected = info["tokens"] * dtype.itemsize
        size = path.stat().st_size if path.is_file() else None
        if size != expected:
            raise ScratchLLMError(f"{path} is {'missing' if size is None else f'{size:,} bytes'}, the manifest says "
                                  f"{expected:,} ({info['tokens']:,} tokens): {_rerun_hint(data_dir, manifest)}")
        if verify and sha256_file(path) != info["sha256"]:
            raise ScratchLLMError(f"{path} does not match its manifest sha256: {_rerun_hint(data_dir, manifest)}")
        arrays[name] = np.memmap(path, dtype=dtype, mode="r") if expected else np.empty(0, dtype)
    return PreparedData(data_dir, manifest, tok, arrays["train"], arrays["val"])
