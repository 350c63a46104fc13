"""The training loop: the learning rate of every step, the exact gradient of the batch mean under
accumulation, exact resume after SIGKILL, bad losses, errors."""

from __future__ import annotations

import copy
import json
import math
import signal
import subprocess
import sys
import time

import matplotlib.image
import pytest
import torch
from train_helpers import (
    ONE_STEP,
    TINY,
    capture_gradients,
    child_env,
    mean_loss_gradients,
    padded_micro_batches,
    run_cli,
    set_args,
    small_gpt,
)

from scratchllm.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from scratchllm.cli import main
from scratchllm.model import GPT, GPTConfig
from scratchllm.train import TrainConfig, Trainer, load_run_config
from scratchllm.train.loop import IGNORE_INDEX, accumulate_gradients
from scratchllm.train.metrics import read_metrics
from scratchllm.train.run import build_trainer


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("padded", [False, True])
def test_accumulating_n_micro_batches_equals_one_batch_n_times_larger(padded):
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", dropout=0.0))
    x = torch.randint(0, 512, (8, 12))
    y = torch.randint(0, 512, (8, 12))
    if padded:  # rows with different numbers of scored tokens: the mean must be over all of them
        y[0, 3:] = IGNORE_INDEX
        y[5, 7:] = IGNORE_INDEX
    n_scored = int((y != IGNORE_INDEX).sum())
    big = accumulate_gradients(model, [(x, y)], n_scored)
    big_grads = _grads(model)
    model.zero_grad()
    micro = accumulate_gradients(model, [(x[i : i + 2], y[i : i + 2]) for i in range(0, 8, 2)], n_scored)
    torch.testing.assert_close(micro.total, big.total, rtol=1e-5, atol=1e-5)
    for a, b in zip(_grads(model), big_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # the oracle: torch's own mean cross-entropy over the scored tokens
    model.zero_grad()
    expected = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(big.total / n_scored, expected.detach(), rtol=1e-5, atol=1e-6)


def warmup_cosine(step: int, warmup: int, steps: int, peak: float, floor: float) -> float:
    """The schedule written out: update ``step`` (0-based) climbs linearly to ``peak`` at update
    warmup - 1, then follows half a cosine down to ``floor`` at the last update, steps - 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return floor + (peak - floor) * (1 + math.cos(math.pi * (step - warmup + 1) / (steps - warmup))) / 2


def test_every_step_runs_at_the_warmup_cosine_learning_rate(tiny_data, tmp_path):
    config = load_run_config(overrides=[*TINY, f"data.dir={tiny_data}", "train.max_steps=12", "train.warmup_steps=3",
                                        "train.lr=1e-2", "train.min_lr=1e-3", "train.eval_interval=0",
                                        "train.eval_batches=1", "train.sample_tokens=0"],
                             base={"model": {"vocab_size": 258}})
    trainer = build_trainer(config, tmp_path / "run", progress=False)
    used = []  # what the optimizer really steps with, every parameter group
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append([g["lr"] for g in opt.param_groups]))
    trainer.fit()
    expected = [warmup_cosine(s, 3, 12, 1e-2, 1e-3) for s in range(12)]
    assert expected[2] == pytest.approx(1e-2) and expected[-1] == pytest.approx(1e-3)  # the oracle's own ends
    assert len(trainer.optimizer.param_groups) == 2
    assert used == [pytest.approx([lr, lr], rel=1e-12) for lr in expected]
    logged = [(r["step"], r["lr"]) for r in read_metrics(tmp_path / "run") if "lr" in r]
    assert logged == [(s + 1, pytest.approx(lr, rel=1e-12)) for s, lr in enumerate(expected)]


def test_one_step_of_accumulation_has_the_gradient_of_the_batch_mean(tmp_path):
    model = small_gpt()
    plain = copy.deepcopy(model)
    micro = padded_micro_batches(3)
    counts = [int((y != IGNORE_INDEX).sum()) for _, y in micro]
    assert len(set(counts)) == 3  # unequal scored tokens per micro-batch: a mean of means would differ
    trainer = Trainer(model, iter(micro), tmp_path / "run", settings=TrainConfig(grad_accum_steps=3, **ONE_STEP),
                      progress=False)
    grads = capture_gradients(trainer, model)
    trainer.fit()
    loss, expected = mean_loss_gradients(plain, micro)
    assert grads.keys() == expected.keys()
    for name, g in expected.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-7, msg=name)
    (record,) = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert record["loss"] == pytest.approx(loss, rel=1e-5) and record["tokens"] == sum(counts)


def _train_args(data, out, *extra):
    return ["train", "--data", str(data), "--out", str(out), "--quiet",
            *set_args("train.max_steps=120", "train.eval_interval=20", "train.keep_last=2", *extra)]


def _losses(run_dir):
    records = read_metrics(run_dir)
    return [(r["step"], r["loss"]) for r in records if "loss" in r], [(r["step"], r["val_loss"]) for r in records
                                                                        if "val_loss" in r]


def test_resume_after_sigkill_is_bit_identical(tiny_data, tmp_path):
    whole = run_cli(*_train_args(tiny_data, tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    proc = subprocess.Popen([sys.executable, "-m", "scratchllm", *_train_args(tiny_data, tmp_path / "killed")],
                            env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # kill between checkpoints, at a step past 50
        if metrics.is_file() and any(json.loads(line).get("step", 0) >= 53 for line in metrics.read_text().splitlines()
                                     if line.endswith("}")):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(s for s, _ in _losses(tmp_path / "killed")[0])
    assert 53 <= killed_at < 120, "the run should have been killed mid-way"
    resumed = run_cli("train", "--resume", str(tmp_path / "killed"), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert _losses(tmp_path / "killed") == _losses(tmp_path / "whole")  # exact float equality
    assert len(list_checkpoints(tmp_path / "whole")) <= 3  # last 2 + best


def test_checkpoint_loads_the_trained_model_and_tokenizer(tiny_data, tmp_path):
    done = run_cli(*_train_args(tiny_data, tmp_path / "run", "train.max_steps=20", "train.plot=true"))
    assert done.returncode == 0, done.stderr
    model, tokenizer = load_checkpoint(tmp_path / "run")
    assert isinstance(model, GPT) and model.config.d_model == 32
    from scratchllm.data.shards import open_prepared

    assert tokenizer.fingerprint() == open_prepared(tiny_data).tokenizer.fingerprint()
    image = matplotlib.image.imread(tmp_path / "run" / "loss.png")  # drawn at the end of the run
    assert image.shape[0] > 100
    (tmp_path / "run" / "loss.png").unlink()
    plotted = run_cli("plot", str(tmp_path / "run"))
    assert plotted.returncode == 0 and matplotlib.image.imread(tmp_path / "run" / "loss.png").shape[0] > 100


def test_compiled_model_saves_clean_names(tmp_path):
    model = GPT(GPTConfig.preset("tiny", tie_embeddings=True))
    save_checkpoint(tmp_path / "c", torch.compile(model))
    loaded, _ = load_checkpoint(tmp_path / "c")
    for (name, a), (name2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert name == name2 and "_orig_mod" not in name and torch.equal(a, b)


def test_nan_loss_stops_with_a_clear_message(tiny_data, tmp_path):
    result = run_cli(*_train_args(tiny_data, tmp_path / "run", "train.grad_clip=0", "train.warmup_steps=0",
                                  "train.lr=1e30", "train.min_lr=1e30", "train.checkpoint_interval=1",
                                  "train.eval_interval=0"))
    assert result.returncode == 2
    assert "training loss became nan" in result.stderr or "training loss became inf" in result.stderr
    assert "last good checkpoint is" in result.stderr
    newest = list_checkpoints(tmp_path / "run")[-1]
    load_checkpoint(newest)  # still loads


def test_user_mistakes_are_one_line_errors(tiny_data, tmp_path, capsys):
    # One case in a fresh process: what a user's shell sees (exit status 2, the message on stderr).
    fp16 = run_cli(*_train_args(tiny_data, tmp_path / "a", "train.precision=fp16", "train.device=cpu"))
    assert fp16.returncode == 2 and "fp16 needs a CUDA GPU" in fp16.stderr
    assert fp16.stderr.strip().splitlines() == [next(line for line in fp16.stderr.splitlines() if "fp16" in line)]

    def error(*argv: str) -> str:  # the same main() in this process: no interpreter and torch to start
        code = main(list(argv))
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        return err

    assert main(_train_args(tiny_data, tmp_path / "b", "train.max_steps=5")) == 0
    conflict = error("train", "--resume", str(tmp_path / "b"), "--set", "train.lr=0.5", "--set", "model.n_layers=3")
    assert "train.lr (saved 0.003, given 0.5)" in conflict and "model.n_layers" in conflict
    assert "--resume" in error(*_train_args(tiny_data, tmp_path / "b", "train.max_steps=5"))
    typo = error("train", "--data", str(tiny_data), "--out", str(tmp_path / "c"), "--set", "train.max_step=3")
    assert "did you mean 'train.max_steps'" in typo


def test_max_seconds_stops_early_with_a_final_evaluation_and_checkpoint(tiny_data, tmp_path):
    result = run_cli(*_train_args(tiny_data, tmp_path / "run", "train.max_steps=100000", "train.max_seconds=0.5",
                                  "train.eval_interval=0"))
    assert result.returncode == 0, result.stderr
    steps, vals = _losses(tmp_path / "run")
    last = steps[-1][0]
    assert 0 < last < 100000 and vals[-1][0] == last  # stopped on time (steps in 0.5 s vary with load), evaluated there
    load_checkpoint(tmp_path / "run")
    assert list_checkpoints(tmp_path / "run")[-1].name == f"step-{last:08d}"


def test_resume_may_extend_max_steps_but_not_change_the_model(tiny_data, tmp_path):
    first = run_cli(*_train_args(tiny_data, tmp_path / "run", "train.max_steps=10"))
    assert first.returncode == 0, first.stderr
    longer = run_cli("train", "--resume", str(tmp_path / "run"), "--quiet", "--set", "train.max_steps=25")
    assert longer.returncode == 0, longer.stderr
    steps, _ = _losses(tmp_path / "run")
    assert [s for s, _ in steps] == list(range(1, 26))
    assert "max_steps = 25" in (tmp_path / "run" / "config.toml").read_text()
    changed = run_cli("train", "--resume", str(tmp_path / "run"), "--set", "train.max_steps=30",
                      "--set", "model.d_model=64")
    assert changed.returncode == 2 and "model.d_model (saved 32, given 64)" in changed.stderr
    assert "train.max_steps" not in changed.stderr


def test_a_batch_too_big_for_memory_suggests_accumulation(tiny_data, tmp_path, monkeypatch):
    from train_helpers import TINY

    from scratchllm.errors import ScratchLLMError
    from scratchllm.train import load_run_config, loop, train

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(loop, "accumulate_gradients", out_of_memory)
    config = load_run_config(overrides=[*TINY, f"data.dir={tiny_data}", "train.eval_at_start=false"],
                             base={"model": {"vocab_size": 258}})
    with pytest.raises(ScratchLLMError, match="raise train.grad_accum_steps"):
        train(config, tmp_path / "run", progress=False)
