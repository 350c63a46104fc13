"""Instruction and preference records: read from JSON or JSON-lines files, or the book's own data
files by name, and split as the book splits them.

A file is a JSON array of records (the book's ``instruction-data.json``) or one record per line
(``.jsonl``). An instruction record is ``{instruction, input, output}`` (the book's format) or
``{messages: [...]}`` (see ``scratchllm.finetune.templates``); a preference record adds
``chosen`` and ``rejected`` responses (the book's ``instruction-data-with-preference.json``).
Errors name the file and the record (line, for JSON lines).

The book's files are fetched once by their canonical URLs into ``CACHE/book/`` and checked
against their sha256 (``book-instructions``, ``book-preferences``); without internet the error
names the file to put there.

>>> import tempfile, pathlib, json
>>> path = pathlib.Path(tempfile.mkdtemp()) / "tasks.json"
>>> _ = path.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hi."}]), encoding="utf-8")
>>> read_records(path)
[('tasks.json record 1', {'instruction': 'Say hi.', 'input': '', 'output': 'Hi.'})]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scratchllm.data.corpora import RemoteFile, cache_root, download
from scratchllm.errors import ScratchLLMError
from scratchllm.fileio import iter_jsonl, read_json

Record = dict[str, Any]
Located = tuple[str, Record]  # (where it is: "FILE:LINE" or "FILE record N", the record)

_BOOK = "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07"
BOOK_FILES: dict[str, RemoteFile] = {
    "book-instructions": RemoteFile(
        "instruction-data.json", f"{_BOOK}/01_main-chapter-code/instruction-data.json",
        "7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944", 203524),
    "book-preferences": RemoteFile(
        "instruction-data-with-preference.json", f"{_BOOK}/04_preference-tuning-with-dpo/"
        "instruction-data-with-preference.json",
        "305315abf14f65fa42c01a0877572f832606571c2a7d49f152ac1d758b16756e", 386968),
}


def book_file(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The book's data file ``name`` (a key of ``BOOK_FILES``), downloaded once into ``CACHE/book/``."""
    remote = BOOK_FILES[name]
    return download(remote.url, cache_root(cache_dir) / "book" / remote.filename, remote.sha256, remote.size)


def read_records(path: str | os.PathLike) -> list[Located]:
    """The records of a ``.json`` (an array) or ``.jsonl`` file (one per line), each with where it is."""
    path = Path(path)
    if not path.is_file():
        raise ScratchLLMError(f"{path} not found")
    if path.suffix.lower() == ".jsonl":
        located = [(f"{path.name}:{line}", record) for line, record in iter_jsonl(path)]
    else:
        data = read_json(path, "give a JSON array of records, or a .jsonl file of one record per line")
        if not isinstance(data, list):
            raise ScratchLLMError(f"{path} holds a JSON {type(data).__name__}, not an array of records; give a list "
                                  "of records, or a .jsonl file of one record per line")
        located = [(f"{path.name} record {i + 1}", record) for i, record in enumerate(data)]
    if not located:
        raise ScratchLLMError(f"{path} holds no records")
    for where, record in located:
        if not isinstance(record, dict):
            raise ScratchLLMError(f"{where}: a JSON object was expected, got {type(record).__name__}")
    return located


def load_records(data: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> list[Located]:
    """The records of a file, or of one of the book's files by name (fetched into the cache)."""
    if str(data) in BOOK_FILES:
        return read_records(book_file(str(data), cache_dir))
    return read_records(data)


def book_split(records: Sequence[Any], fractions: tuple[float, float] = (0.85, 0.10)) -> tuple[list, list, list]:
    """Train / validation / test in file order, as the book cuts them: the first 85% train, the next
    10% test, the rest validation (1,100 records: 935, 55, 110).

    >>> [len(part) for part in book_split(list(range(1100)))]
    [935, 55, 110]
    """
    n_train, n_test = int(len(records) * fractions[0]), int(len(records) * fractions[1])
    train, test, val = records[:n_train], records[n_train:n_train + n_test], records[n_train + n_test:]
    if not train or not val or not test:
        raise ScratchLLMError(f"{len(records)} records are too few to split into train, validation and test "
                              "(the book's 85% / 5% / 10%)")
    return list(train), list(val), list(test)
