"""Tokenizer files: our own versioned JSON, and the formats of tiktoken, Hugging Face and GPT-2.

Our format (``tokenizer.scratchllm.json``, version 1) is JSON a learner can read::

    {"format": "scratchllm-bpe", "version": 1, "pattern_name": "gpt4", "pattern": "...",
     "byte_ids": null,                        # null: byte b has id b; else a list of 256 ids
     "special_tokens": {"<|endoftext|>": 1024, "<|padding|>": 1025},
     "merges": [[101, 32, 256, "e "], ...]}   # left id, right id, new id, text (for reading)

Interop:

- ``.tiktoken``: one ``base64(token bytes) rank`` line per token (ranks are our ids), with a
  ``.json`` sidecar holding the pattern and special tokens;
- Hugging Face ``tokenizer.json``: a byte-level BPE model whose tokens are written with GPT-2's
  byte-to-character table (``bytes_to_unicode``: space is ``Ġ``);
- GPT-2's ``encoder.json`` + ``vocab.bpe`` (Hugging Face calls them ``vocab.json`` + ``merges.txt``).

Readers return ``TokenizerArgs``, the arguments of ``BPETokenizer(...)``, and writers read a
tokenizer's public attributes, so this module needs no import of the class it serves
(``bpe.py`` imports it, one way).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scratchllm.errors import ScratchLLMError
from scratchllm.fileio import atomic_write_json, atomic_write_text, read_json
from scratchllm.tokenizer.patterns import GPT2_PATTERN

if TYPE_CHECKING:
    from scratchllm.tokenizer.bpe import BPETokenizer

# merges, pattern, special_tokens and byte_ids: what BPETokenizer(**args) is built from
TokenizerArgs = dict[str, Any]

FORMAT = "scratchllm-bpe"
VERSION = 1
FILENAME = "tokenizer.scratchllm.json"


# --------------------------------------------------------------------------------- our format
def tokenizer_to_dict(tok: BPETokenizer) -> dict:
    """The JSON-able state of ``tok`` in our format (see the module docstring)."""
    identity = tok.byte_ids == list(range(256))
    return {
        "format": FORMAT,
        "version": VERSION,
        "pattern_name": tok.pattern_name,
        "pattern": tok.pattern,
        "byte_ids": None if identity else tok.byte_ids,
        "special_tokens": dict(tok.special_tokens),
        "merges": [[u, v, t, tok.token_bytes(t).decode("utf-8", errors="backslashreplace")] for u, v, t in tok.merges],
    }


def tokenizer_args(data: object) -> TokenizerArgs:
    """The constructor arguments in :func:`tokenizer_to_dict` output; errors name what is wrong."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ScratchLLMError(f'not a scratchllm tokenizer (expected "format": "{FORMAT}")')
    if data.get("version") != VERSION:
        raise ScratchLLMError(
            f"tokenizer format version {data.get('version')!r} is not supported (this scratchllm reads version "
            f"{VERSION}); retrain it or upgrade scratchllm"
        )
    try:
        merges = [(int(m[0]), int(m[1]), int(m[2])) for m in data["merges"]]
        specials = {str(k): int(v) for k, v in data["special_tokens"].items()}
        byte_ids = None if data["byte_ids"] is None else [int(b) for b in data["byte_ids"]]
        return {"merges": merges, "pattern": str(data["pattern"]), "special_tokens": specials, "byte_ids": byte_ids}
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        raise ScratchLLMError(f"corrupt tokenizer data ({type(err).__name__}: {err}); re-save or retrain it") from err


def _to_json(tok: BPETokenizer) -> str:
    """Our format as text, one merge per line so the file reads (and diffs) well."""
    data = tokenizer_to_dict(tok)
    merges = data.pop("merges")
    head = json.dumps(data, indent=2, ensure_ascii=False)[:-2]  # without the closing "\n}"
    lines = ",\n".join("    " + json.dumps(m, ensure_ascii=False) for m in merges)
    return f'{head},\n  "merges": [\n{lines}\n  ]\n}}\n'


