"""prepare and open_prepared: shards decode back to the corpus, manifest, dtype, hash checks, CLI."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scratchllm.cli import main
from scratchllm.data import shards
from scratchllm.data.batches import RandomBatches
from scratchllm.data.shards import open_prepared, prepare, token_dtype
from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer import ENDOFTEXT, BPETokenizer


@pytest.fixture
def verdict_cache(tmp_path, verdict_path):
    """A cache pre-filled with the-verdict, as a user without internet would fill it."""
    cache = tmp_path / "cache"
    (cache / "the-verdict").mkdir(parents=True)
    shutil.copy(verdict_path, cache / "the-verdict" / "the-verdict.txt")
    return cache


def test_byte_level_shards_are_the_bytes_of_the_text(tmp_path, verdict_cache, monkeypatch):
    """vocab 256: the 256 bytes + specials, no merges, so the ids must be the UTF-8 bytes (an oracle
    that needs no tokenizer); small jobs force many safe cuts."""
    monkeypatch.setattr(shards, "JOB_CHARS", 1000)
    out = prepare("the-verdict", tmp_path / "data", vocab_size=256, workers=1, cache_dir=verdict_cache)
    data = open_prepared(out)
    text = (verdict_cache / "the-verdict" / "the-verdict.txt").read_text()
    cut = int(len(text) * 0.9)  # nanoGPT's split
    assert data.vocab_size == 258 and len(data.tokenizer.merges) == 0
    assert data.train.dtype == np.uint16
    assert np.array_equal(data.train, np.frombuffer(text[:cut].encode(), np.uint8))
    assert np.array_equal(data.val, np.frombuffer(text[cut:].encode(), np.uint8))


def test_prepare_the_verdict_end_to_end(tmp_path, verdict_cache, monkeypatch):
    monkeypatch.setattr(shards, "JOB_CHARS", 700)
    out = prepare("the-verdict", tmp_path / "data", vocab_size=400, workers=2, cache_dir=verdict_cache)
    data = open_prepared(out, verify=True)
    text = (verdict_cache / "the-verdict" / "the-verdict.txt").read_text()
    cut = int(len(text) * 0.9)
    tok = data.tokenizer
    # Streaming in 700-character jobs over 2 processes gives the ids of encoding each part whole.
    assert data.train.tolist() == tok.encode_ordinary(text[:cut])
    assert tok.decode(data.val.tolist()) == text[cut:]
    assert tok.vocab_size == 400 and data.eot_id == tok.special_tokens[ENDOFTEXT]
    m = data.manifest
    assert m["format_version"] == shards.FORMAT_VERSION and m["dtype"] == "uint16"
    assert m["tokenizer"]["fingerprint"] == BPETokenizer.load(out / "tokenizer").fingerprint()
    assert m["splits"]["train"]["tokens"] == len(data.train) and m["splits"]["val"]["tokens"] == len(data.val)
    assert m["splits"]["train"]["characters"] == cut and m["splits"]["val"]["characters"] == len(text) - cut
    assert m["splits"]["train"]["sha256"] == hashlib.sha256((out / "train.bin").read_bytes()).hexdigest()
    [source] = m["sources"]
    assert source["sha256"] == "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"
    assert source["splits"] == ["train", "val"] and "last 0.1" in m["split_rule"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "data"]  # no temporaries left


def test_documents_are_separated_by_endoftext(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = {
        "a.txt": "First file.\nStory one." + ENDOFTEXT + "\nStory two.\n",
        "b.txt": "Second file, no separator.\n",
        "c.jsonl": "\n".join(json.dumps({"text": t}) for t in ["json doc one", "json doc \u00e9\u00e8 two"]),
        "d.txt": "Fourth.",
        "e.parquet": ["parquet row one", "parquet \u00fc row two"],
    }
    for name, text in texts.items():
        if name.endswith(".parquet"):
            pq.write_table(pa.table({"id": list(range(len(text))), "text": text}), corpus / name)
        else:
            (corpus / name).write_text(text)
    tok = BPETokenizer.train("Story file json doc " * 20, vocab_size=270, progress=False)
    out = prepare(corpus, tmp_path / "data", tokenizer=tok, val_fraction=0.25, workers=1)
    data = open_prepared(out)
    val_files = {s["path"].split("/")[-1] for s in data.manifest["sources"] if s["splits"] == ["val"]}
    assert len(val_files) == 1  # round(5 * 0.25) whole files

    def docs(name):
        if name.endswith(".parquet"):
            return texts[name]
        if name.endswith(".jsonl"):
            return [json.loads(line)["text"] for line in texts[name].splitlines()]
        return texts[name].split(ENDOFTEXT)

    train_docs = [d for name in sorted(texts) if name not in val_files for d in docs(name)]
    val_docs = [d for name in sorted(texts) if name in val_files for d in docs(name)]
    eot = data.eot_id
    assert data.train.tolist() == _join([tok.encode_ordinary(d) for d in train_docs], eot)
    assert tok.decode(data.train.tolist()) == ENDOFTEXT.join(train_docs)
    assert tok.decode(data.val.tolist()) == ENDOFTEXT.join(val_docs)
    assert data.manifest["splits"]["train"]["documents"] == len(train_docs)


def _join(parts: list[list[int]], sep: int) -> list[int]:
    out: list[int] = []
    for i, part in enumerate(parts):
        out += ([sep] if i else []) + part
    return out


def test_token_dtype_fits_the_vocabulary(tmp_path):
    assert token_dtype(256) == np.uint16 and token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    (tmp_path / "t.txt").write_text("hello world\n" * 30)
    big = BPETokenizer([], pattern="gpt2", special_tokens={ENDOFTEXT: 70_000})  # ids up to 70,000 need uint32
    data = open_prepared(prepare(tmp_path / "t.txt", tmp_path / "data", tokenizer=big, workers=1))
    assert data.train.dtype == np.uint32 and data.manifest["dtype"] == "uint32"
    assert (tmp_path / "data" / "train.bin").stat().st_size == 4 * len(data.train)
    assert bytes(data.train.astype(np.uint8)) == ("hello world\n" * 30)[:324].encode()


def test_a_different_tokenizer_is_refused_with_both_hashes(tmp_path, verdict_cache):
    out = prepare("the-verdict", tmp_path / "data", vocab_size=300, workers=1, cache_dir=verdict_cache)
    other = BPETokenizer.train("something else entirely " * 30, vocab_size=270, progress=False)
    good = open_prepared(out).tokenizer.fingerprint()
    with pytest.raises(ScratchLLMError) as err:
        open_prepared(out, tokenizer=other)
    assert good in str(err.value) and other.fingerprint() in str(err.value) and "scratchllm prepare" in str(err.value)
    other.save(out / "tokenizer", force=True)  # someone swapped the tokenizer inside the folder
    with pytest.raises(ScratchLLMError, match=other.fingerprint()):
        open_prepared(out)


def test_damaged_folders_are_named(tmp_path, verdict_cache):
    with pytest.raises(ScratchLLMError, match="not a prepared data folder"):
        open_prepared(tmp_path)
    out = prepare("the-verdict", tmp_path / "data", vocab_size=300, workers=1, cache_dir=verdict_cache)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["splits"]["val"]["tokens"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ScratchLLMError, match="manifest.json is incomplete or damaged.*re-run `scratchllm prepare"):
        open_prepared(out)
    out = prepare("the-verdict", out, vocab_size=300, workers=1, cache_dir=verdict_cache)  # the fix works
    with open(out / "val.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ScratchLLMError, match="val.bin is 100 bytes"):
        open_prepared(out)


def test_prepare_never_replaces_a_foreign_folder_and_failures_keep_the_old_output(tmp_path, verdict_cache):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(ScratchLLMError, match="not a prepared data folder"):
        prepare("the-verdict", precious, vocab_size=300, cache_dir=verdict_cache)
    assert (precious / "thesis.tex").read_text() == "years of work"

    out = prepare("the-verdict", tmp_path / "data", vocab_size=300, workers=1, cache_dir=verdict_cache)
    before = (out / "train.bin").read_bytes()
    corpus = tmp_path / "broken"
    corpus.mkdir()
    (corpus / "a.txt").write_text("fine text\n" * 10)
    (corpus / "b.jsonl").write_text('{"text": "ok"}\n{"oops": 1}\n')  # fails while encoding
    with pytest.raises(ScratchLLMError, match="line 2"):
        prepare(corpus, out, tokenizer=out / "tokenizer", workers=1)
    assert (out / "train.bin").read_bytes() == before and open_prepared(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "cache", "data", "home"]


def test_corpus_smaller_than_a_window_is_a_clear_error(tmp_path):
    (tmp_path / "tiny.txt").write_text("just a few words here\n")
    data = open_prepared(prepare(tmp_path / "tiny.txt", tmp_path / "data", vocab_size=256, workers=1))
    n = len(data.val)
    with pytest.raises(ScratchLLMError, match=f"has {n} tokens but one window of context 64 needs 65"):
        RandomBatches(data.val, 4, 64, name="the validation split")


def _cli(capsys, *args):
    code = main(["prepare", *map(str, args)])
    return code, capsys.readouterr()


def test_cli_prepare_and_its_exit_codes(tmp_path, verdict_cache, capsys):
    code, io = _cli(capsys, "--corpus", "the-verdict", "--cache-dir", verdict_cache, "--vocab-size", 300,
                    "--workers", 1, "--out", tmp_path / "data")
    assert code == 0 and "train" in io.out and open_prepared(tmp_path / "data").vocab_size == 300
    for bad, message in [
        (["--corpus", "the-verdikt"], "neither a named corpus"),
        (["--corpus", "the-verdict", "--val-fraction", "1.5"], "--val-fraction"),
        (["--corpus", "the-verdict", "--vocab-size", "100"], "too small"),
        (["--corpus", "the-verdict", "--tokenizer", tmp_path / "nope"], "nope"),
    ]:
        code, io = _cli(capsys, *bad, "--cache-dir", verdict_cache, "--workers", 1, "--out", tmp_path / "d2")
        assert code == 2, bad
        assert message in io.err and io.err.startswith("scratchllm: error:") and io.err.count("\n") == 1
    assert not (tmp_path / "d2").exists()
