"""The Trainer driven from Python: a custom loss with a named auxiliary term, a frozen subset of
the parameters, and the precision it resolves written into the saved config."""

from __future__ import annotations

import copy
import itertools
import json

import pytest
import torch
import torch.nn.functional as F

from scratchllm.model import GPT, GPTConfig
from scratchllm.train import TrainConfig, Trainer
from scratchllm.train.config import read_toml
from scratchllm.train.losses import IGNORE_INDEX, Loss
from scratchllm.train.metrics import read_metrics

L2 = 1e-3


def l2_loss(model, batch):
    """Next-token cross-entropy plus an L2 pull on the output head, both summed over the units."""
    x, y = batch
    ce = F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    units = (y != IGNORE_INDEX).sum()
    l2 = L2 * model.out_head.weight.pow(2).sum() * units  # a per-unit penalty, summed like the loss
    return Loss(ce + l2, {"ce": ce, "l2": l2})


def _batches(vocab: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    while True:
        x = torch.randint(0, vocab, (4, 16), generator=gen)
        y = torch.randint(0, vocab, (4, 16), generator=gen)
        y[0, 10:] = IGNORE_INDEX  # padding: not a unit
        yield x, y


def _model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, context_length=16, d_model=32, n_heads=2, n_layers=2, dropout=0.0,
                         tie_embeddings=False))


SETTINGS = dict(lr=1e-2, min_lr=1e-2, warmup_steps=0, eval_interval=0, eval_at_start=False, precision="fp32",
                peak_flops=1e11, plot=False, sample_tokens=0, weight_decay=0.1, grad_clip=0.5)


def test_a_custom_loss_on_a_frozen_subset_takes_exactly_the_optimizer_step_of_its_mean(tmp_path):
    model = _model()
    plain = copy.deepcopy(model)
    l2_before = L2 * plain.out_head.weight.detach().pow(2).sum().item()  # the logged term: measured before the step
    head = [model.out_head.weight, *model.final_norm.parameters()]
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not name.startswith(("out_head",
                                                                                                      "final_norm"))}
    trainer = Trainer(model, _batches(64), tmp_path / "run", settings=TrainConfig(max_steps=1, grad_accum_steps=2,
                      **SETTINGS), loss=l2_loss, trainable=head, progress=False)
    trainer.fit()

    # Oracle: the same two micro-batches as one, the mean over their units, clipping and AdamW by hand.
    micro = list(itertools.islice(_batches(64), 2))
    x, y = torch.cat([b[0] for b in micro]), torch.cat([b[1] for b in micro])
    units = int((y != IGNORE_INDEX).sum())
    trained = [plain.out_head.weight, *plain.final_norm.parameters()]
    logits = plain(x)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX) \
        + L2 * plain.out_head.weight.pow(2).sum()
    grads = torch.autograd.grad(loss, trained)
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
    scale = min(1.0, 0.5 / (float(norm) + 1e-6))
    with torch.no_grad():
        for p, g in zip(trained, grads, strict=True):
            decay = 0.1 if p.dim() >= 2 else 0.0
            g = g * scale
            m, v = 0.1 * g, 0.01 * g * g  # first AdamW step: bias-corrected moments are g and g^2
            p.mul_(1 - 1e-2 * decay).sub_(1e-2 * (m / 0.1) / ((v / 0.01).sqrt() + 1e-8))

    torch.testing.assert_close(model.out_head.weight, plain.out_head.weight, rtol=1e-4, atol=1e-6)
    for a, b in zip(model.final_norm.parameters(), plain.final_norm.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    for name, before in frozen.items():
        assert torch.equal(dict(model.named_parameters())[name], before), f"{name} trained but was frozen"
        assert not dict(model.named_parameters())[name].requires_grad

    (record,) = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX).item()
    assert record["loss_ce"] == pytest.approx(ce, rel=1e-5)
    assert record["loss_l2"] == pytest.approx(l2_before, rel=1e-5)
    assert record["loss"] == pytest.approx(record["loss_ce"] + record["loss_l2"], rel=1e-6)
    assert record["tokens"] == units


def test_the_saved_config_holds_the_precision_auto_resolved_to(tiny_data, tmp_path):
    from train_helpers import TINY

    from scratchllm.train import load_run_config, train

    overrides = [o for o in TINY if not o.startswith("train.precision")]
    config = load_run_config(overrides=[*overrides, f"data.dir={tiny_data}", "train.max_steps=2",
                                        "train.precision=auto", "train.sample_tokens=0"],
                             base={"model": {"vocab_size": 258}})
    train(config, tmp_path / "run", progress=False)
    saved = read_toml(tmp_path / "run" / "config.toml")["train"]["precision"]
    state = (tmp_path / "run" / "checkpoints").glob("*/train_state.json")
    assert saved in ("fp32", "bf16") and saved == json.loads(next(state).read_text())["precision"]


def test_nothing_trainable_is_refused(tmp_path):
    from scratchllm.errors import ScratchLLMError

    with pytest.raises(ScratchLLMError, match="no parameter is trainable"):
        Trainer(_model(), _batches(64), tmp_path, settings=TrainConfig(**SETTINGS), trainable=[])


def test_a_default_evaluator_scores_the_custom_loss_on_validation_batches(tmp_path):
    model = _model()
    val = list(itertools.islice(_batches(64, seed=1), 3))
    trainer = Trainer(model, _batches(64), tmp_path / "run", settings=TrainConfig(max_steps=1, **SETTINGS),
                      loss=l2_loss, val_batches=val, progress=False)
    before = copy.deepcopy(model)
    trainer.fit()
    (record,) = [r for r in read_metrics(tmp_path / "run") if "val_loss" in r]
    x, y = torch.cat([b[0] for b in val]), torch.cat([b[1] for b in val])
    with torch.no_grad():
        expected = (F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX)
                    + L2 * model.out_head.weight.pow(2).sum()).item()
    assert record["val_loss"] == pytest.approx(expected, rel=1e-5)
    assert not torch.equal(before.out_head.weight, model.out_head.weight)


def test_fit_locks_its_run_folder_against_another_process_and_nests_within_this_one(tmp_path):
    import subprocess
    import sys

    from scratchllm.errors import ScratchLLMError
    from scratchllm.fileio import exclusive_lock

    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from scratchllm.fileio import exclusive_lock\n"
         f"with exclusive_lock({str(run)!r}):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        trainer = Trainer(_model(), _batches(64), run, settings=TrainConfig(max_steps=1, **SETTINGS), progress=False)
        with pytest.raises(ScratchLLMError, match=f"is in use by pid {holder.pid}"):
            trainer.fit()
        assert [p.name for p in run.iterdir()] == [".scratchllm.lock"]  # nothing of the run written
    finally:
        holder.communicate("")
    # a caller that locked the folder itself (to write files of its own beside the run) can train in it
    with exclusive_lock(run):
        assert Trainer(_model(), _batches(64), run, settings=TrainConfig(max_steps=1, **SETTINGS),
                       progress=False).fit().step == 1
    assert not (run / ".scratchllm.lock").exists()
