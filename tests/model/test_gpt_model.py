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
    assert model.out_head.weight is model.tok_emb.weight is model.token_embeddings
    assert model.num_params() == GPT(GPTConfig.preset("tiny")).num_params() - 512 * 64
    idx = torch.tensor([[3, 7]])
    model(idx).sum().backward()
    assert model.tok_emb.weight.grad[3].abs().sum() > 0  # the head's gradient reaches every row
    assert model.tok_emb.weight.grad[100].abs().sum() > 0


@pytest.mark.parametrize("overrides", [*VARIANTS, dict(attention="grouped_query", n_kv_heads=2, ffn="swiglu")])
def test_every_linear_map_is_a_torch_linear(overrides):
    model = GPT(GPTConfig.preset("tiny", **overrides))
    linears = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    expected = {"out_head"} | {f"trf_blocks.{i}.{n}" for i in range(2)
                               for n in ("att.W_qkv", "att.out_proj", "ff.fc_in", "ff.fc_out")}
    assert linears == expected
    for name, param in model.named_parameters():  # nothing else holds a matrix that multiplies x
        if param.dim() == 2:
            assert name.removesuffix(".weight") in linears | {"tok_emb", "pos_emb"}, name
    fc_in = model.trf_blocks[0].ff.fc_in
    assert fc_in.weight.shape == (fc_in.out_features, fc_in.in_features)  # (out, in), as torch lays it out


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
