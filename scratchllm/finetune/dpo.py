"""Direct preference optimisation (Rafailov et al. 2023; the book's bonus notebook on DPO): an
instruction-tuned model learns to prefer the chosen answer of each pair over the rejected one,
with no reward model and no sampling.

For a prompt x with a chosen answer y_w and a rejected one y_l, a policy pi (trained) and a
frozen reference copy pi_ref of where it started,

    r_w = log pi(y_w | x) - log pi_ref(y_w | x)          the chosen reward (the book's, without beta)
    r_l = log pi(y_l | x) - log pi_ref(y_l | x)          the rejected reward
    loss = -log sigmoid(beta * (r_w - r_l))              log 2 = 0.693 at the start (pi = pi_ref)

where log pi(y | x) is, as in the book's ``compute_logprobs``, the mean log-probability of the
answer's tokens (the prompt's targets are masked, as its collate does by default). The answer
here ends with its end-of-text token, which the instruction-tuned model learnt to write, so that
too is scored (the book's preference collate leaves it out). The reference runs without
gradients and never changes; the trainer logs the chosen and rejected rewards and their margin
as loss terms (``loss_chosen_reward``, ...), each a mean per pair.

>>> dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]), beta=0.1)
(tensor([0.6444]), tensor([0.5000]), tensor([-0.5000]))
"""

from __future__ import annotations

import contextlib
import copy
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.errors import ScratchLLMError
from scratchllm.fileio import atomic_write_json
from scratchllm.finetune.classify import padding_id
from scratchllm.finetune.instruct import collate_instructions
from scratchllm.finetune.records import Located
from scratchllm.finetune.templates import Conversation, Template, as_conversation, get_template, instruct_task
from scratchllm.train import TrainConfig, Trainer
from scratchllm.train.distributed import DistributedContext, all_reduce_sum
from scratchllm.train.losses import IGNORE_INDEX, Loss
from scratchllm.train.metrics import read_metrics

RESULTS_FILE = "results.json"
TERMS = ("chosen_reward", "rejected_reward", "margin")

# chosen inputs, chosen targets, rejected inputs, rejected targets: (B, T) each, prompt targets ignored
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pair (B,): the DPO loss, and the chosen and rejected rewards (detached), from sequence log-probabilities."""
    chosen_reward = policy_chosen - reference_chosen
    rejected_reward = policy_rejected - reference_rejected
    losses = -F.logsigmoid(beta * (chosen_reward - rejected_reward))
    return losses, chosen_reward.detach(), rejected_reward.detach()


def sequence_logprobs(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,): the mean log-probability of each row's scored targets (those not ``IGNORE_INDEX``)."""
    logits = model(inputs).float()  # (B, T, vocab)
    scored = targets != IGNORE_INDEX
    picked = torch.gather(F.log_softmax(logits, dim=-1), -1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * scored).sum(-1) / scored.sum(-1)


def preference_loss(reference: nn.Module, beta: float = 0.1):
    """The trainer's loss: DPO summed over the batch's pairs, with the rewards and margin as terms."""

    def loss(model: nn.Module, batch: Batch) -> Loss:
        chosen_x, chosen_y, rejected_x, rejected_y = batch
        with torch.no_grad():
            ref_chosen = sequence_logprobs(reference, chosen_x, chosen_y)
            ref_rejected = sequence_logprobs(reference, rejected_x, rejected_y)
        losses, chosen, rejected = dpo_loss(sequence_logprobs(model, chosen_x, chosen_y),
                                            sequence_logprobs(model, rejected_x, rejected_y),
                                            ref_chosen, ref_rejected, beta)
        return Loss(losses.sum(), {"chosen_reward": chosen.sum(), "rejected_reward": rejected.sum(),
                                   "margin": (chosen - rejected).sum()})

    return loss


def pairs_in(batch: Batch) -> int:
    """The trainer's units for DPO: preference pairs."""
    return len(batch[0])


