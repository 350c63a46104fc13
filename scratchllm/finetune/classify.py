"""Text classification by fine-tuning a GPT, the book's chapter 6.

    texts -> token ids, right-padded with <|padding|> to the longest in the batch
          -> GPT with a new head of one row per class -> the logits at the last real token
          -> cross-entropy, summed over examples (the trainer divides by the examples of the step)

The book's recipe is the default: ``replace_head`` (one output per class, with a bias), and only
the last transformer block, the final norm and the head train (``trainable_parameters``). A causal
model's last real token has read the whole text and no padding (padding comes after it), so its
logits are those of the text run alone, however long the batch is padded. Mean pooling averages
the logits of the real tokens instead, which is the head applied to their mean hidden state (the
head is affine).

Everything trains through the one ``Trainer``: a step is a batch of examples, an epoch
``len(train) // batch_size`` steps (the book's ``drop_last``), an evaluation at every epoch's end
gives validation loss and accuracy and train accuracy. Checkpoints record the label names
(``checkpoint.read_task``), so ``scratchllm classify`` can name the class it predicts.

>>> from scratchllm.model import GPT, GPTConfig
>>> model = GPT(GPTConfig.preset("tiny"))
>>> params = prepare_classifier(model, num_classes=2)
>>> class_logits(model, torch.tensor([[5, 6, 7, 0]]), torch.tensor([3])).shape
torch.Size([1, 2])
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.checkpoint import load_checkpoint, read_task, unwrap_model
from scratchllm.errors import ScratchLLMError
from scratchllm.fileio import atomic_write_json, exclusive_lock
from scratchllm.finetune.labelled import Example, label_names
from scratchllm.finetune.lora import apply_lora
from scratchllm.model.surgery import replace_head
from scratchllm.tokenizer import ENDOFTEXT, PADDING
from scratchllm.train import TrainConfig, Trainer
from scratchllm.train.distributed import DistributedContext
from scratchllm.train.losses import Loss
from scratchllm.train.metrics import read_metrics

TASK = "classify"
POOLINGS = ("last", "mean")
PADDINGS = ("longest", "context")
RESULTS_FILE = "results.json"
CONFUSION_PLOT = "confusion.png"
CURVES_PLOT = "accuracy.png"

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # inputs (B, T), lengths (B,), class ids (B,)


# -- the model ------------------------------------------------------------------------------

def trainable_parameters(model: nn.Module, train: str = "last-block") -> list[nn.Parameter]:
    """The parameters that fine-tune: ``last-block`` (the book: last block, final norm, head),
    ``last-N`` (the last N blocks, final norm, head) or ``all``.

    >>> from scratchllm.model import GPT, GPTConfig
    >>> model = GPT(GPTConfig.preset("tiny"))
    >>> len(trainable_parameters(model, "all")) > len(trainable_parameters(model, "last-2"))
    True
    """
    if train == "all":
        return list(model.parameters())
    n = 1 if train == "last-block" else None
    if n is None and train.startswith("last-") and train.removeprefix("last-").isdigit():
        n = int(train.removeprefix("last-"))
    if n is None or not 1 <= n <= len(model.trf_blocks):
        raise ScratchLLMError(f"--train must be last-block, last-N (N from 1 to {len(model.trf_blocks)}), all or "
                              f"lora, got {train!r}")
    chosen = [*model.trf_blocks[-n:], model.final_norm, model.out_head]
    return [p for module in chosen for p in module.parameters()]


def prepare_classifier(model: nn.Module, num_classes: int, train: str = "last-block", *, lora_rank: int = 16,
                       lora_alpha: float = 16.0, lora_targets: Sequence[str] = ("all",)) -> list[nn.Parameter]:
    """Give ``model`` a head of ``num_classes`` rows and return the parameters to train.

    ``train="lora"`` is the book's appendix E: every weight frozen (the new head's too) and LoRA
    adapters on the ``lora_targets`` layers, the head included by default; only they train.
    """
    replace_head(model, num_classes)
    if train == "lora":
        apply_lora(model, lora_rank, lora_alpha, lora_targets)
        return [p for p in model.parameters() if p.requires_grad]
    return trainable_parameters(model, train)


def class_logits(model: nn.Module, inputs: torch.Tensor, lengths: torch.Tensor, pooling: str = "last") -> torch.Tensor:
    """Class logits (B, C) of right-padded ``inputs`` (B, T) whose first ``lengths`` tokens are real."""
    if pooling == "last":
        return model(inputs, at=lengths - 1)[:, 0]
    if pooling == "mean":
        logits = model(inputs)  # (B, T, C): the head on every position, then the mean over the real ones
        real = torch.arange(inputs.shape[1], device=inputs.device)[None, :] < lengths[:, None]
        return (logits * real.unsqueeze(-1)).sum(1) / lengths[:, None].to(logits.dtype)
    raise ScratchLLMError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")


def classification_loss(pooling: str = "last") -> Callable[[nn.Module, Batch], Loss]:
    """The trainer's loss: cross-entropy of the class logits, summed over the batch's examples."""

    def loss(model: nn.Module, batch: Batch) -> Loss:
        inputs, lengths, labels = batch
        return Loss(F.cross_entropy(class_logits(model, inputs, lengths, pooling).float(), labels, reduction="sum"))

    return loss


def examples_in(batch: Batch) -> int:
    """The trainer's units for a classifier: examples."""
    return len(batch[2])


