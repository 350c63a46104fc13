"""model/layout.py: every linear weight keeps nn.Linear's shape and values, with its longer side
contiguous, and the model computes what the row-major model computes; the decoding commands
load their model in that layout."""

import argparse

import torch
from torch import nn

from scratchllm.checkpoint import load_checkpoint, save_checkpoint
from scratchllm.commands._model import load_model_source
from scratchllm.generate import generate
from scratchllm.model import GPT, GPTConfig, contiguous_weights, lay_out_weights


def _config(**overrides) -> GPTConfig:
    return GPTConfig.preset("tiny", **overrides)


def _long_side_contiguous(weight: torch.Tensor) -> bool:
    out_features, in_features = weight.shape
    return weight.stride() == ((1, out_features) if out_features >= in_features else (in_features, 1))


def test_every_linear_of_a_gpt_stores_its_longer_side_contiguously():
    for tied in (True, False):
        model = lay_out_weights(GPT(_config(tie_embeddings=tied)))
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        assert any(m.out_features > m.in_features for m in linears)
        assert any(m.out_features < m.in_features for m in linears)
        assert all(_long_side_contiguous(m.weight) for m in linears)
        assert (model.out_head.weight is model.tok_emb.weight) == tied


def test_the_layout_changes_strides_not_values_or_outputs():
    torch.manual_seed(0)
    model = lay_out_weights(GPT(_config()).eval())
    row_major = GPT(_config()).eval()
    row_major.load_state_dict(model.state_dict())
    assert all(p.is_contiguous() for p in row_major.parameters())  # what a GPT is built with
    contiguous_weights(row_major)
    assert all(p.is_contiguous() for p in row_major.parameters())
    assert not all(p.is_contiguous() for p in model.parameters())
    idx = torch.randint(0, model.config.vocab_size, (2, 9))
    torch.testing.assert_close(model(idx), row_major(idx), rtol=1e-5, atol=1e-5)
    lay_out_weights(row_major)
    assert all(a.stride() == b.stride() for a, b in zip(model.parameters(), row_major.parameters(), strict=True))


def test_training_keeps_the_layout_and_a_checkpoint_round_trips(tmp_path):
    torch.manual_seed(0)
    model = lay_out_weights(GPT(_config()))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    idx = torch.randint(0, model.config.vocab_size, (2, 9))
    model(idx).sum().backward()
    optimizer.step()
    head = model.out_head.weight
    assert head.grad.stride() == head.stride()  # autograd writes gradients in the parameter's layout
    assert _long_side_contiguous(head)
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "ckpt", model))
    for ours, theirs in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs)


def test_the_decoding_commands_load_the_decode_layout(tmp_path):
    save_checkpoint(tmp_path / "ckpt", GPT(_config()))
    args = argparse.Namespace(checkpoint=tmp_path / "ckpt", model=None)
    for decoding in (True, False):
        model, _ = load_model_source(args, decoding=decoding)
        linears = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
        assert all(_long_side_contiguous(w) for w in linears) == decoding
        assert all(w.is_contiguous() for w in linears) != decoding


def test_greedy_generation_is_the_same_in_either_layout():
    torch.manual_seed(0)
    row_major = GPT(_config(tie_embeddings=True)).eval()
    laid_out = GPT(_config(tie_embeddings=True)).eval()
    laid_out.load_state_dict(row_major.state_dict())
    lay_out_weights(laid_out)
    prompt = torch.randint(0, row_major.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(1))
    assert torch.equal(generate(laid_out, prompt, 12), generate(row_major, prompt, 12))
