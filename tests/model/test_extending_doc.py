"""docs/extending.md's example runs as written: a part registered from user code builds a hybrid stack."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from scratchllm.model import registry

DOC = Path(__file__).resolve().parents[2] / "docs" / "extending.md"


def test_the_documented_part_registers_and_builds_a_per_layer_mix(monkeypatch):
    monkeypatch.setitem(registry._PARTS, "ffn", dict(registry._PARTS["ffn"]))  # leave the registry as it was
    code = re.search(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S).group(1)
    scope: dict = {}
    exec(compile(code, str(DOC), "exec"), scope)
    model, config, logits = scope["model"], scope["config"], scope["logits"]
    kinds = [type(block.ff).__name__ for block in model.trf_blocks]
    assert kinds == ["FeedForward", "SquaredReLUFeedForward"] * 2
    assert logits.shape == (2, 16, config.vocab_size)
    ff = model.trf_blocks[1].ff  # the formula, written out
    x = torch.randn(3, 5, config.d_model)
    expected = torch.relu(x @ ff.fc_in.weight.T + ff.fc_in.bias) ** 2 @ ff.fc_out.weight.T + ff.fc_out.bias
    torch.testing.assert_close(ff(x), expected)
    assert ff.fc_out in model.trf_blocks[1].residual_projections()
