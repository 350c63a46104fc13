"""Quantized checkpoints: safetensors of integers and scales plus JSON, loaded without building the
float weights, and working where a checkpoint works: load_checkpoint, generate, eval, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from scratchllm.checkpoint import load_checkpoint, save_checkpoint
from scratchllm.cli import main
from scratchllm.compress.quantize_model import quantize_model, set_kernel
from scratchllm.generate import generate
from scratchllm.model import GPT, GPTConfig
from scratchllm.tokenizer import BPETokenizer

TEXT = "It had always been his fate to have women say such things of him; the fact should be set down. " * 40


@pytest.fixture(scope="module")
def tokenizer():
    return BPETokenizer.train(TEXT, vocab_size=300, progress=False)


@pytest.fixture
def float_checkpoint(tmp_path, tokenizer):
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, tie_embeddings=True))
    return save_checkpoint(tmp_path / "fp32", model, tokenizer), model


@pytest.mark.parametrize("bits,group_size", [(8, None), (4, 32)])
def test_a_quantized_checkpoint_stores_integers_and_loads_the_same_model(tmp_path, float_checkpoint, tokenizer,
                                                                         bits, group_size):
    path, model = float_checkpoint
    quantize_model(model, bits, group_size)
    saved = save_checkpoint(tmp_path / "q", model, tokenizer)
    tensors = load_file(saved / "model.safetensors")
    qkv = tensors["trf_blocks.0.att.W_qkv.q"]
    assert qkv.dtype == (torch.int8 if bits == 8 else torch.uint8)
    assert qkv.shape == ((192, 64) if bits == 8 else (192, 32))  # int4: two codes a byte
    assert tensors["out_head.q"].shape[0] == tokenizer.vocab_size and "tok_emb.weight" not in tensors
    floats = {name for name, t in tensors.items() if t.is_floating_point() and t.dim() == 2}
    assert floats - {n for n in floats if n.endswith(".scales")} == {"pos_emb.weight"}  # no other float matrix
    fp32_bytes = (path / "model.safetensors").stat().st_size
    assert (saved / "model.safetensors").stat().st_size < (0.35 if bits == 8 else 0.25) * fp32_bytes
    config = json.loads((saved / "config.json").read_text())
    assert config["quantization"]["bits"] == bits and config["quantization"]["embedding"] == "tied"

    loaded, loaded_tokenizer = load_checkpoint(saved)
    assert loaded_tokenizer.fingerprint() == tokenizer.fingerprint()
    idx = torch.randint(0, tokenizer.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    for kernel in ("dequantize", "auto"):
        set_kernel(model, kernel)
        set_kernel(loaded, kernel)
        with torch.no_grad():
            assert torch.equal(loaded(idx), model(idx))
    # the engine runs on it: cached greedy decoding equals the uncached recompute (exact weights path)
    set_kernel(loaded, "dequantize")
    assert torch.equal(generate(loaded, idx[:1, :5], 12), generate(loaded, idx[:1, :5], 12, use_cache=False))


def test_loading_never_builds_the_float_weights(tmp_path, float_checkpoint, tokenizer, monkeypatch):
    _, model = float_checkpoint
    quantize_model(model, 4, 32)
    saved = save_checkpoint(tmp_path / "q", model, tokenizer)
    devices = []
    original = nn.init.normal_

    def spy(tensor, *args, **kwargs):  # GPT.init_weights draws every linear's weights with it
        devices.append(tensor.device.type)
        return original(tensor, *args, **kwargs)

    monkeypatch.setattr(nn.init, "normal_", spy)
    loaded, _ = load_checkpoint(saved)
    assert devices and set(devices) == {"meta"}  # built on the meta device: nothing allocated, nothing drawn
    assert all(t.device.type == "cpu" for t in (*loaded.parameters(), *loaded.buffers()))
    load_checkpoint(tmp_path / "fp32")  # a float checkpoint still builds its weights for real
    assert "cpu" in devices


def _cli(*args: str) -> int:
    return main([str(a) for a in args])


def test_quantize_generate_and_eval_from_the_command_line(tmp_path, float_checkpoint, capsys):
    path, _ = float_checkpoint
    corpus = tmp_path / "text.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    assert _cli("quantize", "--checkpoint", path, "--bits", "4", "--group-size", "32", "--out", tmp_path / "q4",
                "--quiet") == 0
    assert "int4, groups of 32, rtn, 9 linear layers, token table tied" in capsys.readouterr().out
    assert _cli("generate", "--checkpoint", tmp_path / "q4", "--prompt", "It had", "--max-new-tokens", "8",
                "--seed", "1") == 0
    assert capsys.readouterr().out.startswith("It had")
    scores = {}
    for name in ("fp32", "q4"):
        assert _cli("eval", "--checkpoint", tmp_path / name, "--corpus", corpus, "--split", "all", "--json") == 0
        scores[name] = json.loads(capsys.readouterr().out)
    assert scores["q4"]["tokens"] == scores["fp32"]["tokens"]
    assert scores["q4"]["bits_per_byte"] != scores["fp32"]["bits_per_byte"]
    assert abs(scores["q4"]["bits_per_byte"] / scores["fp32"]["bits_per_byte"] - 1) < 0.05
    assert _cli("quantize", "--checkpoint", path, "--bits", "8", "--method", "gptq", "--calibration", corpus,
                "--calibration-windows", "8", "--batch-size", "4", "--out", tmp_path / "g8", "--quiet") == 0
    record = json.loads((tmp_path / "g8" / "config.json").read_text())["quantization"]
    assert record["layers"]["trf_blocks.1.ff.fc_in"] == "gptq"


@pytest.mark.parametrize("args,message", [
    (["--bits", "8", "--out", "{t}/again"], "the model is already quantized (int4, group size 32)"),
    (["--bits", "8", "--group-size", "64", "--out", "{t}/x"], "int8 has one scale per output channel"),
    (["--bits", "4", "--method", "gptq", "--out", "{t}/x"], "--method gptq needs calibration text"),
    (["--bits", "4", "--method", "awq", "--out", "{t}/x"], "--method awq needs calibration text"),
    (["--bits", "4", "--method", "gptq", "--calibration", "{t}/text.txt", "--calibration-windows", "2", "--out",
      "{t}/x"], "fewer than one batch of 8"),
    (["--bits", "4", "--out", "{t}/q4"], "would replace the checkpoint being quantized"),
])
def test_bad_quantize_requests_are_one_line_errors(tmp_path, float_checkpoint, capsys, args, message):
    path, _ = float_checkpoint
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    assert _cli("quantize", "--checkpoint", path, "--bits", "4", "--group-size", "32", "--out", tmp_path / "q4",
                "--quiet") == 0
    capsys.readouterr()
    assert _cli("quantize", "--checkpoint", tmp_path / "q4", *[a.format(t=tmp_path) for a in args], "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
