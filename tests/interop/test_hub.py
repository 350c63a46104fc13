"""Pretrained weights by name through huggingface_hub, offline: a loopback server in the Hub's URL
layout (HF_ENDPOINT) serves a small random GPT-2 that transformers makes here; the loaded model
gives transformers' logits, the cache is reused, and no connection is one line naming the files."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from scratchllm.cli import main
from scratchllm.errors import ScratchLLMError
from scratchllm.interop.hub import load_pretrained, repo_id

transformers = pytest.importorskip("transformers")
huggingface_hub = pytest.importorskip("huggingface_hub")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """``/{owner}/{name}/resolve/{revision}/{file}`` for the repositories given (repo id -> folder)."""

    def __init__(self, repos: dict[str, Path]):
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, body: bool):
                outer.requests.append(f"{self.command} {self.path}")
                parts = self.path.split("?")[0].strip("/").split("/")
                repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
                if len(parts) < 5 or parts[2] != "resolve" or repo not in repos:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "RepoNotFound")
                    self.end_headers()
                    return
                path = repos[repo] / filename
                if not path.is_file():
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.end_headers()
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hub(tmp_path, gpt2_files, monkeypatch):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50257, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    reference = transformers.GPT2LMHeadModel(config).eval()
    folder = tmp_path / "repo"
    reference.save_pretrained(folder, safe_serialization=True)
    shutil.copy(gpt2_files[0], folder / "vocab.json")  # GPT-2's encoder.json is the Hub's vocab.json
    shutil.copy(gpt2_files[1], folder / "merges.txt")
    server = FakeHub({"someone/tiny-gpt2": folder})
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    server.reference = reference
    yield server
    server.close()


def test_a_model_by_name_loads_with_transformers_logits_and_the_cache_is_reused(hub):
    model, tokenizer = load_pretrained("someone/tiny-gpt2")
    ids = torch.tensor([tokenizer.encode("Hello, world! This is a test.")])
    assert ids.tolist()[0][:4] == [15496, 11, 995, 0]  # GPT-2's own ids, from its vocabulary files
    with torch.no_grad():
        assert torch.allclose(model(ids), hub.reference(ids).logits, atol=1e-5)
    fetched = len(hub.requests)
    load_pretrained("someone/tiny-gpt2")
    assert all(r.startswith("HEAD") for r in hub.requests[fetched:])  # only checks, nothing downloaded again


def test_convert_and_eval_take_the_name(hub, tmp_path, capsys):
    assert main(["convert", "--from-hf", "someone/tiny-gpt2", "--out", str(tmp_path / "ckpt")]) == 0
    assert "with its tokenizer" in capsys.readouterr().out
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20, encoding="utf-8")
    assert main(["eval", "--model", "someone/tiny-gpt2", "--corpus", str(text), "--split", "all", "--json"]) == 0
    by_name = json.loads(capsys.readouterr().out)
    assert main(["eval", "--checkpoint", str(tmp_path / "ckpt"), "--corpus", str(text), "--split", "all",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == by_name


def test_a_missing_repository_or_file_is_one_line(hub, tmp_path):
    with pytest.raises(ScratchLLMError, match=r"cannot download someone/other from the Hugging Face Hub \(not found"):
        load_pretrained("someone/other")
    (tmp_path / "repo" / "model.safetensors").unlink()
    with pytest.raises(ScratchLLMError, match="someone/tiny-gpt2 has no model.safetensors"):
        load_pretrained("someone/tiny-gpt2")


def test_without_a_connection_one_line_says_which_files_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    with pytest.raises(ScratchLLMError) as err:
        load_pretrained("gpt2")
    message = str(err.value)
    assert message.startswith("cannot download openai-community/gpt2 from the Hugging Face Hub")
    assert "put config.json, model.safetensors, vocab.json and merges.txt of https://huggingface.co/" \
           "openai-community/gpt2 in a folder DIR and run `scratchllm convert --from-hf DIR" in message
    assert "\n" not in message


def test_names():
    assert repo_id("gpt2") == "openai-community/gpt2"
    with pytest.raises(ScratchLLMError, match="unknown model 'gpt2-mediun'; did you mean 'gpt2-medium'"):
        repo_id("gpt2-mediun")