def save_tokenizer(tok: BPETokenizer, directory: str | os.PathLike, force: bool = False) -> Path:
    """Write ``directory/tokenizer.scratchllm.json`` atomically.

    Refuses (unless ``force``) when the directory already holds a different tokenizer, so a
    typo in ``--out`` cannot silently replace the tokenizer some data was encoded with.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ScratchLLMError(f"{directory} is a file; give a directory to save the tokenizer in")
    path = directory / FILENAME
    if path.exists() and not force:
        try:
            same = read_tokenizer(path) == tokenizer_args(tokenizer_to_dict(tok))
        except ScratchLLMError:
            same = False
        if not same:
            raise ScratchLLMError(
                f"{directory} already holds a different tokenizer; choose another directory or use --force"
            )
    atomic_write_text(path, _to_json(tok))
    return path


def read_tokenizer(path: str | os.PathLike) -> TokenizerArgs:
    """Read our format from a directory (``tokenizer.scratchllm.json`` inside) or the file."""
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ScratchLLMError(
            f"cannot read tokenizer {path}: {err}; give a directory made by `tokenizer train`"
        ) from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ScratchLLMError(f"tokenizer file {path} is corrupt (invalid JSON: {err}); re-save or retrain it") from err
    return tokenizer_args(data)


# --------------------------------------------------------------------------------- tiktoken
def export_tiktoken(tok: BPETokenizer, path: str | os.PathLike) -> Path:
    """Write ``path`` (``base64 rank`` lines) and ``path.json`` (pattern, special tokens).

    ``tiktoken.Encoding(name, pat_str=tok.pattern, mergeable_ranks=..., special_tokens=...)``
    built from them encodes exactly as ``tok`` does.
    """
    path = Path(path)
    lines = [f"{base64.b64encode(tok.token_bytes(i)).decode('ascii')} {i}" for i in sorted(tok._vocab)]
    atomic_write_text(path, "\n".join(lines) + "\n")
    atomic_write_json(_sidecar(path), {"pattern": tok.pattern, "special_tokens": tok.special_tokens})
    return path


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def read_tiktoken(
    path: str | os.PathLike, pattern: str | None = None, special_tokens: dict[str, int] | Sequence[str] | None = None
) -> TokenizerArgs:
    """Read a ``.tiktoken`` ranks file; pattern and specials default to its ``.json`` sidecar.

    The merges are recovered by running BPE on each token's bytes with the lower ranks only:
    what is left is the two tokens it was merged from.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ScratchLLMError(f"cannot read tiktoken file {path}: {err}") from err
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(lines, 1):
        try:
            token, rank = line.split()
            data = base64.b64decode(token, validate=True)
            if data in ranks:
                raise ValueError(f"token {data!r} listed twice")
            ranks[data] = int(rank)
        except (ValueError, binascii.Error) as err:
            raise ScratchLLMError(f"{path} line {number} is not 'base64token rank': {err}") from err
    sidecar = {}
    if _sidecar(path).is_file():
        sidecar = read_json(_sidecar(path), "fix or delete it, or give the pattern and special tokens yourself")
    pattern = pattern or sidecar.get("pattern", "gpt4")
    if special_tokens is None:
        special_tokens = sidecar.get("special_tokens", {})
    if len(set(ranks.values())) != len(ranks):
        raise ScratchLLMError(f"{path} gives the same rank to two tokens; it is not a BPE ranks file")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ScratchLLMError(f"{path} has no token for byte(s) {missing[:5]}; a byte-level BPE needs all 256")
    merges = [(*_split_token(token, rank, ranks), rank) for token, rank in ranks.items() if len(token) > 1]
    merges.sort(key=lambda m: m[2])
    if not isinstance(special_tokens, dict):
        first = max(ranks.values()) + 1
        special_tokens = {s: first + i for i, s in enumerate(special_tokens)}
    byte_ids = [ranks[bytes([b])] for b in range(256)]
    return {"merges": merges, "pattern": pattern, "special_tokens": special_tokens, "byte_ids": byte_ids}


