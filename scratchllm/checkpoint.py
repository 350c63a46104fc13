"""Checkpoints: a directory of safetensors and JSON, written atomically, never pickled.

Layout of one checkpoint directory::

    model.safetensors        weights under clean names (no ``_orig_mod.`` / ``module.``)
    config.json              {"format": ..., "version": 2, "model": GPTConfig.to_dict(),
                              "tokenizer_fingerprint": ... (when a tokenizer is saved; checked on load),
                              "lora" / "quantization": how to rebuild adapters / quantized layers}
    tokenizer/               tokenizer.save(dir), when a tokenizer is given
    optimizer.safetensors    optimizer tensors; param groups as JSON metadata   (training only)
    train_state.json         step, scheduler, RNG states, data position, ...   (training only)

A run directory keeps its checkpoints in ``RUN_DIR/checkpoints/step-00000250`` and so on.
The whole directory is written under a temporary name and renamed into place, so a crash or
SIGKILL during a save leaves the previous checkpoints untouched and loadable.

Format versions: 2 stores linear weights as ``nn.Linear`` does, (out_features, in_features);
1 (scratchllm before the move to ``nn.Linear``) stored them (in, out) and a tied model's table
only as the head's (d_model, vocab) weight. Version-1 weights are transposed on load, so they
generate, evaluate and convert as before; resuming training from one is refused (its optimizer
state has the old layout).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from scratchllm import fileio
from scratchllm.errors import ScratchLLMError

FORMAT = "scratchllm-checkpoint"
VERSION = 2
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "train_state.json"
TOKENIZER_DIR = "tokenizer"
CHECKPOINTS_DIR = "checkpoints"


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    tokenizer: Any = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    train_state: dict[str, Any] | None = None,
    task: dict[str, Any] | None = None,
    model_state: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory at ``path`` atomically and return its path.

    ``model`` may be compiled or wrapped in DistributedDataParallel: the weights are saved
    under the plain model's names. ``train_state`` must be JSON-serialisable; so must ``task``,
    what a replaced head means (a classifier's label names), kept in ``config.json`` (``read_task``).
    ``model_state`` and ``optimizer_state`` replace ``model.state_dict()`` and
    ``optimizer.state_dict()`` (a sharded model's full states, gathered by ``train.sharding``).

    >>> save_checkpoint("ckpt", model, tokenizer)               # doctest: +SKIP
    >>> model, tokenizer = load_checkpoint("ckpt")              # doctest: +SKIP
    """
    path = Path(path)
    model = unwrap_model(model)
    with fileio.atomic_path(path) as tmp:
        tmp.mkdir()
        tensors, tied = _dedupe_tied(model.state_dict() if model_state is None else model_state)
        save_file(tensors, tmp / MODEL_FILE, metadata={"format": FORMAT, "tied": json.dumps(tied)})
        config = {"format": FORMAT, "version": VERSION, "model": model.config.to_dict()}
        from scratchllm.finetune.lora import lora_spec  # adapters are layers too: record how to rebuild them

        adapters = lora_spec(model)
        if adapters:
            config["lora"] = adapters
        from scratchllm.compress.quantize_model import quantization_spec  # quantized layers: how to rebuild them

        quantized = quantization_spec(model)
        if quantized:
            config["quantization"] = quantized
        if hasattr(tokenizer, "fingerprint"):  # checked on load: another tokenizer of the same size decodes garbage
            config["tokenizer_fingerprint"] = tokenizer.fingerprint()
        if task is not None:
            config["task"] = task
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER_DIR)
        if optimizer is not None or optimizer_state is not None:
            tensors, groups = _flatten_optimizer(optimizer.state_dict() if optimizer_state is None else optimizer_state)
            save_file(tensors, tmp / OPTIMIZER_FILE, metadata={"param_groups": json.dumps(groups)})
        if train_state is not None:
            (tmp / STATE_FILE).write_text(json.dumps(train_state, indent=1) + "\n", encoding="utf-8")
        for file in tmp.iterdir():
            _fsync(file)
    return path


