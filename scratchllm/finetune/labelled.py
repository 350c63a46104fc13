"""Labelled texts for classification: read them from CSV, TSV or JSONL, split them, balance them,
and fetch the book's SMS Spam Collection.

A file holds one example per row (line, for JSONL) with a text column and a label column, named
``text`` and ``label`` unless told otherwise. CSV and TSV files start with a header row, unless
``columns`` names the columns of a file that has none (UCI's ``SMSSpamCollection`` is TSV without a
header, ``label<TAB>text``). TSV is read without quote handling: SMS texts hold stray quotes.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "reviews.csv"
>>> _ = path.write_text('text,label\\n"good, really",pos\\nbad,neg\\n', encoding="utf-8")
>>> read_labelled(path)
[('good, really', 'pos'), ('bad', 'neg')]
"""

from __future__ import annotations

import csv
import os
import random
import zipfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from scratchllm.data.corpora import cache_root, download
from scratchllm.errors import ScratchLLMError
from scratchllm.fileio import atomic_path, iter_jsonl

Example = tuple[str, str]  # (text, label)

SMS_SPAM = "sms-spam"
# UCI's canonical address of the book's data set. UCI publishes no checksum and none could be taken
# here (no internet), so the zip is not sha256-pinned; instead the extracted file's every line is
# checked to be "ham|spam<TAB>text" (sms_spam_file).
SMS_SPAM_URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
SMS_SPAM_MEMBER = "SMSSpamCollection"
SMS_SPAM_COLUMNS = ("label", "text")
SMS_SPAM_LABELS = ("ham", "spam")


def read_labelled(path: str | os.PathLike, *, text_column: str = "text", label_column: str = "label",
                  columns: Sequence[str] | None = None) -> list[Example]:
    """The ``(text, label)`` examples of a ``.csv``, ``.tsv`` (or ``.txt``) or ``.jsonl`` file, in file order.

    ``columns`` names the columns of a CSV/TSV file without a header row. Errors are one line
    naming the file (and the line, for a malformed record).
    """
    path = Path(path)
    if not path.is_file():
        raise ScratchLLMError(f"{path} not found")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows, names = _jsonl_rows(path)
    else:
        delimiter = "," if suffix == ".csv" else "\t"
        rows, names = _table_rows(path, delimiter, columns)
    if not rows:
        raise ScratchLLMError(f"{path} holds no examples")
    for wanted in (text_column, label_column):
        if wanted not in names:
            raise ScratchLLMError(f"{path} has no column '{wanted}' (it has: {', '.join(sorted(names))}); "
                                  "name the columns with --text-column and --label-column")
    examples = []
    for line, row in rows:
        text, label = row.get(text_column), row.get(label_column)
        if text is None or label is None or str(label).strip() == "":
            raise ScratchLLMError(f"{path}:{line}: the record has no {text_column if text is None else label_column}")
        examples.append((str(text), str(label).strip()))
    return examples


def _jsonl_rows(path: Path) -> tuple[list[tuple[int, dict]], set[str]]:
    rows, names = [], set()
    for line_no, record in iter_jsonl(path):
        if not isinstance(record, dict):
            raise ScratchLLMError(f"{path}:{line_no}: a JSON object was expected, got {type(record).__name__}")
        rows.append((line_no, record))
        names.update(record)
    return rows, names


def _table_rows(path: Path, delimiter: str, columns: Sequence[str] | None) -> tuple[list[tuple[int, dict]], set[str]]:
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        names = list(columns) if columns is not None else next(reader, [])
        rows = []
        try:
            for cells in reader:
                if not cells:
                    continue
                if len(cells) != len(names):
                    raise ScratchLLMError(f"{path}:{reader.line_num}: {len(cells)} fields where the "
                                          f"{'columns' if columns else 'header'} name {len(names)}")
                rows.append((reader.line_num, dict(zip(names, cells, strict=True))))
        except csv.Error as err:
            raise ScratchLLMError(f"{path}:{reader.line_num}: {err}") from None
    return rows, set(names)


