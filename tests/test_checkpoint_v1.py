"""Checkpoints of format 1 (linear weights (in, out), before nn.Linear) still load, to the same function."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scratchllm.checkpoint import VERSION, checkpoint_version, load_checkpoint, load_training_state, save_checkpoint
from scratchllm.errors import ScratchLLMError

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoint-v1"


@pytest.mark.parametrize("name", ["untied-learned-gelu", "tied-rope-swiglu"])
def test_format_1_loads_with_the_logits_the_old_code_computed(name, tmp_path):
    ckpt = FIXTURES / name
    assert checkpoint_version(ckpt) == 1
    expected = load_file(ckpt / "expected.safetensors")
    model, _ = load_checkpoint(ckpt)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(expected["idx"]), expected["logits"], atol=1e-6, rtol=1e-6)
    if model.config.tie_embeddings:
        assert model.out_head.weight is model.tok_emb.weight
    save_checkpoint(tmp_path / "now", model)  # saved again: today's format, the same function
    assert checkpoint_version(tmp_path / "now") == VERSION == 2
    again, _ = load_checkpoint(tmp_path / "now")
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(expected["idx"]), expected["logits"], atol=1e-6, rtol=1e-6)


def test_format_1_is_not_resumed(tmp_path):
    ckpt = tmp_path / "old"
    shutil.copytree(FIXTURES / "untied-learned-gelu", ckpt)
    model, _ = load_checkpoint(ckpt)
    with pytest.raises(ScratchLLMError, match="checkpoint format 1 .* cannot be resumed; start a new run"):
        load_training_state(ckpt, torch.optim.AdamW(model.parameters()))
