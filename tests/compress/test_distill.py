"""Distillation: the loss equals Hinton et al.'s formula written out with torch's own KL divergence,
the teacher gets no gradients, and ``scratchllm distill`` trains (and resumes) a student."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from scratchllm.checkpoint import save_checkpoint
from scratchllm.cli import main
from scratchllm.compress.distill import DistillationLoss, distillation_sums
from scratchllm.model import GPT, GPTConfig
from scratchllm.train.losses import IGNORE_INDEX, next_token_loss
from scratchllm.train.metrics import read_metrics

TINY = ["model.n_layers=1", "model.n_heads=2", "model.d_model=16", "model.context_length=16", "model.dropout=0.0",
        "train.batch_size=4", "train.warmup_steps=2", "train.eval_batches=2", "train.precision=fp32",
        "train.peak_flops=1e11", "train.plot=false", "train.sample_tokens=0", "train.eval_interval=0"]


def test_the_loss_is_the_papers_formula_on_fixed_logits():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 11, generator=gen), torch.randn(2, 5, 11, generator=gen) * 3
    y = torch.randint(0, 11, (2, 5), generator=gen)
    y[1, 3:] = IGNORE_INDEX  # padding: neither term scores it
    T, alpha = 2.5, 0.3
    total, ce, kd = distillation_sums(s, t, y, temperature=T, alpha=alpha)
    keep = y.flatten() != IGNORE_INDEX
    s_, t_ = s.flatten(0, 1)[keep], t.flatten(0, 1)[keep]
    expected_kd = T**2 * F.kl_div(F.log_softmax(s_ / T, -1), F.log_softmax(t_ / T, -1), log_target=True,
                                  reduction="sum")
    expected_ce = F.cross_entropy(s_, y.flatten()[keep], reduction="sum")
    torch.testing.assert_close(kd, expected_kd)
    torch.testing.assert_close(ce, expected_ce)
    torch.testing.assert_close(total, alpha * expected_kd + (1 - alpha) * expected_ce)


def test_with_alpha_zero_it_is_the_next_token_loss_and_the_teacher_gets_no_gradient():
    torch.manual_seed(0)
    cfg = GPTConfig.preset("tiny", n_layers=1)
    student, teacher = GPT(cfg), GPT(cfg)
    x = torch.randint(0, cfg.vocab_size, (2, 8))
    batch = (x, torch.roll(x, -1, 1))
    loss = DistillationLoss(teacher, temperature=2.0, alpha=0.0)(student, batch)
    torch.testing.assert_close(loss.total, next_token_loss(student, batch).total)
    DistillationLoss(teacher, alpha=0.5)(student, batch).total.backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters() if p.dim() == 2)


@pytest.fixture(scope="module")
def byte_data(verdict_path, tmp_path_factory):
    from scratchllm.data.shards import prepare

    return prepare(verdict_path, tmp_path_factory.mktemp("distill") / "bytes", vocab_size=257, workers=1)


def _set(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def test_distill_trains_a_student_logs_both_terms_and_resumes_without_flags(byte_data, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    assert main(["train", "--data", str(byte_data), "--out", str(teacher), "--quiet",
                 *_set(*TINY, "train.max_steps=3")]) == 0
    student = tmp_path / "student"
    assert main(["distill", "--teacher", str(teacher), "--data", str(byte_data), "--out", str(student), "--quiet",
                 "--temperature", "3", *_set(*TINY, "model.d_model=8", "train.max_steps=3")]) == 0
    steps = [r for r in read_metrics(student) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for r in steps:  # the logged loss is the mix of its logged terms
        assert r["loss"] == pytest.approx(0.5 * r["loss_kd"] + 0.5 * r["loss_ce"], rel=1e-5)
        assert 0 < r["loss_ce"] < 1.5 * math.log(258)
    saved = json.loads((student / "distill.json").read_text())
    assert saved["temperature"] == 3 and saved["teacher"] == str((teacher / "checkpoints" / "step-00000003").resolve())
    assert main(["distill", "--resume", str(student), "--quiet", *_set("train.max_steps=5")]) == 0
    assert [r["step"] for r in read_metrics(student) if "loss" in r][-1] == 5


def test_a_teacher_with_another_vocabulary_is_refused_in_one_line(byte_data, tmp_path, capsys):
    other = GPT(GPTConfig.preset("tiny", vocab_size=300, context_length=16))
    save_checkpoint(tmp_path / "other", other)
    code = main(["distill", "--teacher", str(tmp_path / "other"), "--data", str(byte_data), "--out",
                 str(tmp_path / "s"), "--quiet", *_set(*TINY)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "vocabulary (300 ids) differs from the student's (258)" in err
    assert not (tmp_path / "s").exists()  # nothing written for a refused run


def test_a_mixture_of_experts_student_adds_its_router_losses_as_training_does():
    torch.manual_seed(0)
    student = GPT(GPTConfig.preset("tiny", n_layers=1, ffn="moe", n_experts=4, moe_top_k=2, dropout=0.0)).train()
    teacher = GPT(GPTConfig.preset("tiny", n_layers=1))
    x = torch.randint(0, 512, (2, 8))
    y = torch.roll(x, -1, 1)
    y[1, 5:] = IGNORE_INDEX
    router_in = []
    moe = student.trf_blocks[0].ff
    moe.router.register_forward_hook(lambda module, args, out: router_in.append(args[0].detach()))
    loss = DistillationLoss(teacher, temperature=2.0, alpha=0.3)(student, (x, y))
    # the router losses by hand (Switch eq. 4 and ST-MoE's z-loss), from the tokens the router saw
    logits = router_in[0] @ moe.router.weight.detach().t()  # (16 tokens, 4 experts)
    probs = logits.softmax(-1)
    f = torch.bincount(probs.topk(2, dim=-1).indices.flatten(), minlength=4).float() / 32
    balance = 4 * (f * probs.mean(0)).sum()
    z = torch.logsumexp(logits, -1).square().mean()
    units = 13  # scored targets
    with torch.no_grad():
        plain, ce, kd = distillation_sums(student(x), teacher(x), y, 2.0, 0.3)
    torch.testing.assert_close(loss.total, plain + units * (0.01 * balance + 0.001 * z))
    torch.testing.assert_close(loss.terms["balance"], units * balance)
    torch.testing.assert_close(loss.terms["router_z"], units * z)
    torch.testing.assert_close(loss.terms["kd"], kd)
    assert set(loss.metrics) == {f"moe_load_l0_e{e}" for e in range(4)}
    loss.total.backward()
    assert moe.router.weight.grad is not None
