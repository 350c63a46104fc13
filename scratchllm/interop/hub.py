"""Pretrained GPT-2 weights by name, from the Hugging Face Hub.

``gpt2``, ``gpt2-medium``, ``gpt2-large`` and ``gpt2-xl`` are OpenAI's four GPT-2 sizes (the
repositories ``openai-community/<name>``); any other ``owner/name`` is a repository of the same
architecture. The files are downloaded by ``huggingface_hub`` into its own cache (with its
progress bars; ``HF_HOME`` moves it, ``HF_ENDPOINT`` points at a mirror) and read by
``load_hf_gpt2``: ``config.json``, ``model.safetensors`` and the tokenizer (``vocab.json`` +
``merges.txt``, GPT-2's own files, or else ``tokenizer.json``). Pickled weights are never
fetched. Without internet, one line says which files to put in which folder, and that folder can
be passed to ``scratchllm convert --from-hf DIR`` instead.

>>> repo_id("gpt2-medium"), repo_id("someone/tiny-gpt2")
('openai-community/gpt2-medium', 'someone/tiny-gpt2')
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchLLMError, did_you_mean
from scratchllm.interop.hf_gpt2 import CONFIG, WEIGHTS, load_hf_gpt2

GPT2_SIZES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
TOKENIZER_FILES = (("vocab.json", "merges.txt"), ("tokenizer.json",))  # either set, in this order


def repo_id(name: str) -> str:
    """The Hub repository of a model name: one of ``GPT2_SIZES`` or ``owner/name``."""
    if name in GPT2_SIZES:
        return f"openai-community/{name}"
    if name.count("/") == 1 and all(name.split("/")):
        return name
    raise ScratchLLMError(f"unknown model {name!r}{did_you_mean(name, GPT2_SIZES)}; give one of "
                          f"{', '.join(GPT2_SIZES)} or a Hub repository owner/name")


def download_model(name: str, revision: str | None = None) -> Path:
    """The local folder of ``name``'s files, downloaded into the Hub cache on first use."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RemoteEntryNotFoundError

    repo = repo_id(name)
    endpoint = os.environ.get("HF_ENDPOINT") or None  # read at call time, not when huggingface_hub was imported
    hint = (f"without internet, put {CONFIG}, {WEIGHTS}, vocab.json and merges.txt of https://huggingface.co/{repo} "
            f"in a folder DIR and run `scratchllm convert --from-hf DIR --out CKPT`, then pass --checkpoint CKPT")

    def fetch(filename: str) -> Path:
        return Path(hf_hub_download(repo, filename, revision=revision, endpoint=endpoint))

    try:
        folder = fetch(CONFIG).parent
        fetch(WEIGHTS)
        for files in TOKENIZER_FILES:  # GPT-2's own vocabulary files, else tokenizer.json
            try:
                for filename in files:
                    fetch(filename)
                break
            except RemoteEntryNotFoundError:
                continue
    except LocalEntryNotFoundError:  # (before its base class) offline, and not in the cache
        raise ScratchLLMError(f"cannot download {repo} from the Hugging Face Hub (no connection); {hint}") from None
    except RemoteEntryNotFoundError as err:
        raise ScratchLLMError(f"{repo} has no {_missing(err)}: a GPT-2 repository here needs {CONFIG} and "
                              f"{WEIGHTS} (pickled weights are never loaded)") from None
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        why = "not found, or private" if status in (401, 403, 404) else f"HTTP {status}"
        raise ScratchLLMError(f"cannot download {repo} from the Hugging Face Hub ({why}); {hint}") from None
    except OSError as err:  # a connection refused or reset on the way
        raise ScratchLLMError(f"cannot download {repo} from the Hugging Face Hub ({err}); {hint}") from None
    return folder


def _missing(err: Exception) -> str:
    text = str(err)
    for name in (CONFIG, WEIGHTS):
        if name in text:
            return name
    return f"{CONFIG} or {WEIGHTS}"


def hf_tokenizer(folder: str | os.PathLike) -> Any:
    """The tokenizer of a Hugging Face GPT-2 folder (``tokenizer.json``, else ``vocab.json`` +
    ``merges.txt``), or ``None`` when it has neither."""
    from scratchllm.tokenizer import BPETokenizer

    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():  # what --to-hf writes: its split pattern and special tokens too
        return BPETokenizer.from_hf(folder / "tokenizer.json")
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return BPETokenizer.from_gpt2_files(folder / "vocab.json", folder / "merges.txt")
    return None


def load_pretrained(name: str, revision: str | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a pretrained GPT-2 by name (downloaded once)."""
    folder = download_model(name, revision)
    return load_hf_gpt2(folder), hf_tokenizer(folder)
