"""GGUF export: read back with llama.cpp's own ``gguf`` package, every tensor and the vocabulary equal;
q8_0 byte for byte equal to the package's quantizer; GPT-2's real vocabulary written as llama.cpp's
converter writes it (encoder.json's strings by id, vocab.bpe's merges); models llama.cpp's gpt2 graph
cannot run refused naming the part. With llama-cpp-python installed (opt-in), llama.cpp's logits
equal ours."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scratchllm.checkpoint import save_checkpoint
from scratchllm.cli import main
from scratchllm.errors import ScratchLLMError
from scratchllm.interop.gguf import dequantize_q8_0, gguf_vocabulary, quantize_q8_0, read_gguf, save_gguf
from scratchllm.model import GPT, GPTConfig
from scratchllm.tokenizer import BPETokenizer
from scratchllm.tokenizer.formats import bytes_to_unicode

gguf = pytest.importorskip("gguf")
TEXT = "Hello, world! The café's naïve 🤖 said:\n\n  ok 12345"


@pytest.fixture(scope="module")
def tokenizer(verdict_path) -> BPETokenizer:
    return BPETokenizer.train(verdict_path.read_text(encoding="utf-8"), vocab_size=300, pattern="gpt2",
                              progress=False)


def _model(vocab_size: int, **overrides) -> GPT:
    torch.manual_seed(0)
    settings = {"vocab_size": vocab_size, "context_length": 32, "d_model": 64, "n_heads": 4, "n_layers": 2,
                "dropout": 0.0, "qkv_bias": False, "gelu": "tanh", **overrides}
    model = GPT(GPTConfig(**settings)).eval()
    with torch.no_grad():  # non-zero biases and norms, so that a misplaced one shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _q8_0_error(back: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """How far each weight's round trip lies beyond half a step, d / 2, plus what storing d in float16
    can add (|q| <= 127 times d's rounding): <= 0 everywhere for a correct q8_0."""
    blocks = weight.float().reshape(-1, 32)
    d = blocks.abs().amax(dim=1, keepdim=True) / 127
    bound = d / 2 + 127 * (d.half().float() - d).abs() + 1e-6
    return (back.reshape(-1, 32) - blocks).abs() - bound


def test_q8_0_is_the_gguf_packages_quantizer_byte_for_byte():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(16, 96, generator=gen)
    weight[0, :32] = 0.0  # an all-zero block
    weight[1, :32] = torch.arange(32) - 15.5  # halves after scaling: roundf goes away from zero
    weight[1, 0] = 127.0
    ours = quantize_q8_0(weight)
    theirs = gguf.quants.quantize(weight.numpy(), gguf.GGMLQuantizationType.Q8_0)
    assert ours.dtype == np.uint8 and ours.shape == theirs.shape == (16, 3 * 34)
    assert np.array_equal(ours, theirs)
    back = dequantize_q8_0(ours, 96)
    assert np.array_equal(back.numpy(), gguf.quants.dequantize(theirs, gguf.GGMLQuantizationType.Q8_0))
    assert (_q8_0_error(back, weight) <= 0).all()
    assert back[1, :5].tolist() == [127.0, -15.0, -14.0, -13.0, -12.0]  # -14.5 -> -15, away from zero


def test_gpt2s_vocabulary_is_written_as_llama_cpps_converter_writes_it(gpt2_files):
    encoder_json, vocab_bpe = gpt2_files
    tok = BPETokenizer.from_gpt2_files(encoder_json, vocab_bpe, special_tokens=["<|endoftext|>"])
    tokens, types, merges = gguf_vocabulary(tok, 50260)  # padded to 50260 rows
    encoder = json.loads(encoder_json.read_text(encoding="utf-8"))
    assert tokens[:50257] == sorted(encoder, key=encoder.get)  # the HF vocabulary's strings, id by id
    assert tokens[50257:] == ["[PAD50257]", "[PAD50258]", "[PAD50259]"]
    assert types[50256] == gguf.TokenType.CONTROL and types[50257] == gguf.TokenType.UNUSED
    assert set(types[:50256]) == {gguf.TokenType.NORMAL}
    lines = [line for line in vocab_bpe.read_text(encoding="utf-8").splitlines()
             if line and not line.startswith("#version")]
    assert merges == lines


@pytest.mark.parametrize("file_type", ["f32", "f16", "q8_0"])
def test_every_tensor_and_the_vocabulary_read_back_equal(tmp_path, tokenizer, file_type):
    model = _model(tokenizer.vocab_size + 4, tie_embeddings=False)  # 4 unused rows; a head of its own
    path = save_gguf(model, tmp_path / "m.gguf", tokenizer, file_type)
    back = read_gguf(path)
    state = model.state_dict()
    expected = {"token_embd.weight": state["tok_emb.weight"], "position_embd.weight": state["pos_emb.weight"],
                "output_norm.weight": state["final_norm.scale"], "output_norm.bias": state["final_norm.shift"],
                "output.weight": state["out_head.weight"]}
    for i in range(2):
        b = f"trf_blocks.{i}."
        expected |= {
            f"blk.{i}.attn_norm.weight": state[b + "norm1.scale"], f"blk.{i}.attn_norm.bias": state[b + "norm1.shift"],
            f"blk.{i}.attn_qkv.weight": state[b + "att.W_qkv.weight"],
            f"blk.{i}.attn_qkv.bias": torch.zeros(3 * 64),  # the book's Q/K/V have none: zeros, the same function
            f"blk.{i}.attn_output.weight": state[b + "att.out_proj.weight"],
            f"blk.{i}.attn_output.bias": state[b + "att.out_proj.bias"],
            f"blk.{i}.ffn_norm.weight": state[b + "norm2.scale"], f"blk.{i}.ffn_norm.bias": state[b + "norm2.shift"],
            f"blk.{i}.ffn_up.weight": state[b + "ff.fc_in.weight"], f"blk.{i}.ffn_up.bias": state[b + "ff.fc_in.bias"],
            f"blk.{i}.ffn_down.weight": state[b + "ff.fc_out.weight"],
            f"blk.{i}.ffn_down.bias": state[b + "ff.fc_out.bias"],
        }
    assert set(back.tensors) == set(expected)
    for name, want in expected.items():
        got, kind = back.tensors[name], back.types[name]
        assert got.shape == want.shape, name
        if want.dim() == 1 or name == "position_embd.weight" or file_type == "f32":
            assert kind == "F32" and torch.equal(got, want.float()), name
        elif file_type == "f16":
            assert kind == "F16" and torch.equal(got, want.half().float()), name
        else:
            assert kind == "Q8_0" and np.array_equal(back.raw[name], quantize_q8_0(want)), name
            assert (_q8_0_error(got, want) <= 0).all(), name
    meta = back.metadata
    assert meta["general.architecture"] == "gpt2"
    assert (meta["gpt2.block_count"], meta["gpt2.embedding_length"], meta["gpt2.context_length"]) == (2, 64, 32)
    assert (meta["gpt2.feed_forward_length"], meta["gpt2.attention.head_count"]) == (256, 4)
    assert meta["gpt2.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
    assert meta["general.file_type"] == {"f32": 0, "f16": 1, "q8_0": 7}[file_type]
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == model.config.vocab_size
    table, special = bytes_to_unicode(), {v: k for k, v in tokenizer.special_tokens.items()}
    for i in range(tokenizer.vocab_size):  # each id's string is its bytes through GPT-2's table, or its special text
        want = special.get(i) or "".join(table[b] for b in tokenizer.token_bytes(i))
        assert tokens[i] == want
    assert len(meta["tokenizer.ggml.merges"]) == len(tokenizer.merges)
    assert meta["tokenizer.ggml.eos_token_id"] == tokenizer.special_tokens["<|endoftext|>"]


def test_q8_0_keeps_f16_for_rows_not_a_multiple_of_32_and_a_tied_head_is_not_written(tmp_path, tokenizer):
    model = _model(tokenizer.vocab_size, d_model=40, n_heads=2, tie_embeddings=True)
    back = read_gguf(save_gguf(model, tmp_path / "m.gguf", tokenizer, "q8_0"))
    assert back.types["blk.0.attn_qkv.weight"] == "F16"  # rows of 40
    assert back.types["blk.0.ffn_down.weight"] == "Q8_0"  # rows of 160
    assert "output.weight" not in back.tensors  # llama.cpp reuses token_embd


@pytest.mark.parametrize(("overrides", "named"), [
    ({"pos_encoding": "rope"}, "rotary positions"),
    ({"norm": "rmsnorm"}, "RMSNorm"),
    ({"ffn": "swiglu"}, "SwiGLU"),
    ({"attention": "grouped_query", "n_kv_heads": 2}, "grouped-query attention"),
    ({"n_heads": 2, "attn_head_dim": 16}, "pruned heads"),
])
def test_parts_llama_cpps_gpt2_lacks_are_refused_by_name(tmp_path, tokenizer, overrides, named):
    model = _model(tokenizer.vocab_size, **overrides)
    with pytest.raises(ScratchLLMError, match=named):
        save_gguf(model, tmp_path / "m.gguf", tokenizer)
    assert not (tmp_path / "m.gguf").exists()


def test_bad_tokenizers_are_refused(tmp_path, tokenizer, verdict_path):
    with pytest.raises(ScratchLLMError, match="no tokenizer"):
        save_gguf(_model(300), tmp_path / "m.gguf", None)
    with pytest.raises(ScratchLLMError, match="only 280 rows"):
        save_gguf(_model(280), tmp_path / "m.gguf", tokenizer)
    custom = BPETokenizer.train(verdict_path.read_text(encoding="utf-8")[:2000], vocab_size=270, pattern=r"\w+|\W",
                                progress=False)
    with pytest.raises(ScratchLLMError, match="custom regex"):
        save_gguf(_model(300), tmp_path / "m.gguf", custom)


def test_the_export_command_writes_a_file_and_keeps_an_existing_one(tmp_path, tokenizer, capsys):
    save_checkpoint(tmp_path / "ckpt", _model(tokenizer.vocab_size), tokenizer)
    out = tmp_path / "m.gguf"
    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--format", "gguf", "--type", "q8_0",
                 "--out", str(out)]) == 0
    assert "q8_0" in capsys.readouterr().out and out.stat().st_size > 0
    size = out.stat().st_size
    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and out.stat().st_size == size
    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(out), "--force", "--type", "f32"]) == 0
    assert read_gguf(out).types["blk.0.ffn_up.weight"] == "F32"


