"""Run configuration: one TOML file per run, presets, and ``--set section.key=value`` overrides.

A run is described by two dataclasses passed down to the code: the model's ``GPTConfig`` and
``TrainConfig`` below. They are built in layers, later ones winning:

    defaults  ->  --preset NAME  ->  --config FILE.toml  ->  --set key=value ...

and the fully resolved result is saved as ``RUN_DIR/config.toml`` so a run can be repeated
or resumed exactly. A TOML file looks like::

    preset = "baby-shakespeare"      # optional starting point
    [model]
    n_layers = 6
    [train]
    lr = 3e-4
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchllm import presets
from scratchllm.errors import ScratchLLMError, check_range, did_you_mean
from scratchllm.fileio import atomic_write_text
from scratchllm.model import GPTConfig

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")
PARALLEL = ("ddp", "fsdp")


@dataclass
class TrainConfig:
    """Everything about the optimisation, evaluation and bookkeeping of one run."""

    max_steps: int = 2000  # optimizer updates
    max_seconds: float = 0.0  # also stop after this much training time (0 = no limit); the schedule plans max_steps
    batch_size: int = 12  # sequences per micro-batch, per process
    grad_accum_steps: int = 1  # micro-batches per optimizer update
    lr: float = 1e-3  # peak learning rate, reached after warmup
    min_lr: float = 1e-4  # floor of the cosine decay
    warmup_steps: int = 100
    weight_decay: float = 0.1  # applied to matrices only (see optim.py)
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    eval_interval: int = 250  # steps between validation passes; 0 = only at the end
    eval_batches: int = 20  # batches of validation windows per pass; 0 = the whole split
    eval_at_start: bool = True  # also evaluate the untrained model at step 0
    checkpoint_interval: int = 0  # steps between checkpoints; 0 = at every evaluation
    keep_last: int = 2  # newest checkpoints kept (the best by val_loss is kept as well)
    log_interval: int = 1  # steps between metrics.jsonl lines
    sample_tokens: int = 100  # tokens sampled and shown after each evaluation, unless --quiet (0 = none)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (fp16 only on CUDA)
    device: str = "auto"  # auto | cpu | cuda | mps
    compile: bool = False  # torch.compile the model
    activation_checkpointing: bool = False  # recompute each block's activations in backward (train/activations.py)
    parallel: str = "ddp"  # under torchrun: ddp (every rank holds the whole model) | fsdp (sharded; train/sharding.py)
    seed: int = 1337
    peak_flops: float = 0.0  # matmul FLOP/s for MFU; 0 = measure at start
    plot: bool = True  # draw RUN_DIR/loss.png at the end

    def __post_init__(self) -> None:
        # every number is checked here, when the config is read, not when a step first uses it
        for name in ("max_steps", "batch_size", "grad_accum_steps", "log_interval", "keep_last"):
            check_range(f"train.{name}", getattr(self, name), 1)
        notes = {"max_seconds": "0 = no limit", "grad_clip": "0 = off", "eval_interval": "0 = only at the end",
                 "eval_batches": "0 = the whole split", "checkpoint_interval": "0 = at every evaluation",
                 "sample_tokens": "0 = none", "peak_flops": "0 = measure", "warmup_steps": "", "weight_decay": "",
                 "seed": ""}
        for name, note in notes.items():
            check_range(f"train.{name}", getattr(self, name), 0, note=note)
        check_range("train.lr", self.lr, 0, low_open=True)
        check_range("train.min_lr", self.min_lr, 0, self.lr, note="at most train.lr")
        for name in ("beta1", "beta2"):
            check_range(f"train.{name}", getattr(self, name), 0, 1, high_open=True)
        if self.precision not in PRECISIONS:
            raise ScratchLLMError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.device not in DEVICES:
            raise ScratchLLMError(f"train.device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.parallel not in PARALLEL:
            raise ScratchLLMError(f"train.parallel must be one of {', '.join(PARALLEL)}, got {self.parallel!r}")

    @property
    def save_every(self) -> int:
        """Steps between checkpoints (0: only at the end)."""
        return self.checkpoint_interval or self.eval_interval


@dataclass
class DataConfig:
    """Where the prepared token shards of the run live (``scratchllm prepare --out``)."""

    dir: str = ""


@dataclass
class RunConfig:
    """The model, the training settings and the data of one run."""

    model: GPTConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {"model": self.model.to_dict(), "train": dataclasses.asdict(self.train),
                "data": dataclasses.asdict(self.data)}

    def save(self, path: str | Path) -> None:
        """Write the resolved config as TOML (atomically)."""
        atomic_write_text(path, to_toml(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """Read a resolved config written by ``save``."""
        return cls.from_dict(read_toml(path), source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> RunConfig:
        checked = _checked(data, source)
        return cls(**{section: _build(SECTIONS[section], values, source) for section, values in checked.items()})


SECTIONS: dict[str, type] = {"model": GPTConfig, "train": TrainConfig, "data": DataConfig}

def load_run_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    base: dict[str, dict[str, Any]] | None = None,
) -> RunConfig:
    """Resolve defaults <- base <- preset <- TOML file <- ``key=value`` overrides into a ``RunConfig``.

    ``base`` holds what the data decides (``{"model": {"vocab_size": 258}}``) unless a later
    layer says otherwise.

    >>> load_run_config("baby-shakespeare", overrides=["train.lr=3e-4"]).train.lr
    0.0003
    """
    merged = _checked(base or {}, "data")
    for section, values in explicit_settings(preset, config_file, overrides).items():
        merged[section].update(values)
    return RunConfig.from_dict(merged, source="run config")


def explicit_settings(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> dict[str, dict[str, Any]]:
    """The settings a user named (preset, file, overrides merged in that order), without defaults."""
    file_data: dict[str, Any] = {}
    if config_file is not None:
        file_data = read_toml(config_file)
        file_preset = file_data.pop("preset", None)
        preset = preset if preset is not None else file_preset
    layers: list[tuple[str, dict[str, Any]]] = []
    if preset is not None:
        recipe = presets.get(preset)
        shape = {k: v for k, v in recipe.model.items() if k != "vocab_size"}  # the data's vocabulary decides
        layers.append((f"preset {preset}", {"model": shape, "train": recipe.train}))
    if config_file is not None:
        layers.append((str(config_file), file_data))
    merged: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for source, layer in layers:
        for section, values in _checked(layer, source).items():
            merged[section].update(values)
    for item in overrides:
        section, key, value = parse_override(item)
        merged[section][key] = value
    return merged


# What a resumed run may change: where the data lives, how long it runs, and its bookkeeping; never what
# one step computes. With a longer max_steps the learning rate follows the longer schedule from the resumed step.
CHANGEABLE_ON_RESUME = frozenset({
    "data.dir", "train.max_steps", "train.max_seconds", "train.eval_interval", "train.eval_batches",
    "train.checkpoint_interval", "train.keep_last", "train.log_interval", "train.sample_tokens", "train.plot",
    "train.peak_flops",
})


def resume_conflicts(saved: RunConfig, given: dict[str, dict[str, Any]]) -> list[str]:
    """``key (saved X, given Y)`` for each explicitly given setting that differs from the saved run
    and is not in ``CHANGEABLE_ON_RESUME``.

    >>> saved = load_run_config("baby-shakespeare")
    >>> resume_conflicts(saved, {"model": {"d_model": 128}, "train": {"lr": 0.01, "max_steps": 5000}})
    ['train.lr (saved 0.001, given 0.01)']
    """
    stored = saved.to_dict()
    return [
        f"{section}.{key} (saved {stored[section].get(key)!r}, given {value!r})"
        for section, values in given.items()
        for key, value in values.items()
        if stored[section].get(key) != value and f"{section}.{key}" not in CHANGEABLE_ON_RESUME
    ]


def resume_config(saved: RunConfig, given: dict[str, dict[str, Any]], run_dir: str | Path) -> RunConfig:
    """The saved config with the given changes a resume allows; any other difference is an error naming the keys."""
    conflicts = resume_conflicts(saved, given)
    if conflicts:
        raise ScratchLLMError(f"cannot resume {run_dir} with different settings: {'; '.join(conflicts)}. "
                              "Resume without them, or start a new run with --out")
    merged = saved.to_dict()
    for section, values in given.items():
        merged[section].update(values)
    return RunConfig.from_dict(merged, source=f"{run_dir} resumed")


def parse_override(item: str) -> tuple[str, str, Any]:
    """Split ``section.key=value`` and type-check the value against the dataclass field.

    >>> parse_override("train.lr=3e-4")
    ('train', 'lr', 0.0003)
    """
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise ScratchLLMError(f"--set expects section.key=value (e.g. train.lr=3e-4), got {item!r}")
    dotted, raw = item.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    cls = SECTIONS.get(section)
    if cls is None:
        known = ", ".join(f"{name}.<key>" for name in SECTIONS)
        raise ScratchLLMError(f"--set {dotted}: unknown section '{section}'; use one of {known}")
    hints = _field_types(cls)
    if key not in hints:
        raise ScratchLLMError(_unknown_key_message(section, key, hints))
    return section, key, _coerce(_parse_scalar(raw.strip()), hints[key], f"{section}.{key}")


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML run config, turning syntax errors into one-line ``ScratchLLMError``s."""
    path = Path(path)
    if not path.is_file():
        raise ScratchLLMError(f"config file {path} not found")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ScratchLLMError(f"{path}: invalid TOML: {err}") from None


