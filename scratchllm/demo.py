"""The demo: from raw text to a trained GPT that writes, in one call and a fixed time budget.

    corpus -> BPE tokenizer -> token shards -> plan the steps that fit the budget -> train
           -> held-out evaluation (bits per byte) -> samples.txt, loss.png, attention.png

The time budget drives the schedule: the run first trains ``CALIBRATION_STEPS`` real steps (in
the precision ``auto`` picks: bf16 where it wins on this machine), times them, and resumes with
``max_steps`` set to what fits in the minutes left before the final evaluation. The calibration
steps lie inside the learning-rate warmup, which does not depend on ``max_steps``, so the run is
the one it would have been had ``max_steps`` been known from the start, and its cosine schedule
ends on time.

Quality is measured in bits per byte on the held-out text (for ``shakespeare``: whole works the
tokenizer and the model never saw), which compares across tokenizers; ``scratchllm.train.evaluation``
defines it, for this, for training and for ``scratchllm eval``:

    bits per byte = (sum of -ln p over the predicted tokens) / ln 2 / (UTF-8 bytes of those tokens)

>>> result = run_demo("runs/demo", minutes=10)                          # doctest: +SKIP
>>> result.bits_per_byte                                                # doctest: +SKIP
2.1
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from scratchllm import presets
from scratchllm.errors import ScratchLLMError, check_range
from scratchllm.fileio import atomic_write_json, atomic_write_text, check_replaceable

SAMPLE_PROMPTS = ("To be, or not to be", "My gracious lord,", "\n")
ATTENTION_TEXT = "To be, or not to be, that is the question"
SAMPLE_TOKENS = 120
CALIBRATION_STEPS = 20  # timed first (inside the warmup), then the run resumes with the steps that fit
STEP_MARGIN = 1.15  # steps after the resume ran 6-14% slower than the calibration steps (2-core CPU, 2026-11-30)
N_EVALS = 5  # validation points on the loss curve during training (plus the start)
EVAL_BATCHES = 8  # batches per validation point during training; the final evaluation reads all
FINAL_EVAL_TOKENS = 2_000_000  # the final evaluation reads at most this many held-out tokens
END_SECONDS = 10.0  # checkpoint, samples, plots


@dataclass
class DemoResult:
    """What the demo made and measured."""

    out: Path
    checkpoint: Path
    steps: int
    tokens: int
    precision: str
    val_loss: float  # nats per token over the held-out text
    bits_per_byte: float
    eval_tokens: int
    seconds: float
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"], d["checkpoint"] = str(self.out), str(self.checkpoint)
        return d


def run_demo(
    out: str | os.PathLike = "runs/demo",
    minutes: float = 10.0,
    corpus: str | os.PathLike = "shakespeare",
    *,
    preset: str = "demo",
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    echo: Callable[[str], Any] | None = print,
) -> DemoResult:
    """Train a tokenizer and a GPT on ``corpus`` in about ``minutes``, evaluate, sample and draw,
    all into the run folder ``out`` (which ``scratchllm train --resume`` also understands)."""
    from scratchllm.checkpoint import list_checkpoints, load_checkpoint
    from scratchllm.data.shards import open_prepared, prepare
    from scratchllm.train import score_tokens, train

    say = echo or (lambda _: None)
    started = time.perf_counter()
    check_range("--minutes", minutes, 0, low_open=True)
    recipe = presets.get(preset)
    out = Path(out)
    if not (out / "data" / "manifest.json").is_file():  # a demo stopped after its first stage may go on
        check_replaceable(out, "config.toml", "a run folder")  # the user's own folder is no place for a run
    if list_checkpoints(out):
        raise ScratchLLMError(f"{out} already holds a trained run: give --out a new folder, or delete {out}")

    say(f"[1/5] tokenizer and token shards for '{corpus}' (vocabulary {recipe.vocab_size:,})")
    data_dir = prepare(corpus, out / "data", vocab_size=recipe.vocab_size, cache_dir=cache_dir)
    data = open_prepared(data_dir)

    say(f"[2/5] timing {CALIBRATION_STEPS} real training steps to plan the run")
    config = demo_config(recipe, data, max_steps=CALIBRATION_STEPS)
    train(config, out, progress=False)
    step_seconds = measured_step_seconds(out)
    max_steps, max_seconds = plan_steps(step_seconds, started + minutes * 60 - time.perf_counter(), config,
                                        len(data.val))
    config = demo_config(recipe, data, max_steps=max_steps, max_seconds=max_seconds)
    say(f"      {_num_params(config.model):,} parameters, batch {config.train.batch_size} x "
        f"{config.model.context_length} tokens, {_precision(out)}: {step_seconds * 1000:.0f} ms/step "
        f"-> {max_steps:,} steps fit in {minutes:g} min")

    say(f"[3/5] training to step {max_steps:,}")
    result = train(config, out, resume=True, progress=progress)
    say("[4/5] evaluating on the held-out text")
    model, tokenizer = load_checkpoint(out)
    precision = _precision(out)
    score = score_tokens(model, data.val, tokenizer, batch_size=config.train.batch_size, precision=precision,
                         max_tokens=FINAL_EVAL_TOKENS)
    val_loss, bpb, n_tokens = score.loss, score.bits_per_byte, score.tokens
    say(f"      val loss {val_loss:.4f} nats/token, {bpb:.3f} bits per byte over {n_tokens:,} tokens")

    say("[5/5] samples and pictures")
    samples = write_samples(model, tokenizer, out / "samples.txt")
    from scratchllm.viz import save_attention_maps

    attention = save_attention_maps(model, tokenizer, ATTENTION_TEXT, out, per_layer=False)[-1]
    checkpoint = list_checkpoints(out)[-1]
    files = {
        "config.toml": "the resolved run config (model, training, data)",
        f"checkpoints/{checkpoint.name}": "weights, optimizer state and tokenizer (safetensors + JSON)",
        "metrics.jsonl": "training loss per step, validation loss per evaluation",
        "loss.png": "the loss curves and the learning rate",
        attention.name: f"attention weights of every layer and head on {ATTENTION_TEXT!r}",
        samples.name: "text the model wrote from a few prompts",
        "demo.json": "the figures of this demo",
        "data/": "the tokenizer and the token shards",
    }
    demo = DemoResult(out, checkpoint, result.step, result.tokens, precision, val_loss, bpb, n_tokens,
                      time.perf_counter() - started, files)
    atomic_write_json(out / "demo.json", {**demo.to_dict(), "corpus": str(corpus), "preset": preset,
                                          "minutes": minutes, "machine": machine_description(),
                                          "date": time.strftime("%Y-%m-%d")})
    say(summary(demo))
    return demo


def demo_config(recipe: presets.Preset, data: Any, max_steps: int, max_seconds: float = 0.0) -> Any:
    """The run config of a recipe on prepared ``data``, for ``max_steps`` optimizer updates
    (stopping earlier if they take more than ``max_seconds``).

    Only ``max_steps`` and the evaluation interval depend on the budget: the warmup is fixed, so
    the calibration steps (all inside the warmup) have the learning rates of the full run.
    """
    from scratchllm.model import GPTConfig
    from scratchllm.train.config import DataConfig, RunConfig, TrainConfig

    model_cfg = GPTConfig(**{**recipe.model, "vocab_size": data.vocab_size})
    eval_interval = 0 if max_steps <= CALIBRATION_STEPS else max(1, max_steps // N_EVALS)
    train_cfg = TrainConfig(**{**recipe.train, "max_steps": max_steps, "max_seconds": max_seconds, "precision": "auto",
                               "keep_last": 1, "eval_interval": eval_interval, "eval_batches": EVAL_BATCHES})
    return RunConfig(model=model_cfg, train=train_cfg, data=DataConfig(str(Path(data.path).resolve())))


def measured_step_seconds(run_dir: Path) -> float:
    """Median seconds per optimizer update of the steps logged so far, the first few left out
    (they pay for one-time kernel setup)."""
    from scratchllm.train.metrics import read_metrics

    records = [r for r in read_metrics(run_dir) if r.get("tokens_per_s")]
    per_step = sorted(r["tokens"] / r["step"] / r["tokens_per_s"] for r in records[3:] or records)
    return per_step[len(per_step) // 2]


def plan_steps(step_seconds: float, seconds_left: float, config: Any, val_tokens: int) -> tuple[int, float]:
    """How many optimizer updates fit in ``seconds_left``, after the evaluations during training,
    the final held-out pass (forward passes cost about a third of a training step) and the end;
    and the training seconds the steps after the calibration may take (``train.max_seconds``: a
    guard that ends the run on time even if its steps turn out more than ``STEP_MARGIN`` slower).

    >>> from types import SimpleNamespace
    >>> tiny = demo_config(presets.get("demo-tiny"), SimpleNamespace(vocab_size=300, path="."), max_steps=20)
    >>> steps, seconds = plan_steps(0.1, 600.0, tiny, val_tokens=10_000)
    >>> steps, round(seconds, 1)
    (5123, 586.9)
    """
    batch_tokens = config.train.batch_size * config.model.context_length
    forward_batches = N_EVALS * EVAL_BATCHES + min(val_tokens, FINAL_EVAL_TOKENS) / batch_tokens + 1
    step_seconds *= STEP_MARGIN
    budget = seconds_left - END_SECONDS - forward_batches * step_seconds / 3
    return max(CALIBRATION_STEPS, CALIBRATION_STEPS + int(budget / step_seconds)), max(budget, step_seconds)


def _num_params(model_config: Any) -> int:
    from scratchllm.model import GPT

    with torch.device("meta"):  # shapes only, no memory
        return GPT(model_config).num_params()


def _precision(run_dir: Path) -> str:
    """The precision ``auto`` resolved to, as the newest checkpoint records it."""
    from scratchllm.checkpoint import STATE_FILE, list_checkpoints, read_json

    return read_json(list_checkpoints(run_dir)[-1] / STATE_FILE)["precision"]


def write_samples(model: Any, tokenizer: Any, path: Path, prompts: tuple[str, ...] = SAMPLE_PROMPTS,
                  n_tokens: int = SAMPLE_TOKENS, temperature: float = 0.8, top_k: int = 50, seed: int = 1) -> Path:
    """Sample ``n_tokens`` after each prompt and write them, one section per prompt, to ``path``.

    A model reads at most its context, so longer samples go on in windows: each continues from
    the last half-context of text written so far.
    """
    from scratchllm.generate import generate

    model.eval()
    keep = model.config.context_length // 2
    sections = []
    for prompt in prompts:
        ids = tokenizer.encode_ordinary(prompt)
        text = list(ids)
        for window in range(n_tokens):  # at least one new token per window
            if len(text) - len(ids) >= n_tokens:
                break
            tail = text[-keep:]
            n_new = min(n_tokens - (len(text) - len(ids)), model.config.context_length - len(tail))
            text += generate(model, [tail], max_new_tokens=n_new, temperature=temperature, top_k=top_k,
                             seed=seed + window)[0][len(tail):]
        sections.append(f"--- prompt {prompt!r} (temperature {temperature}, top-k {top_k}, seed {seed})\n"
                        f"{tokenizer.decode(text)}\n")
    atomic_write_text(path, "\n".join(sections))
    return path


def machine_description() -> str:
    """One line naming the hardware and torch build the demo ran on."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    from scratchllm.train.precision import cpu_has_bf16

    bf16 = ", bf16 matmul (AMX/AVX512-BF16)" if cpu_has_bf16() else ""
    return (f"{os.cpu_count()}-core {platform.machine()} CPU{bf16}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}")


def summary(demo: DemoResult) -> str:
    """What the demo produced, where, and how to continue."""
    width = max(len(name) for name in demo.files)
    listing = "\n".join(f"    {name:<{width}}  {what}" for name, what in demo.files.items())
    out = demo.out
    return (
        f"\ndemo finished in {demo.seconds / 60:.1f} min: {demo.steps:,} steps, {demo.tokens:,} training tokens, "
        f"{demo.precision}\n"
        f"  held-out text: {demo.val_loss:.4f} nats/token = {demo.bits_per_byte:.3f} bits per byte "
        f"({demo.eval_tokens:,} tokens)\n"
        f"  in {out}/:\n{listing}\n"
        f"  next:\n"
        f"    scratchllm generate --checkpoint {out} --prompt \"To be, or not to be\"   # write more text\n"
        f"    scratchllm tour --checkpoint {out}                   # one sentence through every layer\n"
        f"    scratchllm attention --checkpoint {out} --text \"...\"   # attention maps per layer and head\n"
        f"    scratchllm train --resume {out}                      # continue if the run was interrupted\n"
        f"    scratchllm train --config {out}/config.toml --out runs/longer --set train.max_steps=5000 "
        f"--set train.max_seconds=0   # a longer run, without the demo's time limit"
    )
