"""The byte-level BPE tokenizer: ids for the 256 bytes, one new id per learned merge.

A tokenizer is fully described by four things (the same as a tiktoken ``Encoding``):

- ``pattern``: the pre-tokenization regex (``patterns.py``) that cuts text into chunks;
- ``byte_ids``: the id of each of the 256 bytes (``0..255`` in order for tokenizers we train;
  GPT-2's files use a permutation);
- ``merges``: ``(left id, right id, new id)`` in rank order; a merge's id is its rank, and for
  trained tokenizers merge ``i`` has id ``256 + i``;
- ``special_tokens``: strings such as ``<|endoftext|>`` with the ids after the merges.

Encoding a chunk is BPE in rank order, the same rule as tiktoken: among adjacent tokens
``(u, v)`` whose bytes joined form a token ``t``, merge the one with the lowest id ``t`` (leftmost
on ties), until none is left. Chunks repeat a lot in real text, so each chunk's ids are cached,
as a string of characters ``chr(id)``: a text's ids are then one C-speed join of cached strings,
turned into a list of ints at once (docs/tokenizer.md, "Encoding fast").
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
from collections.abc import Iterable, Sequence
from itertools import accumulate, compress, repeat
from operator import add, not_
from pathlib import Path

import numpy as np
import regex

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer import formats
from scratchllm.tokenizer.batch import PairTable, encode_chunks
from scratchllm.tokenizer.patterns import Splitter, resolve_pattern
from scratchllm.tokenizer.train import count_chunks, learn_merges

ENDOFTEXT = "<|endoftext|>"
PADDING = "<|padding|>"
DEFAULT_SPECIAL_TOKENS = (ENDOFTEXT, PADDING)
MAX_ID = 0x10FFFE  # ids are held as characters chr(id); chr(0x10FFFF) marks "no merge" or "end"
_NO_MERGE = chr(0x10FFFF)
CACHE_LIMIT = 1 << 20  # chunks remembered before the cache starts over
BATCH_MIN = 64  # fewer new chunks than this are encoded one by one (numpy has a fixed cost)
BATCH_MAX_CHARS = 40  # longer chunks need many numpy rounds; the per-chunk loop takes them


class BPETokenizer:
    """Byte-level BPE with regex pre-tokenization and special tokens.

    >>> tok = BPETokenizer.train("low lower lowest " * 50, vocab_size=262, progress=False)
    >>> tok.decode(tok.encode("lowest low"))
    'lowest low'
    """

    def __init__(
        self,
        merges: Sequence[tuple[int, int, int]],
        pattern: str = "gpt4",
        special_tokens: dict[str, int] | None = None,
        byte_ids: Sequence[int] | None = None,
    ) -> None:
        self.pattern_name, self.pattern = resolve_pattern(pattern)
        self.byte_ids = list(range(256)) if byte_ids is None else [int(i) for i in byte_ids]
        self.merges = [(int(u), int(v), int(t)) for u, v, t in merges]
        self.special_tokens = dict(special_tokens or {})
        self._build()

    # ----------------------------------------------------------------------------- construction
    def _build(self) -> None:
        """Check the tables and derive the lookups encoding and decoding use."""
        if sorted(self.byte_ids) != sorted(set(self.byte_ids)) or len(self.byte_ids) != 256:
            raise ScratchLLMError("byte_ids must give 256 distinct ids, one per byte; the tokenizer file is corrupt")
        vocab: dict[int, bytes] = {i: bytes([b]) for b, i in enumerate(self.byte_ids)}
        for u, v, t in self.merges:
            if t in vocab or u not in vocab or v not in vocab:
                raise ScratchLLMError(
                    f"merge ({u}, {v}) -> {t} reuses an id or uses one not defined before it; the tokenizer is corrupt"
                )
            vocab[t] = vocab[u] + vocab[v]
        if len(set(vocab.values())) != len(vocab):
            raise ScratchLLMError("two token ids have the same bytes; a BPE vocabulary needs distinct tokens")
        check_special_strings(list(self.special_tokens))
        ids = list(self.special_tokens.values())
        if len(set(ids)) != len(ids) or any(i in vocab or i < 0 for i in ids):
            raise ScratchLLMError(f"special token ids {sorted(ids)} collide with each other or with ordinary tokens")
        if max(vocab, default=0) > MAX_ID:
            raise ScratchLLMError(f"token ids above {MAX_ID} are not supported")
        self._vocab = vocab  # id -> bytes, ordinary tokens
        self._id_bytes = dict(vocab)
        self._id_bytes.update((i, s.encode("utf-8")) for s, i in self.special_tokens.items())
        # Any two tokens whose bytes join into a token merge into it (tiktoken's rule), keyed as
        # the 2-character string chr(u) + chr(v) -> chr(t).
        by_bytes = {b: i for i, b in vocab.items()}
        pair_to_token: dict[str, str] = {}
        for t, data in vocab.items():
            for cut in range(1, len(data)):
                u, v = by_bytes.get(data[:cut]), by_bytes.get(data[cut:])
                if u is not None and v is not None:
                    pair_to_token[chr(u) + chr(v)] = chr(t)
        self._pair_to_token = pair_to_token
        identity = self.byte_ids == list(range(256))
        self._byte_table = None if identity else {b: i for b, i in enumerate(self.byte_ids)}
        self._split = Splitter(self.pattern)
        # A chunk that is one token is that token (tiktoken's rule): the tokens whose bytes are text.
        self._token_chunks: dict[str, str] = {}
        for t, data in vocab.items():
            try:
                self._token_chunks[data.decode("utf-8")] = chr(t)
            except UnicodeDecodeError:
                pass  # part of a multi-byte character: never a whole chunk
        self._cache: dict[str, str] = {}  # chunk -> its ids as a string of characters chr(id)
        self._pair_table = PairTable(pair_to_token)
        self._byte_id_array = np.array(self.byte_ids, dtype=np.int64)

    @classmethod
    def train(
        cls,
        source: str | Path | Iterable[str | Path],
        vocab_size: int,
        pattern: str = "gpt4",
        special_tokens: Sequence[str] | None = None,
        progress: bool = True,
    ) -> BPETokenizer:
        """Learn a tokenizer of ``vocab_size`` ids (bytes + merges + specials) from ``source``.

        ``source`` is text (``str``), a file ``Path``, or an iterable of either; files are
        streamed. ``special_tokens`` defaults to ``<|endoftext|>`` and ``<|padding|>``.
        """
        specials = list(DEFAULT_SPECIAL_TOKENS if special_tokens is None else special_tokens)
        check_special_strings(specials)
        if vocab_size < 256 + len(specials):
            raise ScratchLLMError(
                f"vocab size {vocab_size} is too small: it needs 256 byte tokens plus {len(specials)} special "
                f"tokens, so at least {256 + len(specials)}"
            )
        _, regex_pattern = resolve_pattern(pattern)
        counts = count_chunks(source, Splitter(regex_pattern), progress=progress)
        if not counts:
            raise ScratchLLMError("the training corpus is empty; give a non-empty text or file")
        merges = learn_merges(counts, vocab_size - 256 - len(specials), progress=progress)
        first_special = 256 + len(merges)
        return cls(
            [(u, v, 256 + i) for i, (u, v) in enumerate(merges)],
            pattern=pattern,
            special_tokens={s: first_special + i for i, s in enumerate(specials)},
        )

    # ----------------------------------------------------------------------------- properties
    @property
    def vocab_size(self) -> int:
        """Bytes + merges + special tokens (one more than the largest id)."""
        return max(self._id_bytes) + 1

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (a special token's are its UTF-8 text)."""
        try:
            return self._id_bytes[token_id]
        except KeyError:
            raise ScratchLLMError(
                f"token id {token_id} is not in this tokenizer (vocab size {self.vocab_size})"
            ) from None

    # ----------------------------------------------------------------------------- encoding
    def _encode_chunk(self, data: bytes) -> str:
        """BPE on the bytes of one pre-token chunk; the ids as a string of characters chr(id)."""
        word = data.decode("latin-1")
        if self._byte_table is not None:
            word = word.translate(self._byte_table)
        get = self._pair_to_token.get
        while len(word) > 1:
            ranks = list(map(get, map(add, word, word[1:]), repeat(_NO_MERGE)))
            best = min(ranks)
            if best == _NO_MERGE:
                break
            i = ranks.index(best)
            # All non-overlapping occurrences at once: in a BPE vocabulary (each token is two
            # earlier tokens joined) a pair formed by this merge ranks after it, so this gives
            # the same result as tiktoken's one-at-a-time, in fewer passes over long chunks.
            word = word.replace(word[i : i + 2], best)
        return word

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text`` as plain text: special-token strings are encoded like any other text.

        >>> tok = BPETokenizer([], pattern="gpt2")
        >>> tok.encode_ordinary("hi!")
        [104, 105, 33]
        """
        chunks = self._split(text)
        try:  # the common case, every chunk seen before: a C-speed lookup and join per chunk
            encoded = "".join(map(self._cache.__getitem__, chunks))
        except KeyError:
            self._add_to_cache(chunks)
            encoded = "".join(map(self._cache.__getitem__, chunks))
        return ids_of(encoded)

    def clear_cache(self) -> None:
        """Forget the ids of chunks seen so far (the next encode starts cold)."""
        self._cache.clear()

    def _add_to_cache(self, chunks: list[str]) -> None:
        """Encode the chunks not in the cache: whole tokens directly, then BPE on the others (many
        short ones at once with numpy, the rest one by one)."""
        distinct = set(chunks)
        new_chunks = distinct.difference(self._cache)
        if len(self._cache) + len(new_chunks) > CACHE_LIMIT:  # start over, keeping memory bounded
            self.clear_cache()
            new_chunks = distinct
        new_chunks = list(new_chunks)
        # Fresh copies made one after another lie together in memory, unlike the text's chunks
        # (spread among all of them): the lookups, which compare against the keys, run faster.
        joined = "".join(new_chunks)
        ends = list(accumulate(map(len, new_chunks)))
        new_chunks = [joined[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]
        cache = self._cache
        tokens = list(map(self._token_chunks.get, new_chunks))
        # The same for the values: iterating a string makes new 1-character strings.
        cache.update(zip(compress(new_chunks, tokens), "".join(filter(None, tokens)), strict=True))
        new_chunks = list(compress(new_chunks, map(not_, tokens)))
        # numpy has a fixed cost per call and takes one round per merge, so a few chunks, and
        # long ones (runs of spaces or symbols), go through the per-chunk loop instead.
        if len(new_chunks) < BATCH_MIN:
            batch, alone = [], new_chunks
        else:
            batch = [chunk for chunk in new_chunks if len(chunk) <= BATCH_MAX_CHARS]
            alone = [chunk for chunk in new_chunks if len(chunk) > BATCH_MAX_CHARS]
        cache.update((chunk, self._encode_chunk(chunk.encode("utf-8"))) for chunk in alone)
        if batch:
            datas = [chunk.encode("utf-8") for chunk in batch]
            cache.update(zip(batch, encode_chunks(datas, self._byte_id_array, self._pair_table), strict=True))

    def encode(
        self,
        text: str,
        allowed_special: str | Iterable[str] = (),
        disallowed_special: str | Iterable[str] = "all",
    ) -> list[int]:
        """Encode ``text``; special-token strings become their ids only when allowed.

        Like tiktoken: a special token in ``allowed_special`` (or ``"all"``) is encoded as its
        id; one in ``disallowed_special`` (default: every special token not allowed) raises an
        error, because text from users should not be able to inject control tokens; pass
        ``disallowed_special=()`` to encode such text as ordinary text.
        """
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise ScratchLLMError(
                f"unknown special tokens {sorted(unknown)}; this tokenizer has {sorted(self.special_tokens)}"
            )
        if disallowed_special == "all":
            disallowed = set(self.special_tokens) - allowed
        else:
            disallowed = set(disallowed_special) - allowed
        found = self.find_special(text, disallowed)
        if found:
            raise ScratchLLMError(
                f"text contains the special token {found!r}; pass allowed_special={{{found!r}}} "
                "to encode it as a special token, or disallowed_special=() to encode it as plain text"
            )
        if not allowed:
            return self.encode_ordinary(text)
        ids: list[int] = []
        start = 0
        for match in _alternation(frozenset(allowed)).finditer(text):
            ids += self.encode_ordinary(text[start : match.start()])
            ids.append(self.special_tokens[match.group()])
            start = match.end()
        ids += self.encode_ordinary(text[start:])
        return ids

    def encode_user_text(self, text: str, special: str = "refuse", source: str = "the text") -> list[int]:
        """Encode text a user typed: ``special`` says what a special-token string in it becomes,
        its id (``"allow"``), plain text (``"text"``) or, by default, an error (``"refuse"``) that
        names ``source`` and the two command-line flags (``--allow-special``, ``--special-as-text``).

        >>> BPETokenizer([], special_tokens={"<|endoftext|>": 256}).encode_user_text("a<|endoftext|>", "allow")
        [97, 256]
        """
        if special == "allow":
            return self.encode(text, allowed_special="all")
        if special == "text":
            return self.encode_ordinary(text)
        if special != "refuse":
            raise ScratchLLMError(f"special must be 'refuse', 'allow' or 'text', got {special!r}")
        found = self.find_special(text)
        if found:
            raise ScratchLLMError(f"{source} contains the special token {found!r}; pass --allow-special to encode it "
                                  "as its id, or --special-as-text to encode it as plain text")
        return self.encode_ordinary(text)

    def find_special(self, text: str, names: Iterable[str] | None = None) -> str | None:
        """The first special-token string in ``text`` (among ``names``, default all), or None.

        >>> BPETokenizer([], special_tokens={"<|endoftext|>": 256}).find_special("a<|endoftext|>")
        '<|endoftext|>'
        """
        names = frozenset(self.special_tokens if names is None else names)
        found = _alternation(names).search(text) if names else None
        return found.group() if found else None

    def encode_batch(
        self,
        texts: Sequence[str],
        num_workers: int = 1,
        allowed_special: str | Iterable[str] = (),
        disallowed_special: str | Iterable[str] = "all",
        chunksize: int = 64,
    ) -> list[list[int]]:
        """Encode many texts, in ``num_workers`` processes when more than 1 (order is kept).

        Each worker rebuilds this tokenizer from its JSON state once and keeps its own chunk
        cache, so throughput grows with the number of cores for large inputs. Every call starts
        (and ends) its own pool of processes, each starting Python and rebuilding the tokenizer:
        give one call many texts rather than many calls a few.
        """
        allowed = allowed_special if isinstance(allowed_special, str) else tuple(allowed_special)
        disallowed = disallowed_special if isinstance(disallowed_special, str) else tuple(disallowed_special)
        if num_workers <= 1 or len(texts) <= 1:
            return [self.encode(text, allowed, disallowed) for text in texts]
        context = multiprocessing.get_context("spawn" if os.name != "posix" else "forkserver")
        with context.Pool(num_workers, initializer=_worker_init, initargs=(self.to_dict(),)) as pool:
            return pool.starmap(_worker_encode, zip(texts, repeat(allowed), repeat(disallowed)), chunksize=chunksize)

    # ----------------------------------------------------------------------------- decoding
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes of ``ids`` (may end inside a UTF-8 character)."""
        try:
            return b"".join(map(self._id_bytes.__getitem__, ids))
        except (KeyError, TypeError):
            bad = next(i for i in ids if not isinstance(i, int) or i not in self._id_bytes)
            raise ScratchLLMError(f"token id {bad!r} is not in this tokenizer (vocab size {self.vocab_size})") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; bytes that are not valid UTF-8 become U+FFFD (as tiktoken does)."""
        return self.decode_bytes(list(ids)).decode("utf-8", errors="replace")

    # ----------------------------------------------------------------------------- teaching
    def explain_word(self, word: str) -> list[tuple[tuple[int, int], int]]:
        """The merges BPE applies to one chunk, in order, as ``((left id, right id), new id)``.

        >>> tok = BPETokenizer([(104, 105, 256)], pattern="gpt2")
        >>> tok.explain_word("hi")
        [((104, 105), 256)]
        """
        steps: list[tuple[tuple[int, int], int]] = []
        ids = [self.byte_ids[b] for b in word.encode("utf-8")]
        while len(ids) > 1:
            merged = [self._pair_to_token.get(chr(u) + chr(v), _NO_MERGE) for u, v in zip(ids, ids[1:], strict=False)]
            best = min(merged)
            if best == _NO_MERGE:
                break
            i = merged.index(best)
            steps.append(((ids[i], ids[i + 1]), ord(best)))
            ids[i : i + 2] = [ord(best)]
        return steps

    # ----------------------------------------------------------------------------- files
    def to_dict(self) -> dict:
        """The tokenizer as plain JSON data (our versioned format; see formats.py)."""
        return formats.tokenizer_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BPETokenizer:
        return cls(**formats.tokenizer_args(data))

    def fingerprint(self) -> str:
        """sha256 hex of the canonical JSON of this tokenizer: equal tokenizers, equal prints."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()

    def save(self, directory: str | os.PathLike, force: bool = False) -> Path:
        """Write ``directory/tokenizer.json`` (our format); refuses to replace a different one."""
        return formats.save_tokenizer(self, directory, force=force)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> BPETokenizer:
        """Load a tokenizer saved with :meth:`save` (a directory or the JSON file itself)."""
        return cls(**formats.read_tokenizer(directory))

    def export_tiktoken(self, path: str | os.PathLike) -> Path:
        """Write a ``.tiktoken`` ranks file (+ ``.json`` sidecar with pattern and specials)."""
        return formats.export_tiktoken(self, path)

    def export_hf(self, path: str | os.PathLike) -> Path:
        """Write a Hugging Face ``tokenizer.json`` (a directory gets ``tokenizer.json`` inside)."""
        return formats.export_hf(self, path)

    @classmethod
    def from_tiktoken(
        cls,
        path: str | os.PathLike,
        pattern: str | None = None,
        special_tokens: dict[str, int] | Sequence[str] | None = None,
    ) -> BPETokenizer:
        """Load a ``.tiktoken`` ranks file; ``special_tokens`` as ``{text: id}`` or names (ids follow).

        Pattern and special tokens default to the file's ``.json`` sidecar (as written by
        :meth:`export_tiktoken`), else ``"gpt4"`` and none.
        """
        return cls(**formats.read_tiktoken(path, pattern=pattern, special_tokens=special_tokens))

    @classmethod
    def from_hf(cls, path: str | os.PathLike) -> BPETokenizer:
        """Load a Hugging Face byte-level BPE ``tokenizer.json`` (what ``export_hf`` writes)."""
        return cls(**formats.read_hf(path))

    @classmethod
    def from_gpt2_files(
        cls, encoder_json: str | os.PathLike, vocab_bpe: str | os.PathLike, special_tokens: Sequence[str] = ()
    ) -> BPETokenizer:
        """Load GPT-2's ``encoder.json`` + ``vocab.bpe`` (or Hugging Face ``vocab.json`` + ``merges.txt``).

        Special tokens are the entries of ``encoder.json`` that are not bytes or merges
        (``<|endoftext|>`` = 50256 for GPT-2); ``special_tokens`` adds more after them.
        """
        return cls(**formats.read_gpt2_files(encoder_json, vocab_bpe, special_tokens=special_tokens))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BPETokenizer) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        name = self.pattern_name or "custom"
        return f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, pattern={name!r})"