def load_checkpoint(path: str | os.PathLike, *, which: str = "newest", device: str = "cpu") -> tuple[nn.Module, Any]:
    """Load ``(model, tokenizer)`` from a checkpoint directory or from a run directory.

    For a run directory, ``which`` picks the ``"newest"`` checkpoint or the ``"best"`` by
    validation loss. The tokenizer is ``None`` when the checkpoint has none. Corrupt or
    truncated files raise ``ScratchLLMError`` naming the file.
    """
    from scratchllm.model import GPT, GPTConfig

    ckpt = find_checkpoint(path, which=which)
    config = read_json(ckpt / CONFIG_FILE)
    if config.get("format") != FORMAT or not isinstance(config.get("model"), dict):
        raise ScratchLLMError(f"{ckpt / CONFIG_FILE} is not a scratchllm checkpoint config")
    if config.get("version", 0) > VERSION:
        raise ScratchLLMError(f"{ckpt / CONFIG_FILE} has format version {config['version']}; upgrade scratchllm")
    quantized = config.get("quantization")
    # A quantized model is built on the meta device and its stored tensors assigned: its float32
    # weights never exist in memory, only the integers and scales that are loaded.
    with torch.device("meta") if quantized else contextlib.nullcontext():
        model = GPT(GPTConfig.from_dict(config["model"]))
    if config.get("lora"):  # a LoRA run: the same adapters on the base, then every weight loads strictly
        from scratchllm.finetune.lora import apply_lora_spec

        apply_lora_spec(model, config["lora"])
    if quantized:
        from scratchllm.compress.quantize_model import apply_quantization_spec

        apply_quantization_spec(model, quantized)
    load_model_weights(model, ckpt, assign=bool(quantized))
    return model.to(device), load_tokenizer(ckpt)


def read_task(path: str | os.PathLike, *, which: str = "newest") -> dict[str, Any] | None:
    """The ``task`` a checkpoint (or a run's newest/best one) was saved with, or ``None`` (a language model)."""
    return read_json(find_checkpoint(path, which=which) / CONFIG_FILE).get("task")


def checkpoint_version(ckpt: Path) -> int:
    """The format version a checkpoint was written in (see the module docstring)."""
    return read_json(ckpt / CONFIG_FILE).get("version", 1)


def load_model_weights(model: nn.Module, ckpt: Path, *, assign: bool = False) -> None:
    """Copy the weights in ``ckpt/model.safetensors`` into ``model`` (every name must match);
    ``assign``: make the loaded tensors the model's own instead (a model built on the meta device)."""
    model = unwrap_model(model)
    tensors = read_model_state(ckpt, model)
    try:
        model.load_state_dict(tensors, strict=True, assign=assign)
    except RuntimeError as err:
        raise ScratchLLMError(f"{ckpt / MODEL_FILE} does not match the model in {ckpt / CONFIG_FILE}: {err}") from None


