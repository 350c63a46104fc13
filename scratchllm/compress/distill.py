"""Knowledge distillation (Hinton, Vinyals and Dean 2015): a student learns from a teacher's whole
next-token distribution, not only from the one token that came next.

For each scored position, with student logits s, teacher logits t and temperature T:

    kd = T^2 * KL( softmax(t / T) || softmax(s / T) )          (T^2 keeps its gradients' scale)
    ce = -log softmax(s)[y]                                      (the usual loss)
    loss = alpha * kd + (1 - alpha) * ce

A higher T softens both distributions, so the student also learns which wrong tokens the teacher
finds nearly right ("dark knowledge"). The teacher runs in eval mode with no gradients.

>>> s, t = torch.zeros(1, 1, 3), torch.zeros(1, 1, 3)
>>> total, ce, kd = distillation_sums(s, t, torch.tensor([[0]]), temperature=2.0, alpha=0.5)
>>> round(float(kd), 6), round(float(ce), 4)        # equal distributions: no KL; ce = ln 3
(0.0, 1.0986)
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.errors import ScratchLLMError, check_range
from scratchllm.train.losses import IGNORE_INDEX, Loss, with_auxiliary


def distillation_sums(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      temperature: float = 2.0, alpha: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, ce, kd) summed over the scored positions of ``targets`` (B, T); logits (B, T, vocab)."""
    scored = targets.flatten() != IGNORE_INDEX
    s = student_logits.flatten(0, 1)[scored].float()
    t = teacher_logits.flatten(0, 1)[scored].float()
    ce = F.cross_entropy(s, targets.flatten()[scored], reduction="sum")
    log_p_teacher = F.log_softmax(t / temperature, dim=-1)
    log_p_student = F.log_softmax(s / temperature, dim=-1)
    kd = temperature**2 * (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum()
    return alpha * kd + (1 - alpha) * ce, ce, kd


class DistillationLoss:
    """A loss for the ``Trainer``: the student's distillation loss against a frozen ``teacher``.

    ``teacher_precision`` (``fp32`` or ``bf16``) is the autocast its forward passes run in.
    """

    def __init__(self, teacher: nn.Module, temperature: float = 2.0, alpha: float = 0.5,
                 teacher_precision: str = "fp32") -> None:
        check_range("--temperature", temperature, 0, low_open=True)
        check_range("--alpha", alpha, 0, 1, note="the weight of the distillation term")
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature, self.alpha, self.teacher_precision = temperature, alpha, teacher_precision

    def __call__(self, model: nn.Module, batch: Any) -> Loss:
        x, y = batch
        device = x.device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        precision = (torch.autocast(device.type, dtype=torch.bfloat16) if self.teacher_precision == "bf16"
                     else contextlib.nullcontext())
        with torch.no_grad(), precision:
            teacher_logits = self.teacher(x)
        total, ce, kd = distillation_sums(model(x), teacher_logits, y, self.temperature, self.alpha)
        # a mixture-of-experts student's router losses, as in training (the teacher, in eval mode, leaves none)
        return with_auxiliary(model, batch, Loss(total, {"ce": ce, "kd": kd}))


def check_pair(teacher_config: Any, student_config: Any) -> None:
    """Refuse a teacher and student that cannot be distilled: other vocabularies, or a teacher
    that cannot read the student's windows."""
    if teacher_config.vocab_size != student_config.vocab_size:
        raise ScratchLLMError(f"the teacher's vocabulary ({teacher_config.vocab_size} ids) differs from the "
                              f"student's ({student_config.vocab_size}): distil on data made with the teacher's "
                              "tokenizer (scratchllm prepare --tokenizer TEACHER/tokenizer)")
    if teacher_config.context_length < student_config.context_length and teacher_config.pos_encoding == "learned":
        raise ScratchLLMError(f"the teacher reads at most {teacher_config.context_length} tokens, the student's "
                              f"windows are {student_config.context_length}: set model.context_length <= "
                              f"{teacher_config.context_length}")
