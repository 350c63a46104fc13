"""Model surgery and the forward pass's narrower outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scratchllm.checkpoint import load_checkpoint, save_checkpoint
from scratchllm.model import GPT, GPTConfig
from scratchllm.model.surgery import replace_head, replace_linears


class Scaled(nn.Module):
    """A wrapper that keeps the layer as ``base`` and scales its output: a stand-in for LoRA."""

    def __init__(self, base: nn.Linear, scale: float) -> None:
        super().__init__()
        self.base, self.scale = base, nn.Parameter(torch.tensor(scale))

    def forward(self, x):
        return self.base(x) * self.scale


def test_replace_linears_picks_layers_by_name_and_keeps_a_strict_state_dict(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny")).eval()
    idx = torch.randint(0, 512, (2, 8))
    before = model(idx)
    names = replace_linears(model, lambda name, lin: Scaled(lin, 1.0), where=lambda name, lin: ".att." in name)
    assert names == [f"trf_blocks.{i}.att.{n}" for i in range(2) for n in ("W_qkv", "out_proj")]
    assert isinstance(model.trf_blocks[1].att.out_proj, Scaled) and isinstance(model.out_head, nn.Linear)
    torch.testing.assert_close(model(idx), before)  # scale 1: the same function
    keys = set(model.state_dict())
    assert "trf_blocks.0.att.W_qkv.base.weight" in keys and "trf_blocks.0.att.W_qkv.scale" in keys
    with torch.no_grad():
        model.trf_blocks[0].att.out_proj.scale.fill_(0.0)  # layer 0's attention now adds nothing
    assert not torch.allclose(model(idx), before)


@pytest.mark.parametrize("tie", [True, False])
def test_replace_head_keeps_the_token_table_and_saves_and_loads_strictly(tie, tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", tie_embeddings=tie)).eval()
    table = model.tok_emb.weight.detach().clone()
    head = replace_head(model, 3)
    assert model.out_head is head and head.weight.shape == (3, 64) and head.bias is not None
    assert head.weight is not model.tok_emb.weight
    torch.testing.assert_close(model.tok_emb.weight, table)
    idx = torch.randint(0, 512, (2, 8))
    logits = model(idx)
    assert logits.shape == (2, 8, 3)
    save_checkpoint(tmp_path / "clf", model)
    loaded, _ = load_checkpoint(tmp_path / "clf")
    assert loaded.config.head_size == 3
    torch.testing.assert_close(loaded.eval()(idx), logits)
    torch.testing.assert_close(loaded.tok_emb.weight, table)


def test_hidden_states_and_chosen_positions_equal_slices_of_the_full_pass():
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny")).eval()
    idx = torch.randint(0, 512, (3, 10))
    full = model(idx)
    hidden = model(idx, hidden=True)
    assert hidden.shape == (3, 10, 64)
    torch.testing.assert_close(model.out_head(hidden), full)
    at = torch.tensor([9, 0, 4])
    torch.testing.assert_close(model(idx, at=at), full[torch.arange(3), at].unsqueeze(1))
    torch.testing.assert_close(model(idx, at=at, hidden=True), hidden[torch.arange(3), at].unsqueeze(1))
    torch.testing.assert_close(model(idx, last_only=True), full[:, -1:])