def read_model_state(ckpt: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict in ``ckpt/model.safetensors`` for ``model`` (tied names filled in, an old
    format upgraded), on the CPU."""
    file = ckpt / MODEL_FILE
    tensors = _read_safetensors(file)
    try:
        tied = json.loads(_safetensors_metadata(file).get("tied", "{}"))
        for alias, name in tied.items():
            tensors[alias] = tensors[name]
        if checkpoint_version(ckpt) < 2:
            tensors = _upgrade_from_version_1(tensors, model)
    except (KeyError, json.JSONDecodeError) as err:
        raise ScratchLLMError(f"{file} does not match the model in {ckpt / CONFIG_FILE}: {err}") from None
    return tensors


def load_tokenizer(ckpt: Path) -> Any:
    """The tokenizer saved with a checkpoint, or ``None``."""
    if not (ckpt / TOKENIZER_DIR).is_dir():
        return None
    from scratchllm.tokenizer import BPETokenizer

    try:
        tokenizer = BPETokenizer.load(ckpt / TOKENIZER_DIR)
    except ScratchLLMError:
        raise
    except Exception as err:  # a damaged tokenizer file: name it rather than show a traceback
        raise ScratchLLMError(f"{ckpt / TOKENIZER_DIR} could not be read: {err}") from None
    want = read_json(ckpt / CONFIG_FILE).get("tokenizer_fingerprint")  # absent before it was stored
    if want is not None and tokenizer.fingerprint() != want:
        raise ScratchLLMError(
            f"{ckpt / TOKENIZER_DIR} (fingerprint {tokenizer.fingerprint()}) is not the tokenizer these weights were "
            f"trained with (fingerprint {want}): put that tokenizer back in {ckpt / TOKENIZER_DIR}"
        )
    return tokenizer


def _upgrade_from_version_1(tensors: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Format-1 weights in today's layout: every linear weight transposed from (in, out), and a
    tied model's table, stored only as the head's (d_model, vocab), given its embedding name too."""
    linears = {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    upgraded = {name: t.t().contiguous() if name in linears and t.dim() == 2 else t for name, t in tensors.items()}
    tied = getattr(getattr(model, "config", None), "tie_embeddings", False)
    if tied and "tok_emb.weight" not in upgraded and "out_head.weight" in upgraded:
        upgraded["tok_emb.weight"] = upgraded["out_head.weight"]
    return upgraded


def load_training_state(ckpt: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore the optimizer from ``ckpt`` and return its ``train_state.json`` contents."""
    state = read_optimizer_state(ckpt)
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError) as err:
        raise ScratchLLMError(f"{ckpt / OPTIMIZER_FILE} does not match this model's optimizer: {err}") from None
    _lay_out_like_parameters(optimizer)
    return read_json(ckpt / STATE_FILE)


def _lay_out_like_parameters(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor (Adam's moments) its parameter's strides, as it had
    when saved: the files hold row-major tensors, and an update over mixed layouts takes other
    kernels whose float rounding differs, so the resumed run would drift from the unbroken one."""
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def read_optimizer_state(ckpt: Path) -> dict[str, Any]:
    """The optimizer state dict saved in ``ckpt`` (``optimizer.state_dict()``'s layout), on the CPU."""
    if checkpoint_version(ckpt) < 2:
        raise ScratchLLMError(
            f"{ckpt} was written in checkpoint format 1 (before scratchllm's move to nn.Linear): it loads for "
            "generate, eval and convert, but its optimizer state cannot be resumed; start a new run"
        )
    file = ckpt / OPTIMIZER_FILE
    tensors = _read_safetensors(file)
    try:
        return _unflatten_optimizer(tensors, json.loads(_safetensors_metadata(file)["param_groups"]))
    except (KeyError, json.JSONDecodeError) as err:
        raise ScratchLLMError(f"{file} is not an optimizer state scratchllm wrote: {err}") from None


def find_checkpoint(path: str | os.PathLike, *, which: str = "newest") -> Path:
    """Resolve a checkpoint directory, or the newest/best checkpoint inside a run directory."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file() and (path / MODEL_FILE).exists():
        return path
    if not path.exists():
        raise ScratchLLMError(f"checkpoint {path} not found")
    found = list_checkpoints(path)
    if not found:
        raise ScratchLLMError(f"{path} holds no checkpoint ({MODEL_FILE} + {CONFIG_FILE}, or {CHECKPOINTS_DIR}/)")
    if which == "newest":
        return found[-1]
    if which == "best":
        scored = [(loss, ckpt) for ckpt in found if (loss := checkpoint_val_loss(ckpt)) is not None]
        return min(scored, key=lambda item: item[0])[1] if scored else found[-1]
    raise ScratchLLMError(f"which must be 'newest' or 'best', got {which!r}")


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run directory, oldest first (temporaries of a save are skipped)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / CONFIG_FILE).is_file() and (p / MODEL_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.removeprefix("step-")))


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    """Where the checkpoint of ``step`` lives in a run directory."""
    return Path(run_dir) / CHECKPOINTS_DIR / f"step-{step:08d}"


def checkpoint_val_loss(ckpt: Path) -> float | None:
    """The validation loss recorded with a checkpoint, if it had one."""
    try:
        return read_json(ckpt / STATE_FILE).get("val_loss")
    except ScratchLLMError:
        return None


def prune_checkpoints(run_dir: str | os.PathLike, keep_last: int) -> None:
    """Delete all but the ``keep_last`` newest intact checkpoints and the best intact one by validation loss.

    A damaged checkpoint (``checkpoint_problem``) is neither counted as kept nor deleted, so rotation
    never removes the last checkpoint a run can resume from; saving that step again replaces it.
    """
    intact = [c for c in list_checkpoints(run_dir) if checkpoint_problem(c) is None]
    keep = set(intact[-keep_last:])
    scored = [(loss, c) for c in intact if (loss := checkpoint_val_loss(c)) is not None]
    if scored:
        keep.add(min(scored, key=lambda item: item[0])[1])
    for ckpt in intact:
        if ckpt not in keep:
            shutil.rmtree(ckpt, ignore_errors=True)
    for stale in (Path(run_dir) / CHECKPOINTS_DIR).glob(".step-*"):  # left by a save that was killed
        shutil.rmtree(stale, ignore_errors=True)


TRAIN_STATE_KEYS = ("step", "tokens", "precision", "rng")  # what resuming reads from train_state.json


def checkpoint_problem(ckpt: Path, *, training: bool = True) -> str | None:
    """Why a run's checkpoint cannot be resumed from (``training=False``: loaded), or ``None`` when intact.

    Checks every file it needs: each JSON parses with the keys resuming reads, and each safetensors
    header parses and covers its file exactly (a truncated file fails), without reading the tensors.
    """
    try:
        config = read_json(ckpt / CONFIG_FILE)
        if not isinstance(config, dict) or config.get("format") != FORMAT or not isinstance(config.get("model"), dict):
            return f"{ckpt / CONFIG_FILE} is not a scratchllm checkpoint config"
        _safetensors_metadata(ckpt / MODEL_FILE)
        if not training:
            return None
        json.loads(_safetensors_metadata(ckpt / OPTIMIZER_FILE)["param_groups"])
        state = read_json(ckpt / STATE_FILE)
        missing = [key for key in TRAIN_STATE_KEYS if not isinstance(state, dict) or key not in state]
        if missing:
            return f"{ckpt / STATE_FILE} lacks {', '.join(missing)}"
        if ckpt.name.startswith("step-") and state["step"] != int(ckpt.name.removeprefix("step-")):
            return f"{ckpt / STATE_FILE} says step {state['step']}, its folder {ckpt.name}"
    except ScratchLLMError as err:
        return str(err)
    except (KeyError, TypeError, ValueError) as err:  # optimizer metadata without valid param_groups
        return f"{ckpt / OPTIMIZER_FILE} has no valid param_groups ({err})"
    return None


def newest_intact_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The newest checkpoint of a run that ``checkpoint_problem`` finds intact; each newer, damaged
    one is skipped with a warning on standard error that names what is wrong with it."""
    found = list_checkpoints(run_dir)
    if not found:
        raise ScratchLLMError(f"{run_dir} has no checkpoint to resume from; start it again without --resume")
    problems = []
    for ckpt in reversed(found):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            for skipped in problems:
                print(f"scratchllm: warning: skipping a damaged checkpoint: {skipped}; resuming from {ckpt}",
                      file=sys.stderr)
            return ckpt
        problems.append(problem)
    raise ScratchLLMError(f"no checkpoint in {run_dir} can be resumed from (newest: {problems[0]}); "
                          "start a new run with another --out")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model under ``torch.compile`` (``_orig_mod``) and DDP (``module``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def rng_state() -> dict[str, Any]:
    """The RNG states of python, numpy and torch (CPU and CUDA) as JSON-serialisable values."""
    state = {
        "python": _jsonable(random.getstate()),
        "numpy": _jsonable(np.random.get_state()),
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


# what to do about a damaged checkpoint: name a way to reach an earlier one
_EARLIER = ("the checkpoint is incomplete or damaged: pass an earlier one, RUN/checkpoints/step-N (--resume RUN skips "
            "damaged ones by itself)")


def read_json(file: Path) -> dict[str, Any]:
    """Read a JSON file of a checkpoint; a missing, truncated or corrupt file is named in the error."""
    return fileio.read_json(file, _EARLIER)


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise ScratchLLMError(f"{file} is missing; the checkpoint is incomplete")
    try:
        return load_file(file)
    except Exception as err:  # safetensors raises its own error types for every kind of damage
        raise ScratchLLMError(f"{file} is corrupt or truncated ({err}); {_EARLIER}") from None


def _safetensors_metadata(file: Path) -> dict[str, str]:
    from safetensors import safe_open

    if not file.is_file():
        raise ScratchLLMError(f"{file} is missing; the checkpoint is incomplete")
    try:
        with safe_open(file, framework="pt") as f:
            return f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for every kind of damage
        raise ScratchLLMError(f"{file} is corrupt or truncated ({err})") from None


def _dedupe_tied(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Keep one copy of tensors shared under several names (tied embeddings): safetensors
    stores each storage once. Returns the tensors and ``{alias: kept name}``."""
    tensors: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    seen: dict[tuple[int, tuple[int, ...]], str] = {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if key in seen and tensor.numel() > 0:
            tied[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = tensor.detach().to("cpu").contiguous()
    return tensors, tied


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict]]:
    tensors = {
        f"state.{index}.{key}": value.detach().to("cpu").contiguous()
        for index, per_param in state["state"].items()
        for key, value in per_param.items()
    }
    return tensors, state["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = tensor
    return {"state": state, "param_groups": groups}


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _b64(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.numpy().tobytes()).decode("ascii")


def _unb64(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def _fsync(path: Path) -> None:
    if path.is_dir():
        for child in path.iterdir():
            _fsync(child)
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
