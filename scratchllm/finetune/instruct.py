"""Instruction fine-tuning, the book's chapter 7: a pretrained GPT learns to answer.

    records -> template text (templates.py) -> token ids, each response closed by <|endoftext|>
            -> batches padded with <|padding|> to the longest (+1), inputs and targets shifted by one
            -> next-token loss over the scored targets, through the one Trainer

Collation is the book's ``custom_collate_fn``: each sequence gets its end-of-text token, the
batch is padded to its longest sequence, the targets are the inputs shifted left, the first
target after each text (its end-of-text) is kept so that the model learns to stop, and every
padding target after it is ``IGNORE_INDEX`` (-100). The book pads with ``<|endoftext|>`` itself
(50256); a tokenizer trained here has ``<|padding|>`` and pads with it, so ``<|endoftext|>``
means only "the answer ends here". With ``mask_prompt`` (the book's exercise 7.2) the targets
inside the prompt are ignored too, so only the response (and its end) is learnt. Sequences longer
than the context are cut to it, as the book's ``allowed_max_length`` cuts them, and counted.

The data is split as the book splits it (records.book_split); the loss on held-out responses is
measured before and after training, and the model's answers to the test prompts (greedy, as the
book generates them) are written to ``RUN/responses.json`` beside each record, ready for a judge
(judge.py).

>>> collate_instructions([[5, 6, 7, 0], [8, 0]], pad_id=9)  # 0 is each text's end-of-text
(tensor([[5, 6, 7],
        [8, 0, 9]]), tensor([[   6,    7,    0],
        [   0, -100, -100]]))
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchllm.checkpoint import unwrap_model
from scratchllm.errors import ScratchLLMError
from scratchllm.fileio import atomic_write_json
from scratchllm.finetune.classify import padding_id
from scratchllm.finetune.lora import apply_lora
from scratchllm.finetune.records import Located
from scratchllm.finetune.templates import Conversation, Template, as_conversation, get_template, instruct_task
from scratchllm.inference import Engine, SamplingSettings
from scratchllm.train import TrainConfig, Trainer
from scratchllm.train.distributed import DistributedContext
from scratchllm.train.loop import mean_loss_evaluator
from scratchllm.train.losses import IGNORE_INDEX
from scratchllm.train.metrics import read_metrics

RESULTS_FILE = "results.json"
RESPONSES_FILE = "responses.json"

Batch = tuple[torch.Tensor, torch.Tensor]  # inputs (B, T), targets (B, T)


@dataclass(frozen=True)
class Example:
    """One record, encoded: its token ids (responses closed by their end-of-text) and which of them
    belong to a response."""

    where: str
    record: dict[str, Any]
    conversation: Conversation
    ids: list[int]
    response: list[bool]


def encode_records(records: Sequence[Located], tokenizer: Any, template: Template) -> list[Example]:
    """Each record through the template into ids; a record without a response cannot be learnt from."""
    examples = []
    for where, record in records:
        try:
            conversation = as_conversation(record)
        except ScratchLLMError as err:
            raise ScratchLLMError(f"{where}: {err}") from None
        if conversation.is_open:
            raise ScratchLLMError(f"{where}: the record has no response to learn (give its 'output', or end its "
                                  "messages with the assistant's)")
        ids, response = template.encode(tokenizer, conversation)
        examples.append(Example(where, record, conversation, ids, response))
    return examples


def collate_instructions(ids: Sequence[Sequence[int]], pad_id: int, *,
                         responses: Sequence[Sequence[bool]] | None = None, max_len: int | None = None) -> Batch:
    """Inputs and targets (B, T) of sequences that already end with their end-of-text token.

    The batch is as wide as its longest sequence minus one (the book's ``batch_max_length`` is the
    longest text + 1, its end-of-text, and the inputs drop the last column); padding targets are
    ``IGNORE_INDEX``, and so are the targets outside the ``responses`` masks when given (prompt
    masking). ``max_len`` cuts every row to that many positions (the book's ``allowed_max_length``).
    """
    width = max(len(x) for x in ids) - 1
    inputs = torch.full((len(ids), width), pad_id, dtype=torch.long)
    targets = torch.full((len(ids), width), IGNORE_INDEX, dtype=torch.long)
    for row, x in enumerate(ids):
        x = torch.tensor(x, dtype=torch.long)
        inputs[row, :min(len(x), width)] = x[:width]  # a shorter row's end-of-text is an input too, as in the book
        target = x[1:].clone()
        if responses is not None:  # target j is token j + 1: scored only where that token is a response's
            target[~torch.tensor(responses[row][1:], dtype=torch.bool)] = IGNORE_INDEX
        targets[row, :len(x) - 1] = target
    if max_len is not None:
        inputs, targets = inputs[:, :max_len], targets[:, :max_len]
    return inputs, targets


class InstructionBatches:
    """Training batches, reshuffled each epoch from ``seed + epoch``, the last short batch dropped
    (the book's DataLoader with ``shuffle=True, drop_last=True``); its state lets a resumed run
    continue exactly."""

    def __init__(self, examples: Sequence[Example], batch_size: int, pad_id: int, max_len: int,
                 mask_prompt: bool = False, seed: int = 123) -> None:
        if len(examples) < batch_size:
            raise ScratchLLMError(f"{len(examples)} training records are fewer than one batch of {batch_size}; "
                                  "lower --batch-size")
        self.examples, self.batch_size, self.pad_id, self.max_len = list(examples), batch_size, pad_id, max_len
        self.mask_prompt, self.seed = mask_prompt, seed
        self.epoch, self.position = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return len(self.examples) // self.batch_size

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self.position >= self.steps_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        order = list(range(len(self.examples)))
        random.Random(self.seed + self.epoch).shuffle(order)
        rows = [self.examples[r] for r in order[self.position * self.batch_size:(self.position + 1) * self.batch_size]]
        self.position += 1
        return batch_of(rows, self.pad_id, self.max_len, self.mask_prompt)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


def batch_of(examples: Sequence[Example], pad_id: int, max_len: int, mask_prompt: bool = False) -> Batch:
    """One batch of examples (``mask_prompt``: only response targets scored)."""
    return collate_instructions([e.ids for e in examples], pad_id, max_len=max_len,
                                responses=[e.response for e in examples] if mask_prompt else None)


def fixed_batches(examples: Sequence[Example], batch_size: int, pad_id: int, max_len: int,
                  mask_prompt: bool = False) -> list[Batch]:
    """Batches in order, the last one short (evaluation)."""
    return [batch_of(examples[i:i + batch_size], pad_id, max_len, mask_prompt)
            for i in range(0, len(examples), batch_size)]


def held_out_evaluator(examples: Sequence[Example], batch_size: int, pad_id: int, max_len: int,
                       mask_prompt: bool = False):
    """The trainer's evaluator: ``val_loss`` as training scores it (every target, or only the
    responses with ``mask_prompt``) and ``val_response_loss``, the mean loss of the response tokens
    and their end-of-text alone."""
    as_trained = mean_loss_evaluator(fixed_batches(examples, batch_size, pad_id, max_len, mask_prompt))
    responses = mean_loss_evaluator(fixed_batches(examples, batch_size, pad_id, max_len, True))

    def evaluate(model: nn.Module, precision_ctx, dist: DistributedContext) -> dict[str, float]:
        return {"val_loss": as_trained(model, precision_ctx, dist)["val_loss"],
                "val_response_loss": responses(model, precision_ctx, dist)["val_loss"]}

    return evaluate


def held_out_losses(model: nn.Module, splits: dict[str, Sequence[Example]], batch_size: int, pad_id: int,
                    max_len: int, mask_prompt: bool = False) -> dict[str, float]:
    """``{split}_loss`` and ``{split}_response_loss`` of each named split."""
    dist = DistributedContext(device=next(model.parameters()).device)
    out = {}
    for name, examples in splits.items():
        evaluate = held_out_evaluator(examples, batch_size, pad_id, max_len, mask_prompt)
        record = evaluate(model, contextlib.nullcontext, dist)
        out[f"{name}_loss"], out[f"{name}_response_loss"] = record["val_loss"], record["val_response_loss"]
    return out


# -- answering ------------------------------------------------------------------------------

@torch.no_grad()
def respond(model: nn.Module, tokenizer: Any, template: Template, conversations: Sequence[Conversation], *,
            max_new_tokens: int = 256, batch_size: int = 8, temperature: float = 0.0, seed: int | None = 123,
            progress: bool = False) -> list[str]:
    """The model's answer to each open conversation (greedy by default, as the book generates),
    decoded and cut at the template's stop strings. Several run at once in one ``Engine``; each
    gets at most ``max_new_tokens``, and no more than its context leaves after its prompt (a prompt
    that fills the context gets the answer "")."""
    from tqdm import tqdm

    model = unwrap_model(model)
    engine = Engine(model, max_batch=batch_size)
    stops = template.stop_ids(tokenizer)
    sids: dict[int, int] = {}
    for i, conversation in enumerate(conversations):
        prompt = template.prompt_ids(tokenizer, conversation)
        room = min(max_new_tokens, engine.max_len - len(prompt))
        if room >= 1:
            settings = SamplingSettings(room, temperature, seed=None if seed is None else seed + i, stop_ids=stops)
            sids[engine.add(prompt, settings)] = i
    new: dict[int, list[int]] = {i: [] for i in range(len(conversations))}
    with tqdm(total=len(sids), desc="respond", unit="answer", disable=not progress) as bar:
        while engine.active:
            for event in engine.step():
                if event.token not in stops:
                    new[sids[event.sid]].append(event.token)
                if event.finished:
                    bar.update(1)
    return [template.response(tokenizer.decode(new[i])) for i in range(len(conversations))]


# -- fine-tuning ----------------------------------------------------------------------------

@dataclass
class InstructSettings:
    """How a model is instruction-tuned (the book's chapter-7 values by default)."""

    template: str = "alpaca"
    train: str = "all"  # all | lora (adapters on lora_targets, every other weight frozen)
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("attention", "ffn")  # a tied head cannot take an adapter
    epochs: int = 2
    batch_size: int = 8
    lr: float = 5e-5
    weight_decay: float = 0.1
    mask_prompt: bool = False  # the book's exercise 7.2: learn only the responses
    eval_every: int = 0  # steps between validation losses; 0: four times per epoch
    max_new_tokens: int = 256  # per answer to a test prompt
    seed: int = 123
    precision: str = "fp32"
    grad_clip: float = 0.0  # the book does not clip

    def __post_init__(self) -> None:
        get_template(self.template)
        if self.train not in ("all", "lora"):
            raise ScratchLLMError(f"--train must be all or lora, got {self.train!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ScratchLLMError("--epochs and --batch-size must be at least 1")
        if self.max_new_tokens < 0 or self.eval_every < 0:
            raise ScratchLLMError("--max-new-tokens and --eval-every must be at least 0")


@dataclass
class InstructResult:
    """What an instruction-tuning run measured (also written to ``RUN/results.json``)."""

    run_dir: str
    template: str
    examples: dict[str, int]  # records per split
    before: dict[str, float]  # val/test loss (as trained) and response loss, before training
    after: dict[str, float]
    evaluations: list[dict[str, float]]  # step, val_loss, val_response_loss
    truncated: int  # records longer than the context, cut to it
    trainable_params: int
    seconds: float
    responses: str  # the file of the test records with the model's answers
    settings: dict[str, Any] = field(default_factory=dict)


def fine_tune(model: nn.Module, tokenizer: Any, splits: tuple[Sequence[Located], Sequence[Located], Sequence[Located]],
              run_dir: str | Path, settings: InstructSettings | None = None, *, resume: bool = False,
              progress: bool = True) -> InstructResult:
    """Instruction-tune ``model`` on (train, validation, test) records into ``run_dir``: every
    parameter, or (``train="lora"``) LoRA adapters put on the model here."""
    s = settings or InstructSettings()
    if s.train == "lora":
        apply_lora(model, s.lora_rank, s.lora_alpha, s.lora_targets)
    template = get_template(s.template)
    pad_id, context = padding_id(tokenizer), model.config.context_length
    encoded = {name: encode_records(part, tokenizer, template) for name, part in zip(("train", "val", "test"), splits,
                                                                                       strict=True)}
    truncated = sum(len(e.ids) - 1 > context for part in encoded.values() for e in part)
    if truncated and progress:
        print(f"{truncated} records are longer than the context of {context} tokens: they are cut to their first "
              f"{context} (a cut response loses its end-of-text)")
    batches = InstructionBatches(encoded["train"], s.batch_size, pad_id, context, s.mask_prompt, s.seed)
    steps = batches.steps_per_epoch
    eval_every = s.eval_every or max(1, steps // 4)
    held_out = {"val": encoded["val"], "test": encoded["test"]}
    run_dir = Path(run_dir)
    # the base model's losses (also when resuming: the trainer loads the run's weights only in fit)
    before = held_out_losses(model, held_out, s.batch_size, pad_id, context, s.mask_prompt)
    config = TrainConfig(max_steps=s.epochs * steps, batch_size=s.batch_size, lr=s.lr, min_lr=s.lr, warmup_steps=0,
                         weight_decay=s.weight_decay, beta2=0.999, grad_clip=s.grad_clip, eval_interval=eval_every,
                         eval_batches=0, checkpoint_interval=steps, keep_last=1, sample_tokens=0, plot=True,
                         log_interval=max(1, min(eval_every, steps // 20)), precision=s.precision, seed=s.seed,
                         eval_at_start=False)  # beta2: the book's AdamW keeps torch's default
    trainer = Trainer(model, batches, run_dir, settings=config,
                      evaluate=held_out_evaluator(encoded["val"], s.batch_size, pad_id, context, s.mask_prompt),
                      tokenizer=tokenizer, progress=progress, task=instruct_task(template, method="sft"))
    done = trainer.fit(resume=resume)
    after = held_out_losses(model, held_out, s.batch_size, pad_id, context, s.mask_prompt)
    answers = respond(model, tokenizer, template, [e.conversation.to_prompt() for e in encoded["test"]],
                      max_new_tokens=s.max_new_tokens, batch_size=s.batch_size, progress=progress) \
        if s.max_new_tokens else [""] * len(encoded["test"])
    responses = [{**e.record, "model_response": a} for e, a in zip(encoded["test"], answers, strict=True)]
    atomic_write_json(run_dir / RESPONSES_FILE, responses)
    evaluations = [{k: r[k] for k in ("step", "val_loss", "val_response_loss")}
                   for r in read_metrics(run_dir) if "val_response_loss" in r]
    params = [p for p in model.parameters() if p.requires_grad]
    result = InstructResult(str(run_dir), template.name, {k: len(v) for k, v in encoded.items()}, before, after,
                            evaluations, truncated, sum(p.numel() for p in params), done.seconds,
                            str(run_dir / RESPONSES_FILE), asdict(s))
    atomic_write_json(run_dir / RESULTS_FILE, asdict(result))
    return result


def describe_losses(result: InstructResult) -> list[str]:
    """Before and after, per held-out split: the loss as trained and over the responses alone."""
    lines = []
    for split in ("val", "test"):
        b, a = result.before, result.after
        lines.append(f"{split}: loss {b[f'{split}_loss']:.4f} -> {a[f'{split}_loss']:.4f}, response loss "
                     f"{b[f'{split}_response_loss']:.4f} -> {a[f'{split}_response_loss']:.4f}")
    return lines
