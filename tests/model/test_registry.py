"""Parts by name: the config's allowed values come from the registry, layers can mix kinds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scratchllm.errors import ScratchLLMError
from scratchllm.model import GPT, GPTConfig, registry
from scratchllm.model.attention import MultiHeadAttention
from scratchllm.model.gqa import GroupedQueryAttention


def test_unknown_names_get_the_closest_registered_one():
    with pytest.raises(ScratchLLMError, match=r"attention='multihaed' is not one of .*did you mean 'multihead'"):
        GPTConfig.preset("tiny", attention="multihaed")
    with pytest.raises(ScratchLLMError, match="did you mean 'rmsnorm'"):
        GPTConfig.preset("tiny", norm="rmsnrom")
    with pytest.raises(ScratchLLMError, match="pos_encoding must be one name"):
        GPTConfig.preset("tiny", pos_encoding=["rope", "learned"])
    assert set(registry.names("attention")) >= {"multihead", "grouped_query"}


def test_a_per_layer_pattern_repeats_over_the_stack():
    cfg = GPTConfig.preset("tiny", n_layers=5, attention=["grouped_query", "grouped_query", "multihead"],
                           ffn=["swiglu", "gelu"], n_kv_heads=2)
    model = GPT(cfg)
    kinds = [type(b.att) for b in model.trf_blocks]
    assert kinds == [GroupedQueryAttention, GroupedQueryAttention, MultiHeadAttention,
                     GroupedQueryAttention, GroupedQueryAttention]
    assert [b.ff.swiglu for b in model.trf_blocks] == [True, False, True, False, True]
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg  # a list survives the JSON round trip
    idx = torch.randint(0, 512, (1, 9))
    cached = model.new_cache(1, 9)
    torch.testing.assert_close(model(idx, cache=cached), model(idx))


def test_a_new_part_is_one_registration():
    @registry.register("attention", "doubled")
    class DoubledAttention(MultiHeadAttention):
        """Multi-head attention whose output is doubled: a stand-in for a researcher's new idea."""

        def forward(self, x, rope=None, mask=None, cache=None, layer=0):
            return 2 * super().forward(x, rope, mask, cache, layer)

    try:
        torch.manual_seed(0)
        base = GPT(GPTConfig.preset("tiny"))
        new = GPT(GPTConfig.preset("tiny", attention=["doubled", "multihead"]))
        new.load_state_dict(base.state_dict())
        assert isinstance(new.trf_blocks[0].att, DoubledAttention)
        x = torch.randn(1, 5, 64)
        torch.testing.assert_close(new.trf_blocks[0].att(x), 2 * base.trf_blocks[0].att(x))
    finally:
        registry._PARTS["attention"].pop("doubled")  # leave the registry as the other tests expect


def test_a_name_is_registered_once():
    with pytest.raises(ScratchLLMError, match="already registered"):
        registry.register("norm", "layernorm")(lambda config, layer: nn.Identity())
