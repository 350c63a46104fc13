import json
import subprocess
import sys

import pytest
import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.interop import load_hf_gpt2, save_hf_gpt2
from scratchllm.model import GPT, GPTConfig

transformers = pytest.importorskip("transformers")
SHAPES = [(1, 5), (3, 40)]


def hf_model(tmp_path, tie=True, **shape):
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=300, n_positions=48, n_embd=48, n_layer=3, n_head=4, tie_word_embeddings=tie,
        bos_token_id=None, eos_token_id=None, **shape,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # make biases and norms non-trivial, so a wrong mapping shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path / "hf")
    return model, tmp_path / "hf"


def hf_logits(model, idx):
    with torch.no_grad():
        return model(idx).logits


@pytest.mark.parametrize("tie", [True, False])
def test_hf_checkpoint_loads_with_the_same_logits_and_goes_back(tmp_path, tie):
    hf, path = hf_model(tmp_path, tie=tie)
    ours = load_hf_gpt2(path)
    assert ours.config.tie_embeddings == tie and (ours.out_head.weight is ours.tok_emb.weight) == tie
    assert ours.num_params() == sum(p.numel() for p in hf.parameters())
    back = save_hf_gpt2(ours, tmp_path / "back")
    hf_back = transformers.GPT2LMHeadModel.from_pretrained(back).eval()
    for shape in SHAPES:
        idx = torch.randint(0, 300, shape)
        expected = hf_logits(hf, idx)
        with torch.no_grad():
            assert (ours(idx) - expected).abs().max() < 1e-4
        assert (hf_logits(hf_back, idx) - expected).abs().max() < 1e-4


def test_our_book_shaped_model_exports_to_transformers(tmp_path):
    torch.manual_seed(0)
    ours = GPT(GPTConfig.preset("tiny", qkv_bias=False, tie_embeddings=False, ffn_hidden=100)).eval()
    hf = transformers.GPT2LMHeadModel.from_pretrained(save_hf_gpt2(ours, tmp_path / "hf")).eval()
    for shape in SHAPES:
        idx = torch.randint(0, 512, shape)
        with torch.no_grad():
            assert (ours(idx) - hf_logits(hf, idx)).abs().max() < 1e-4


def test_nanogpt_shaped_model_without_biases_and_exact_gelu_exports_to_transformers(tmp_path):
    torch.manual_seed(0)
    ours = GPT(GPTConfig.preset("tiny", bias=False, gelu="exact", tie_embeddings=True)).eval()
    assert not any(name.endswith(("bias", "shift")) for name, _ in ours.named_parameters())
    path = save_hf_gpt2(ours, tmp_path / "hf")
    assert json.loads((path / "config.json").read_text())["activation_function"] == "gelu"
    hf = transformers.GPT2LMHeadModel.from_pretrained(path).eval()
    back = load_hf_gpt2(path)
    assert back.config.gelu == "exact"
    idx = torch.randint(0, 512, (3, 40))
    with torch.no_grad():
        expected = ours(idx)
        assert (hf_logits(hf, idx) - expected).abs().max() < 1e-4
        assert (back(idx) - expected).abs().max() < 1e-4


def test_only_gpt2_shaped_models_export(tmp_path):
    with pytest.raises(ScratchLLMError, match="pos_encoding='learned'"):
        save_hf_gpt2(GPT(GPTConfig.preset("tiny", pos_encoding="rope")), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_pickled_weights_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(ScratchLLMError, match="never unpickled"):
        load_hf_gpt2(tmp_path)


def test_shape_mismatch_names_the_first_tensor(tmp_path):
    _, path = hf_model(tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["n_positions"] = 64
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ScratchLLMError, match="'transformer.wpe.weight' has shape \\(48, 48\\)"):
        load_hf_gpt2(path)
    config["n_layer"] = 4
    config["n_positions"] = 48
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ScratchLLMError, match="h.3.ln_1.weight"):
        load_hf_gpt2(path)


def test_unsupported_gpt2_variants_are_refused(tmp_path):
    _, path = hf_model(tmp_path, activation_function="relu")
    with pytest.raises(ScratchLLMError, match="activation_function 'relu'"):
        load_hf_gpt2(path)


MEMORY_PROBE = """
import sys, torch
from scratchllm.interop import load_hf_gpt2
def anon():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(fields["RssAnon"].split()[0]) * 1024
load_hf_gpt2(sys.argv[2])  # warm up lazy imports and allocator pools
base = anon()
model = load_hf_gpt2(sys.argv[1])
print((anon() - base) / sum(p.numel() * p.element_size() for p in model.parameters()))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_loading_holds_about_one_copy_of_the_weights(tmp_path):
    big = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=256, n_layer=4, n_head=4))
    big.save_pretrained(tmp_path / "big")  # 64 MB of float32
    del big
    _, small = hf_model(tmp_path)
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tmp_path / "big"), str(small)],
                         capture_output=True, text=True, check=True)
    assert float(out.stdout) < 1.5