@pytest.mark.slow
@pytest.mark.parametrize(("file_type", "tolerance"), [("f32", 1e-3), ("f16", 5e-3), ("q8_0", 5e-2)])
def test_llama_cpp_loads_the_file_tokenizes_as_we_do_and_its_logits_are_ours(tmp_path, tokenizer, file_type,
                                                                             tolerance):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python compiles llama.cpp: pip install it to run")
    model = _model(tokenizer.vocab_size, tie_embeddings=False, context_length=64)
    path = save_gguf(model, tmp_path / "m.gguf", tokenizer, file_type)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_batch=64, logits_all=True, verbose=False, n_threads=2)
    for text in ("I had always thought Jack Gisburn rather a cheap genius", TEXT):  # the same split and merges
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == tokenizer.encode(text), text
    ids = tokenizer.encode("I had always thought Jack Gisburn rather a cheap genius")
    assert len(ids) <= 64  # llama.cpp aborts (an assert in C) on a position past its table
    llm.eval(ids)
    theirs = torch.tensor(np.array(llm.scores[: len(ids)]), dtype=torch.float32)
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0]
    # measured here: f32 2e-5, f16 2e-4, q8_0 4e-3 of logits up to 0.4 (ggml's GELU table, q8_0 activations)
    assert (theirs - ours).abs().max() < tolerance * ours.abs().max()
    assert torch.equal(theirs.argmax(-1), ours.argmax(-1))