def label_names(examples: Sequence[Example], source: str = "the data") -> list[str]:
    """The sorted label names (class id = index); fewer than two classes is an error.

    >>> label_names([("a", "spam"), ("b", "ham"), ("c", "spam")])
    ['ham', 'spam']
    """
    names = sorted({label for _, label in examples})
    if len(names) < 2:
        raise ScratchLLMError(f"{source} has {len(names)} class{'es' if len(names) != 1 else ''} "
                              f"({', '.join(names) or 'none'}); a classifier needs at least two")
    return names


def balance(examples: Sequence[Example], seed: int = 123) -> list[Example]:
    """As many examples of each class as the rarest has, drawn at random (the book's 747 ham + 747
    spam); the result keeps file order.

    >>> balance([("a", "x"), ("b", "x"), ("c", "y")], seed=0)
    [('b', 'x'), ('c', 'y')]
    """
    counts = Counter(label for _, label in examples)
    rarest = min(counts.values())
    rng = random.Random(seed)
    kept: set[int] = set()
    for label in sorted(counts):
        rows = [i for i, (_, lab) in enumerate(examples) if lab == label]
        kept.update(rng.sample(rows, rarest))
    return [ex for i, ex in enumerate(examples) if i in kept]


def split_examples(examples: Sequence[Example], fractions: tuple[float, float] = (0.7, 0.1),
                   seed: int = 123) -> tuple[list[Example], list[Example], list[Example]]:
    """Shuffle with ``seed`` and cut into train / validation / test (the book: 70% / 10% / the rest).

    >>> [len(part) for part in split_examples([("t", "a")] * 10)]
    [7, 1, 2]
    """
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    n_train, n_val = int(len(shuffled) * fractions[0]), int(len(shuffled) * fractions[1])
    train, val, test = shuffled[:n_train], shuffled[n_train:n_train + n_val], shuffled[n_train + n_val:]
    if not train or not val or not test:
        raise ScratchLLMError(f"{len(shuffled)} examples are too few to split into train, validation and test")
    return train, val, test


def sms_spam_file(cache_dir: str | os.PathLike | None = None) -> Path:
    """UCI's ``SMSSpamCollection``, downloaded once into ``CACHE/sms-spam/`` and extracted there."""
    root = cache_root(cache_dir) / SMS_SPAM
    extracted = root / SMS_SPAM_MEMBER
    if not extracted.is_file():
        archive = download(SMS_SPAM_URL, root / "sms+spam+collection.zip")
        try:
            with zipfile.ZipFile(archive) as zf, atomic_path(extracted) as tmp:
                tmp.write_bytes(zf.read(SMS_SPAM_MEMBER))
        except (zipfile.BadZipFile, KeyError) as err:
            raise ScratchLLMError(f"{archive} is not UCI's SMS Spam Collection zip ({err}): delete it to download "
                                  "it again") from None
    _check_sms_lines(extracted)
    return extracted


def _check_sms_lines(path: Path) -> None:
    """Every line must be ``ham<TAB>text`` or ``spam<TAB>text`` (there is no checksum to compare)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, 1):
            label, tab, _ = line.partition("\t")
            if label not in SMS_SPAM_LABELS or not tab:
                raise ScratchLLMError(f"{path}:{line_no} is not 'ham|spam<TAB>text'; this is not UCI's "
                                      "SMSSpamCollection: delete it (and the zip beside it) to download it again")


def load_examples(data: str | os.PathLike, *, text_column: str = "text", label_column: str = "label",
                  columns: Sequence[str] | None = None, cache_dir: str | os.PathLike | None = None) -> list[Example]:
    """The examples of a file, or of the named data set ``sms-spam`` (fetched into the cache)."""
    if str(data) == SMS_SPAM:
        return read_labelled(sms_spam_file(cache_dir), columns=SMS_SPAM_COLUMNS)
    return read_labelled(data, text_column=text_column, label_column=label_column, columns=columns)
