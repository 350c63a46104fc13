import pytest
import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.model import GPT, GPTConfig

VARIANTS = [
    dict(pos_encoding="learned"),
    dict(pos_encoding="sinusoidal"),
    dict(pos_encoding="rope", norm="rmsnorm", ffn="swiglu"),
    dict(pos_encoding="none", tie_embeddings=True, qkv_bias=True),
]


@pytest.mark.parametrize("overrides", VARIANTS)
def test_fused_and_explicit_give_the_same_logits(overrides):
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", **overrides)).eval()
    idx = torch.randint(0, 512, (2, 12))
    fused = model(idx)
    assert fused.shape == (2, 12, 512)
    model.set_impl("explicit")
    torch.testing.assert_close(model(idx), fused, atol=1e-5, rtol=1e-4)


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", n_layers=8, d_model=128, vocab_size=2048))
    assert abs(model.tok_emb.weight.std().item() - 0.02) < 1e-3
    assert abs(model.out_head.weight.std().item() - 0.02) < 1e-3
    assert abs(model.trf_blocks[0].att.W_qkv.weight.std().item() - 0.02) < 1e-3
    assert abs(model.trf_blocks[0].ff.fc_out.weight.std().item() - 0.02 / 4) < 5e-4
    assert abs(model.trf_blocks[0].att.out_proj.weight.std().item() - 0.02 / 4) < 5e-4
    assert torch.all(model.trf_blocks[0].ff.fc_in.bias == 0)


def test_tied_embeddings_are_one_matrix():
    model = GPT(GPTConfig.preset("tiny", tie_embeddings=True))
    assert model.tok_emb is None
    idx = torch.tensor([[3, 7]])
    torch.testing.assert_close(model.token_embeddings[[3, 7]], model.out_head.weight[:, [3, 7]].T)
    model(idx).sum().backward()
    assert model.out_head.weight.grad[:, 3].abs().sum() > 0


@pytest.mark.parametrize("pos", ["sinusoidal", "rope", "none"])
def test_non_learned_positions_extrapolate_past_the_context(pos):
    model = GPT(GPTConfig.preset("tiny", pos_encoding=pos, context_length=64)).eval()
    idx = torch.randint(0, 512, (1, 128))
    logits = model(idx)
    assert logits.shape == (1, 128, 512) and torch.isfinite(logits).all()
    # causal: the first 64 positions do not see the rest
    torch.testing.assert_close(logits[:, :64], model(idx[:, :64]), atol=1e-5, rtol=1e-4)


def test_learned_positions_refuse_more_than_the_context():
    model = GPT(GPTConfig.preset("tiny", context_length=64))
    with pytest.raises(ScratchLLMError, match="context_length of 64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_inspect_returns_activations_without_changing_the_output():
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny")).eval()
    idx = torch.randint(0, 512, (1, 7))
    seen = model.inspect(idx)
    torch.testing.assert_close(seen["logits"], model(idx), atol=1e-5, rtol=1e-4)
    assert seen["embeddings"].shape == (1, 7, 64)
    assert len(seen["residual"]) == len(seen["attention"]) == 2
    assert seen["attention"][1].shape == (1, 4, 7, 7)
    assert all(block.att.last_attention is None and not block.att.store_attention for block in model.trf_blocks)
    # the last residual through the final norm and head is the logits
    torch.testing.assert_close(model.out_head(model.final_norm(seen["residual"][-1])), seen["logits"])


def test_training_step_runs_in_bf16_autocast():
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", dropout=0.1, pos_encoding="rope"))
    idx = torch.randint(0, 512, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(idx).flatten(0, 1).float(), idx.flatten())
    loss.backward()
    assert torch.isfinite(model.tok_emb.weight.grad).all()


@pytest.mark.slow
def test_torch_compile_matches_eager():
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", n_layers=1)).eval()
    idx = torch.randint(0, 512, (2, 16))
    compiled = torch.compile(model)
    torch.testing.assert_close(compiled(idx), model(idx), atol=1e-5, rtol=1e-4)