def to_toml(data: dict[str, dict[str, Any]]) -> str:
    """Write ``{section: {key: scalar}}`` as TOML; ``None`` values are left out (the default applies).

    >>> print(to_toml({"train": {"lr": 0.001, "compile": False}}))
    [train]
    lr = 0.001
    compile = false
    <BLANKLINE>
    """
    lines: list[str] = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items() if value is not None]
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _parse_scalar(raw: str) -> Any:
    """Read a value the way TOML would; anything TOML cannot parse is a plain string (bf16, cpu)."""
    if raw.lower() in ("none", "null"):
        return None
    if raw in ("True", "False"):
        return raw == "True"
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _unknown_key_message(section: str, key: str, hints: dict[str, Any]) -> str:
    hint = did_you_mean(key, hints, cutoff=0.5, prefix=f"{section}.") or f"; known keys: {', '.join(hints)}"
    return f"unknown key '{section}.{key}'{hint}"


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Check ``value`` against a type hint, widening int to float; raise naming the key otherwise."""
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return None
        if typing.get_origin(option) is typing.Literal and value in typing.get_args(option):
            return value
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option in (bool, str) and type(value) is option:
            return value
        origin = typing.get_origin(option)
        if origin in (list, tuple) and isinstance(value, list):
            return origin(value)
    wanted = " or ".join("none" if o is type(None) else getattr(o, "__name__", str(o)) for o in options)
    raise ScratchLLMError(f"{name} expects {wanted}, got {value!r}")


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _checked(data: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """Check sections, keys and value types of one layer of config, naming ``source`` in errors."""
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ScratchLLMError(f"{source}: unknown section(s) {sorted(unknown)}; expected [model], [train], [data]")
    checked: dict[str, dict[str, Any]] = {}
    for section, cls in SECTIONS.items():
        values = data.get(section, {})
        if not isinstance(values, dict):
            raise ScratchLLMError(f"{source}: [{section}] must be a table of key = value")
        hints = _field_types(cls)
        for key in values:
            if key not in hints:
                raise ScratchLLMError(f"{source}: {_unknown_key_message(section, key, hints)}")
        checked[section] = {k: _coerce(v, hints[k], f"{source}: {section}.{k}") for k, v in values.items()}
    return checked


def _build(cls: type, values: dict[str, Any], source: str) -> Any:
    try:
        return cls(**values)
    except ScratchLLMError as err:
        raise ScratchLLMError(f"{source}: {err}") from None