# -- batches --------------------------------------------------------------------------------

def padding_id(tokenizer: Any) -> int:
    """``<|padding|>``'s id; a tokenizer without one pads with ``<|endoftext|>`` (the book's 50256)."""
    specials = getattr(tokenizer, "special_tokens", {})
    for name in (PADDING, ENDOFTEXT):
        if name in specials:
            return specials[name]
    raise ScratchLLMError(f"the tokenizer has neither {PADDING} nor {ENDOFTEXT} to pad batches with")


def encode_texts(texts: Sequence[str], tokenizer: Any, max_tokens: int,
                 truncate: bool = True) -> tuple[list[list[int]], int]:
    """Token ids of each text, cut to its first ``max_tokens`` (or, without ``truncate``, refused
    when longer); and how many were cut."""
    ids, cut = [], 0
    for i, text in enumerate(texts):
        tokens = tokenizer.encode_ordinary(text)
        if not tokens:
            raise ScratchLLMError(f"text {i + 1} is empty: a classifier needs at least one token to read")
        if len(tokens) > max_tokens and not truncate:
            raise ScratchLLMError(f"text {i + 1} is {len(tokens)} tokens, longer than the context of {max_tokens} "
                                  f"(it starts {text[:40]!r}); leave out --no-truncate to read its first {max_tokens}")
        cut += len(tokens) > max_tokens
        ids.append(tokens[:max_tokens])
    return ids, cut