def frozen_reference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` that never trains: eval mode (no dropout), no parameter requires a gradient."""
    reference = copy.deepcopy(model).eval()
    return reference.requires_grad_(False)


# -- records and batches --------------------------------------------------------------------

@dataclass(frozen=True)
class Pair:
    """One preference record, encoded: the prompt's ids and each answer's (closed by its end-of-text)."""

    where: str
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


def preference_prompt(record: Mapping[str, Any]) -> Conversation:
    """The open conversation of a preference record: ``prompt`` (text, or a message list ending with
    the user's) or the book's ``instruction`` and ``input``."""
    if "prompt" in record:
        prompt = record["prompt"]
        conversation = as_conversation({"instruction": prompt} if isinstance(prompt, str) else prompt)
    else:
        conversation = as_conversation({"instruction": record.get("instruction"), "input": record.get("input")}
                                       if "instruction" in record else record)
    if not conversation.is_open:
        raise ScratchLLMError("the prompt's messages end with an answer; end them with the user's message")
    return conversation


def encode_pairs(records: Sequence[Located], tokenizer: Any, template: Template) -> list[Pair]:
    """Each ``{prompt or instruction/input, chosen, rejected}`` record through the template into ids."""
    eot = template.stop_ids(tokenizer)[0]
    pairs = []
    for where, record in records:
        try:
            for key in ("chosen", "rejected"):
                if not isinstance(record.get(key), str):
                    raise ScratchLLMError(f"the record has no '{key}' answer (a text)")
            prompt = template.prompt_ids(tokenizer, preference_prompt(record))
        except ScratchLLMError as err:
            raise ScratchLLMError(f"{where}: {err}") from None
        chosen, rejected = ([*tokenizer.encode_ordinary(record[key]), eot] for key in ("chosen", "rejected"))
        pairs.append(Pair(where, prompt, prompt + chosen, prompt + rejected))
    return pairs


def batch_of(pairs: Sequence[Pair], pad_id: int, max_len: int) -> Batch:
    """Chosen and rejected sequences of a batch, only their answers' targets scored."""
    out = []
    for key in ("chosen", "rejected"):
        ids = [getattr(p, key) for p in pairs]
        responses = [[i >= len(p.prompt) for i in range(len(x))] for p, x in zip(pairs, ids, strict=True)]
        out += collate_instructions(ids, pad_id, responses=responses, max_len=max_len)
    return tuple(out)


class PairBatches:
    """Training batches of pairs, reshuffled each epoch from ``seed + epoch``, the last short one
    dropped; resumable (``state_dict``)."""

    def __init__(self, pairs: Sequence[Pair], batch_size: int, pad_id: int, max_len: int, seed: int = 123) -> None:
        if len(pairs) < batch_size:
            raise ScratchLLMError(f"{len(pairs)} training pairs are fewer than one batch of {batch_size}; "
                                  "lower --batch-size")
        self.pairs, self.batch_size, self.pad_id, self.max_len = list(pairs), batch_size, pad_id, max_len
        self.seed = seed
        self.epoch, self.position = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return len(self.pairs) // self.batch_size

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self.position >= self.steps_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        order = list(range(len(self.pairs)))
        random.Random(self.seed + self.epoch).shuffle(order)
        rows = order[self.position * self.batch_size:(self.position + 1) * self.batch_size]
        self.position += 1
        return batch_of([self.pairs[r] for r in rows], self.pad_id, self.max_len)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


def preference_evaluator(batches: Sequence[Batch], reference: nn.Module, beta: float):
    """The trainer's evaluator: the DPO loss on held-out pairs, and their mean rewards and margin."""
    loss = preference_loss(reference, beta)

    @torch.no_grad()
    def evaluate(model: nn.Module, precision_ctx, dist: DistributedContext) -> dict[str, float]:
        was_training = model.training
        model.eval()
        sums = [0.0] * (1 + len(TERMS))
        count = 0
        for i, batch in enumerate(batches):
            if i % dist.world_size != dist.rank:
                continue
            with precision_ctx():
                got = loss(model, tuple(t.to(dist.device) for t in batch))
            for j, value in enumerate([got.total, *(got.terms[t] for t in TERMS)]):
                sums[j] += float(value)
            count += pairs_in(batch)
        model.train(was_training)
        *sums, count = all_reduce_sum(dist, *sums, count)
        if not count:
            raise ScratchLLMError("no held-out pairs to score")
        return {"val_loss": sums[0] / count, **{f"val_{t}": s / count for t, s in zip(TERMS, sums[1:], strict=True)}}

    return evaluate


# -- tuning ---------------------------------------------------------------------------------

@dataclass
class DPOSettings:
    """How a model is preference-tuned (the book's DPO notebook's values by default)."""

    template: str = "alpaca"
    beta: float = 0.1
    epochs: int = 1
    batch_size: int = 8
    lr: float = 5e-6
    weight_decay: float = 0.01
    eval_every: int = 5  # the book's eval_freq
    seed: int = 123
    precision: str = "fp32"

    def __post_init__(self) -> None:
        get_template(self.template)
        if not self.beta > 0:
            raise ScratchLLMError(f"--beta must be above 0, got {self.beta}")
        if self.epochs < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise ScratchLLMError("--epochs, --batch-size and --eval-every must be at least 1")


@dataclass
class DPOResult:
    """What a DPO run measured (also written to ``RUN/results.json``)."""

    run_dir: str
    template: str
    examples: dict[str, int]
    before: dict[str, float]  # val/test loss and rewards before training (loss log 2, rewards 0)
    after: dict[str, float]
    evaluations: list[dict[str, float]]  # step, val_loss, val rewards and margin
    train_log: list[dict[str, float]]  # step, loss, rewards and margin of the training batches
    trainable_params: int
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)


def tune(model: nn.Module, tokenizer: Any, splits: tuple[Sequence[Located], Sequence[Located], Sequence[Located]],
         run_dir: str | Path, settings: DPOSettings | None = None, *, resume: bool = False,
         progress: bool = True) -> DPOResult:
    """Preference-tune ``model`` (instruction-tuned) on (train, validation, test) records into ``run_dir``."""
    s = settings or DPOSettings()
    template = get_template(s.template)
    pad_id, context = padding_id(tokenizer), model.config.context_length
    encoded = {name: encode_pairs(part, tokenizer, template) for name, part in zip(("train", "val", "test"), splits,
                                                                                    strict=True)}
    unscored = {name: sum(len(p.prompt) >= context for p in part) for name, part in encoded.items()}
    if any(unscored.values()):  # an answer that starts past the context has no token to score
        encoded = {name: [p for p in part if len(p.prompt) < context] for name, part in encoded.items()}
        if progress:
            print(f"{sum(unscored.values())} pairs are left out: their prompt fills the context of {context} tokens")
    reference = frozen_reference(model)  # the start, also when resuming (the trainer loads the run in fit)
    held_out = {name: [batch_of(encoded[name][i:i + s.batch_size], pad_id, context)
                       for i in range(0, len(encoded[name]), s.batch_size)] for name in ("val", "test")}
    device = DistributedContext(device=next(model.parameters()).device)

    def measure() -> dict[str, float]:
        out = {}
        for name, batches in held_out.items():
            record = preference_evaluator(batches, reference, s.beta)(model, contextlib.nullcontext, device)
            out.update({f"{name}_{k.removeprefix('val_')}": v for k, v in record.items()})
        return out

    before = measure()
    batches = PairBatches(encoded["train"], s.batch_size, pad_id, context, s.seed)
    steps = batches.steps_per_epoch
    config = TrainConfig(max_steps=s.epochs * steps, batch_size=s.batch_size, lr=s.lr, min_lr=s.lr, warmup_steps=0,
                         weight_decay=s.weight_decay, beta2=0.999, grad_clip=0.0, eval_interval=s.eval_every,
                         eval_batches=0, checkpoint_interval=steps, keep_last=1, sample_tokens=0, log_interval=1,
                         precision=s.precision, seed=s.seed, eval_at_start=False)
    trainer = Trainer(model, batches, run_dir, settings=config, loss=preference_loss(reference, s.beta),
                      units=pairs_in, evaluate=preference_evaluator(held_out["val"], reference, s.beta),
                      tokenizer=tokenizer, progress=progress, task=instruct_task(template, method="dpo"))
    done = trainer.fit(resume=resume)
    after = measure()
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    evaluations = [{k: r[k] for k in ("step", "val_loss", *(f"val_{t}" for t in TERMS))}
                   for r in metrics if "val_margin" in r]
    train_log = [{k: r[k] for k in ("step", "loss", *(f"loss_{t}" for t in TERMS))} for r in metrics
                 if "loss_margin" in r]
    result = DPOResult(str(run_dir), template.name, {k: len(v) for k, v in encoded.items()}, before, after,
                       evaluations, train_log, sum(p.numel() for p in model.parameters() if p.requires_grad),
                       done.seconds, asdict(s))
    atomic_write_json(run_dir / RESULTS_FILE, asdict(result))
    return result


def describe(result: DPOResult) -> list[str]:
    """Before and after, per held-out split: loss, rewards and margin."""
    lines = []
    for split in ("val", "test"):
        b, a = result.before, result.after
        lines.append(f"{split}: loss {b[f'{split}_loss']:.4f} -> {a[f'{split}_loss']:.4f}, chosen reward "
                     f"{a[f'{split}_chosen_reward']:+.4f}, rejected reward {a[f'{split}_rejected_reward']:+.4f}, "
                     f"margin {b[f'{split}_margin']:+.4f} -> {a[f'{split}_margin']:+.4f}")
    return lines
