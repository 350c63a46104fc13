"""Checkpoints: exact round trips, clean names, atomic saves, pruning, and named errors."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from scratchllm import checkpoint as ck
from scratchllm.errors import ScratchLLMError


class _Config:
    def to_dict(self) -> dict:
        return {"width": 8}


class TinyLM(nn.Module):
    """Embedding tied to the output head, like a GPT with tie_embeddings=True."""

    def __init__(self) -> None:
        super().__init__()
        self.config = _Config()
        self.tok_emb = nn.Embedding(11, 8)
        self.norm = nn.LayerNorm(8)
        self.out_head = nn.Linear(8, 11, bias=False)
        self.out_head.weight = self.tok_emb.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.out_head(self.norm(self.tok_emb(idx)))


def _trained_model_and_optimizer() -> tuple[TinyLM, torch.optim.AdamW]:
    torch.manual_seed(0)
    model = TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss = model(torch.randint(0, 11, (2, 5))).logsumexp(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def test_weights_round_trip_exactly_with_tied_embeddings(tmp_path):
    model, _ = _trained_model_and_optimizer()
    ck.save_checkpoint(tmp_path / "c", model)
    stored = load_file(tmp_path / "c" / ck.MODEL_FILE)
    assert len(stored) == 3  # the tied head is stored once
    fresh = TinyLM()
    ck.load_model_weights(fresh, tmp_path / "c")
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert fresh.out_head.weight.data_ptr() == fresh.tok_emb.weight.data_ptr()  # still tied
    assert json.loads((tmp_path / "c" / ck.CONFIG_FILE).read_text())["model"] == {"width": 8}


def test_compiled_and_wrapped_models_save_clean_names(tmp_path):
    model = TinyLM()
    wrapper = nn.Module()
    wrapper._orig_mod = model  # what torch.compile's OptimizedModule holds
    ck.save_checkpoint(tmp_path / "c", wrapper)
    names = load_file(tmp_path / "c" / ck.MODEL_FILE).keys()
    assert set(names) == {"tok_emb.weight", "norm.weight", "norm.bias"}


def test_optimizer_state_round_trips_and_continues_identically(tmp_path):
    model, opt = _trained_model_and_optimizer()
    ck.save_checkpoint(tmp_path / "c", model, optimizer=opt, train_state={"step": 3})
    fresh = TinyLM()
    ck.load_model_weights(fresh, tmp_path / "c")
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    assert ck.load_training_state(tmp_path / "c", fresh_opt) == {"step": 3}
    batch = torch.randint(0, 11, (2, 5))
    for m, o in ((model, opt), (fresh, fresh_opt)):
        m(batch).logsumexp(-1).mean().backward()
        o.step()
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)


def test_rng_state_round_trips_through_json():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = json.loads(json.dumps(ck.rng_state()))
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ck.set_rng_state(state)
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_crash_during_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    model, _ = _trained_model_and_optimizer()
    ck.save_checkpoint(ck.checkpoint_path(tmp_path, 1), model, train_state={"val_loss": 2.0})

    class Boom(RuntimeError):
        pass

    def exploding_save(state, path, metadata=None):
        path.write_bytes(b"half a file")
        raise Boom

    monkeypatch.setattr(ck, "save_file", exploding_save)
    with pytest.raises(Boom):
        ck.save_checkpoint(ck.checkpoint_path(tmp_path, 2), model)
    assert ck.list_checkpoints(tmp_path) == [ck.checkpoint_path(tmp_path, 1)]
    assert ck.find_checkpoint(tmp_path) == ck.checkpoint_path(tmp_path, 1)
    ck.load_model_weights(TinyLM(), ck.find_checkpoint(tmp_path))


def _save_training_checkpoint(run_dir, step, val_loss=None):
    """A checkpoint as the trainer writes one: weights, optimizer and a train state resuming reads."""
    model, opt = _trained_model_and_optimizer()
    state = {"step": step, "tokens": 0, "precision": "fp32", "rng": ck.rng_state(), "val_loss": val_loss}
    return ck.save_checkpoint(ck.checkpoint_path(run_dir, step), model, optimizer=opt, train_state=state)


def test_keeps_last_k_and_best(tmp_path):
    losses = {1: 3.0, 2: 1.5, 3: 2.0, 4: 2.5, 5: 2.2}
    for step, loss in losses.items():
        _save_training_checkpoint(tmp_path, step, loss)
        ck.prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step-00000002", "step-00000004", "step-00000005"]
    assert ck.find_checkpoint(tmp_path, which="best").name == "step-00000002"
    assert ck.find_checkpoint(tmp_path).name == "step-00000005"


@pytest.mark.parametrize("victim", [ck.MODEL_FILE, ck.CONFIG_FILE, ck.STATE_FILE, ck.OPTIMIZER_FILE])
def test_truncated_files_are_named(tmp_path, victim):
    model, opt = _trained_model_and_optimizer()
    path = ck.save_checkpoint(tmp_path / "c", model, optimizer=opt, train_state={"step": 3})
    data = (path / victim).read_bytes()
    (path / victim).write_bytes(data[: len(data) // 2])
    with pytest.raises(ScratchLLMError, match=victim):
        if victim == ck.CONFIG_FILE:
            ck.read_json(path / victim)
        elif victim == ck.MODEL_FILE:
            ck.load_model_weights(TinyLM(), path)
        else:
            ck.load_training_state(path, torch.optim.AdamW(TinyLM().parameters()))


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ScratchLLMError, match="no checkpoint"):
        ck.find_checkpoint(tmp_path)
    with pytest.raises(ScratchLLMError, match="not found"):
        ck.find_checkpoint(tmp_path / "nope")


@pytest.mark.parametrize("victim", [ck.STATE_FILE, ck.OPTIMIZER_FILE, ck.MODEL_FILE, ck.CONFIG_FILE])
def test_rotation_and_resume_skip_a_damaged_newest_checkpoint(tmp_path, capsys, victim):
    for step in (1, 2):
        _save_training_checkpoint(tmp_path, step)
    newest = ck.checkpoint_path(tmp_path, 2)
    (newest / victim).write_bytes((newest / victim).read_bytes()[:20])
    assert ck.checkpoint_problem(newest) is not None and victim in ck.checkpoint_problem(newest)
    assert ck.newest_intact_checkpoint(tmp_path) == ck.checkpoint_path(tmp_path, 1)
    assert f"skipping a damaged checkpoint: {newest / victim}" in capsys.readouterr().err
    ck.prune_checkpoints(tmp_path, keep_last=1)  # the damaged one is not counted as kept: step 1 stays
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step-00000001", "step-00000002"]
    _save_training_checkpoint(tmp_path, 2)  # the resumed run saves step 2 again: it replaces the damaged one
    ck.prune_checkpoints(tmp_path, keep_last=1)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step-00000002"]
    assert ck.checkpoint_problem(newest) is None