def collate(ids: Sequence[Sequence[int]], pad_id: int, pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists to the longest (or to ``pad_to``): inputs (B, T) and lengths (B,).

    >>> collate([[7, 8, 9], [5]], pad_id=0)
    (tensor([[7, 8, 9],
            [5, 0, 0]]), tensor([3, 1]))
    """
    width = pad_to or max(len(x) for x in ids)
    inputs = torch.full((len(ids), width), pad_id, dtype=torch.long)
    for row, x in enumerate(ids):
        inputs[row, :len(x)] = torch.tensor(x, dtype=torch.long)
    return inputs, torch.tensor([len(x) for x in ids], dtype=torch.long)


def make_batches(ids: Sequence[Sequence[int]], classes: Sequence[int], batch_size: int, pad_id: int,
                 pad_to: int | None = None) -> list[Batch]:
    """Fixed batches in order, the last one short (evaluation)."""
    return [(*collate(ids[i:i + batch_size], pad_id, pad_to), torch.tensor(classes[i:i + batch_size]))
            for i in range(0, len(ids), batch_size)]


class EpochBatches:
    """Training batches, reshuffled each epoch from ``seed + epoch``; the last short batch of an epoch
    is dropped (the book's ``drop_last``). Its state (epoch, batch) lets a resumed run continue exactly."""

    def __init__(self, ids: Sequence[Sequence[int]], classes: Sequence[int], batch_size: int, pad_id: int,
                 pad_to: int | None = None, seed: int = 123) -> None:
        if len(ids) < batch_size:
            raise ScratchLLMError(f"{len(ids)} training examples are fewer than one batch of {batch_size}; "
                                  "lower --batch-size")
        self.ids, self.classes, self.batch_size = list(ids), list(classes), batch_size
        self.pad_id, self.pad_to, self.seed = pad_id, pad_to, seed
        self.epoch, self.position = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return len(self.ids) // self.batch_size

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self.position >= self.steps_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        order = list(range(len(self.ids)))
        random.Random(self.seed + self.epoch).shuffle(order)
        rows = order[self.position * self.batch_size:(self.position + 1) * self.batch_size]
        self.position += 1
        return (*collate([self.ids[r] for r in rows], self.pad_id, self.pad_to),
                torch.tensor([self.classes[r] for r in rows]))

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


# -- evaluation -----------------------------------------------------------------------------

@torch.no_grad()
def score(model: nn.Module, batches: Sequence[Batch], num_classes: int, pooling: str = "last",
          dist: DistributedContext | None = None, precision_ctx: Callable[[], Any] | None = None,
          ) -> tuple[float, torch.Tensor]:
    """Mean loss and the confusion matrix (C, C) of ``batches``: row = true class, column = predicted."""
    dist = dist or DistributedContext(device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    total, confusion = 0.0, torch.zeros(num_classes, num_classes, dtype=torch.float64)
    for i, (inputs, lengths, labels) in enumerate(batches):
        if not dist.takes(i):
            continue
        inputs, lengths, labels = inputs.to(dist.device), lengths.to(dist.device), labels.to(dist.device)
        with (precision_ctx or contextlib.nullcontext)():
            logits = class_logits(model, inputs, lengths, pooling).float()
        total += float(F.cross_entropy(logits, labels, reduction="sum"))
        confusion.index_put_((labels.cpu(), logits.argmax(-1).cpu()), torch.ones(len(labels), dtype=torch.float64),
                             accumulate=True)
    model.train(was_training)
    total, *cells = dist.eval_sum(total, *confusion.flatten().tolist())
    confusion = torch.tensor(cells, dtype=torch.float64).reshape(num_classes, num_classes)
    if not confusion.sum():
        raise ScratchLLMError("nothing to score: the evaluation split is empty")
    return total / float(confusion.sum()), confusion


def accuracy(confusion: torch.Tensor) -> float:
    """The fraction on the diagonal.

    >>> accuracy(torch.tensor([[3.0, 1.0], [0.0, 4.0]]))
    0.875
    """
    return float(confusion.diagonal().sum() / confusion.sum())


def classifier_evaluator(val: Sequence[Batch], train: Sequence[Batch], num_classes: int, pooling: str = "last"):
    """The trainer's evaluator: validation loss and accuracy, and train loss and accuracy."""

    def evaluate(model: nn.Module, precision_ctx: Callable[[], Any], dist: DistributedContext) -> dict[str, float]:
        record = {}
        for name, batches in (("val", val), ("train", train)):
            loss, confusion = score(model, batches, num_classes, pooling, dist, precision_ctx)
            record[f"{name}_loss"], record[f"{name}_accuracy"] = loss, accuracy(confusion)
        return record

    return evaluate


# -- fine-tuning ----------------------------------------------------------------------------

@dataclass
class ClassifySettings:
    """How a classifier fine-tunes (the book's chapter-6 values by default)."""

    epochs: int = 5
    batch_size: int = 8
    lr: float = 5e-5
    weight_decay: float = 0.1
    train: str = "last-block"  # last-block | last-N | all | lora
    lora_rank: int = 16  # with train="lora" (the book's appendix E: rank 16, alpha 16, every linear layer)
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("all",)
    pooling: str = "last"  # last | mean
    padding: str = "longest"  # longest (in the batch) | context (every batch padded to context_length)
    seed: int = 123
    precision: str = "fp32"
    grad_clip: float = 0.0  # the book does not clip
    truncate: bool = True  # read the first context_length tokens of a longer text (False: refuse it)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ScratchLLMError("--epochs and --batch-size must be at least 1")
        if self.pooling not in POOLINGS:
            raise ScratchLLMError(f"--pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.padding not in PADDINGS:
            raise ScratchLLMError(f"--padding must be one of {', '.join(PADDINGS)}, got {self.padding!r}")


@dataclass
class ClassifierResult:
    """What a fine-tuning run measured (also written to ``RUN/results.json``)."""

    run_dir: str
    labels: list[str]
    epochs: list[dict[str, float]]  # per evaluation: epoch, train/val accuracy and loss
    test_accuracy: float
    test_loss: float
    confusion: list[list[int]]  # test set: row = true label, column = predicted
    truncated: int  # texts cut to the context
    trainable_params: int
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)


def fine_tune(model: nn.Module, tokenizer: Any, splits: tuple[Sequence[Example], Sequence[Example], Sequence[Example]],
              run_dir: str | Path, settings: ClassifySettings | None = None, *, resume: bool = False,
              progress: bool = True) -> ClassifierResult:
    """Fine-tune ``model`` (a pretrained ``GPT``) on (train, validation, test) examples into ``run_dir``."""
    from scratchllm import viz

    s = settings or ClassifySettings()
    train, val, test = splits
    labels = label_names([*train, *val, *test])
    class_of = {name: i for i, name in enumerate(labels)}
    torch.manual_seed(s.seed)  # the new head's initial weights
    params = prepare_classifier(model, len(labels), s.train, lora_rank=s.lora_rank, lora_alpha=s.lora_alpha,
                                lora_targets=s.lora_targets)
    pad_id, context = padding_id(tokenizer), model.config.context_length
    pad_to = context if s.padding == "context" else None
    encoded, truncated = {}, 0
    for name, part in (("train", train), ("val", val), ("test", test)):
        ids, cut = encode_texts([text for text, _ in part], tokenizer, context, s.truncate)
        encoded[name], truncated = (ids, [class_of[label] for _, label in part]), truncated + cut
    if truncated and progress:
        print(f"{truncated} texts are longer than the context of {context} tokens: their first {context} are read")
    batches = EpochBatches(*encoded["train"], s.batch_size, pad_id, pad_to, s.seed)
    fixed = {name: make_batches(*encoded[name], s.batch_size, pad_id, pad_to) for name in encoded}
    steps = batches.steps_per_epoch
    config = TrainConfig(max_steps=s.epochs * steps, batch_size=s.batch_size, lr=s.lr, min_lr=s.lr, warmup_steps=0,
                         weight_decay=s.weight_decay, grad_clip=s.grad_clip, eval_interval=steps, eval_batches=0,
                         keep_last=1, log_interval=max(1, steps // 20), sample_tokens=0, precision=s.precision,
                         seed=s.seed, plot=False)
    trainer = Trainer(model, batches, run_dir, settings=config, loss=classification_loss(s.pooling), units=examples_in,
                      trainable=params, evaluate=classifier_evaluator(fixed["val"], fixed["train"], len(labels),
                                                                      s.pooling),
                      tokenizer=tokenizer, progress=progress,
                      task={"kind": TASK, "labels": labels, "pooling": s.pooling})
    with exclusive_lock(run_dir):  # the results written after training are the run's too (fit's lock nests)
        done = trainer.fit(resume=resume)
        run_dir = Path(run_dir)
        epochs = [{"epoch": r["step"] / steps, **{k: r[k] for k in ("train_accuracy", "val_accuracy", "train_loss",
                                                                     "val_loss")}}
                  for r in read_metrics(run_dir) if "val_accuracy" in r]
        test_loss, confusion = score(model, fixed["test"], len(labels), s.pooling)
        result = ClassifierResult(str(run_dir), labels, epochs, accuracy(confusion), test_loss,
                                  confusion.long().tolist(), truncated, sum(p.numel() for p in params), done.seconds,
                                  asdict(s))
        atomic_write_json(run_dir / RESULTS_FILE, asdict(result))
        viz.plot_confusion_matrix(confusion, labels, run_dir / CONFUSION_PLOT,
                                  title=f"test set: accuracy {result.test_accuracy:.2%}")
        viz.plot_epoch_curves(epochs, run_dir / CURVES_PLOT)
    return result


# -- prediction -----------------------------------------------------------------------------

def load_classifier(path: str | Path) -> tuple[nn.Module, Any, dict[str, Any]]:
    """``(model, tokenizer, task)`` of a classifier checkpoint or run; a language model is refused."""
    task = read_task(path)
    if not task or task.get("kind") != TASK:
        raise ScratchLLMError(f"{path} is not a classifier (its checkpoint records no labels); make one with "
                              "`scratchllm finetune classify`")
    model, tokenizer = load_checkpoint(path)
    if tokenizer is None:
        raise ScratchLLMError(f"{path} holds no tokenizer/ folder, so texts cannot be encoded")
    return model, tokenizer, task


@torch.no_grad()
def predict(model: nn.Module, tokenizer: Any, task: dict[str, Any], texts: Sequence[str]) -> list[tuple[str, float]]:
    """The most probable label of each text and its probability."""
    model = unwrap_model(model).eval()
    ids, _ = encode_texts(texts, tokenizer, model.config.context_length)
    inputs, lengths = collate(ids, padding_id(tokenizer))
    probs = torch.softmax(class_logits(model, inputs.to(model.device), lengths.to(model.device),
                                       task.get("pooling", "last")).float(), -1)
    best = probs.argmax(-1)
    return [(task["labels"][int(k)], float(probs[row, k])) for row, k in enumerate(best)]


def describe_epochs(result: ClassifierResult) -> list[str]:
    """One line per evaluation: epoch, train and validation accuracy, validation loss."""
    return [f"epoch {r['epoch']:g}: train accuracy {r['train_accuracy']:.2%}, val accuracy {r['val_accuracy']:.2%}, "
            f"val loss {r['val_loss']:.4f}" for r in result.epochs]


def results_json(run_dir: str | Path) -> dict[str, Any]:
    """A run's ``results.json``."""
    return json.loads((Path(run_dir) / RESULTS_FILE).read_text(encoding="utf-8"))