def _split_token(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[int, int]:
    """The two tokens BPE joins last to make ``token``, using only ranks below ``rank``."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        joined = [ranks.get(a + b, rank) for a, b in zip(parts, parts[1:], strict=False)]
        best = min(joined)
        if best >= rank:
            break
        i = joined.index(best)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise ScratchLLMError(
            f"token {token!r} (rank {rank}) is not two lower-ranked tokens joined; not a BPE vocabulary"
        )
    return ranks[parts[0]], ranks[parts[1]]


# --------------------------------------------------------------------------------- GPT-2 and HF
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from each byte to a printable character (``" "`` -> ``"Ġ"``).

    Printable Latin-1 bytes map to themselves; the other 68 (controls, space, ...) map to
    ``chr(256 + k)`` in byte order, so every token prints as a visible string.

    >>> bytes_to_unicode()[ord(" ")]
    'Ġ'
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + k) for k, b in enumerate(others)})
    return table


def _token_string(data: bytes, table: dict[int, str]) -> str:
    return "".join(table[b] for b in data)


def export_hf(tok: BPETokenizer, path: str | os.PathLike) -> Path:
    """Write a Hugging Face ``tokenizer.json`` (a directory gets ``tokenizer.json`` inside).

    Pre-tokenization is our regex (``Split``) followed by the byte-to-character step
    (``ByteLevel`` without its own regex); ``ignore_merges`` makes a chunk that is a whole
    token map to it directly, as tiktoken and our encoder do.
    """
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / "tokenizer.json"
    table = bytes_to_unicode()
    vocab = {_token_string(tok.token_bytes(i), table): i for i in sorted(tok._vocab)}
    merges = [
        f"{_token_string(tok.token_bytes(u), table)} {_token_string(tok.token_bytes(v), table)}"
        for u, v, _ in tok.merges
    ]
    added = [
        {
            "id": i,
            "content": s,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for s, i in sorted(tok.special_tokens.items(), key=lambda item: item[1])
    ]
    data = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": tok.pattern}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": vocab,
            "merges": merges,
        },
    }
    atomic_write_json(path, data)
    return path


def read_hf(path: str | os.PathLike) -> TokenizerArgs:
    """Read a byte-level BPE ``tokenizer.json`` as ``export_hf`` writes it (and GPT-2's on the Hub):
    the vocabulary, the merges, the special tokens, and the split regex (GPT-2's when none is given)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        model = data["model"]
        vocab, table = model["vocab"], bytes_to_unicode()
        byte_ids = [vocab[table[b]] for b in range(256)]
        merges = []
        for merge in model["merges"]:
            left, right = merge.split(" ") if isinstance(merge, str) else merge
            merges.append((vocab[left], vocab[right], vocab[left + right]))
        specials = {t["content"]: t["id"] for t in data.get("added_tokens", []) if t.get("special")}
        steps = data.get("pre_tokenizer") or {}
        steps = steps.get("pretokenizers", [steps])
        patterns = [s["pattern"]["Regex"] for s in steps
                    if s.get("type") == "Split" and "Regex" in s.get("pattern", {})]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ScratchLLMError(f"{path} is not a byte-level BPE tokenizer.json this package reads ({err!r})") from err
    return {"merges": merges, "pattern": patterns[0] if patterns else GPT2_PATTERN, "special_tokens": specials,
            "byte_ids": byte_ids}


def read_gpt2_files(
    encoder_json: str | os.PathLike, vocab_bpe: str | os.PathLike, special_tokens: Sequence[str] = ()
) -> TokenizerArgs:
    """Read GPT-2's ``encoder.json`` (token string -> id) and ``vocab.bpe`` (one merge a line)."""
    try:
        encoder = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
        merge_lines = Path(vocab_bpe).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ScratchLLMError(f"cannot read GPT-2 vocabulary files: {err}") from err
    table = bytes_to_unicode()
    try:
        byte_ids = [encoder[table[b]] for b in range(256)]
        merges = []
        for line in merge_lines:
            if line.startswith("#version") or not line.strip():
                continue
            left, right = line.split(" ")
            merges.append((encoder[left], encoder[right], encoder[left + right]))
    except (KeyError, ValueError) as err:
        raise ScratchLLMError(f"{vocab_bpe} and {encoder_json} do not match ({err!r} is missing or malformed)") from err
    if any(t != 256 + i for i, (_, _, t) in enumerate(merges)):
        raise ScratchLLMError(
            "the merge ids in encoder.json do not follow the order of vocab.bpe; unsupported vocabulary"
        )
    known = set(byte_ids) | {t for _, _, t in merges}
    specials = {s: i for s, i in encoder.items() if i not in known}
    first = max(encoder.values()) + 1
    specials.update({s: first + k for k, s in enumerate(s for s in special_tokens if s not in specials)})
    return {"merges": merges, "pattern": GPT2_PATTERN, "special_tokens": specials, "byte_ids": byte_ids}
