"""Pretrained weights by name through huggingface_hub, offline: a loopback server in the Hub's URL
layout (HF_ENDPOINT) serves a small random GPT-2 that transformers makes here; the loaded model
gives transformers' logits, the cache is reused, and no connection is one line naming the files."""

from __future__ import annotations

import json

import pytest
import torch
from fake_hub import tiny_gpt2_hub

from scratchllm.cli import main
from scratchllm.errors import ScratchLLMError
from scratchllm.interop.hub import load_pretrained, repo_id

transformers = pytest.importorskip("transformers")
huggingface_hub = pytest.importorskip("huggingface_hub")


@pytest.fixture
def hub(tmp_path, gpt2_files, monkeypatch):
    server = tiny_gpt2_hub(tmp_path, gpt2_files)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
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