def ids_of(encoded: str) -> list[int]:
    """The ids held in a string of characters ``chr(id)`` (its UTF-32 code units are the ids).

    >>> ids_of(chr(104) + chr(50256))
    [104, 50256]
    """
    return np.frombuffer(encoded.encode("utf-32-le", "surrogatepass"), dtype="<u4").tolist()


def check_special_strings(names: Sequence[str]) -> None:
    """Reject empty, duplicate or overlapping special tokens (matching them would be ambiguous)."""
    if len(set(names)) != len(names):
        raise ScratchLLMError(f"duplicate special tokens in {list(names)}; list each once")
    for name in names:
        if not isinstance(name, str) or not name:
            raise ScratchLLMError(f"special token {name!r} must be a non-empty string")
    for a in names:
        for b in names:
            if a != b and (a in b or any(a.endswith(b[:k]) for k in range(1, len(b)))):
                raise ScratchLLMError(
                    f"special tokens {a!r} and {b!r} overlap; choose tokens that cannot overlap in text"
                )


@functools.lru_cache(maxsize=64)
def _alternation(strings: frozenset[str]) -> regex.Pattern:
    """A regex matching any of ``strings``, longest first."""
    return regex.compile("|".join(regex.escape(s) for s in sorted(strings, key=len, reverse=True)) or r"(?!)")


_WORKER: BPETokenizer | None = None


def _worker_init(state: dict) -> None:
    global _WORKER
    _WORKER = BPETokenizer.from_dict(state)


def _worker_encode(text: str, allowed: str | tuple, disallowed: str | tuple) -> list[int]:
    assert _WORKER is not None
    return _WORKER.encode(text, allowed, disallowed)
