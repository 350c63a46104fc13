"""Metrics of a run: one JSON object per line in ``RUN_DIR/metrics.jsonl``, and loss curves as PNG.

Training steps log ``{"step", "loss", "lr", "tokens", ...}``, evaluations
``{"step", "val_loss", "val_ppl", "val_bpb", "tokens"}``; ``tokens`` is the number of training
tokens seen so far, the x axis of the plot.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchLLMError
from scratchllm.fileio import atomic_path, atomic_write_text

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


class MetricsLog:
    """Append-only JSONL writer; each record is flushed to the OS as soon as it is written,
    so a killed process loses nothing it had logged."""

    def __init__(self, run_dir: str | os.PathLike, *, resume_step: int | None = None):
        self.path = Path(run_dir) / METRICS_FILE
        if resume_step is not None:
            truncate_metrics(self.path, resume_step)
        self._file = open(self.path, "a", encoding="utf-8")

    def log(self, **record: Any) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a metrics file (or of ``RUN_DIR/metrics.jsonl``), skipping a torn last line."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise ScratchLLMError(f"{path} not found; is this a run directory written by `scratchllm train`?")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the process was killed in the middle of this line
    return records


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only records up to ``step``: a resumed run re-logs the steps after its checkpoint."""
    if path.is_file():
        kept = [r for r in read_metrics(path) if r.get("step", 0) <= step]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def plot_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Draw train and validation loss against tokens seen, learning rate on a second axis.

    >>> plot_run("runs/baby")                      # doctest: +SKIP
    PosixPath('runs/baby/loss.png')
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    train = [r for r in records if "loss" in r and math.isfinite(r["loss"])]
    val = [r for r in records if "val_loss" in r]
    if not train and not val:
        raise ScratchLLMError(f"{Path(run_dir) / METRICS_FILE} has no losses to plot yet")
    out = Path(out) if out is not None else Path(run_dir) / PLOT_FILE

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    if train:
        ax.plot([r["tokens"] for r in train], [r["loss"] for r in train], lw=0.8, alpha=0.6, label="train loss")
    if val:
        ax.plot([r["tokens"] for r in val], [r["val_loss"] for r in val], "o-", lw=1.5, label="validation loss")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if train and "lr" in train[0]:
        lr_ax = ax.twinx()
        (line,) = lr_ax.plot([r["tokens"] for r in train], [r["lr"] for r in train], color="gray", ls="--", lw=1)
        lr_ax.set_ylabel("learning rate")
        handles, labels = handles + [line], labels + ["learning rate"]
    ax.legend(handles, labels, loc="upper right")
    ax.set_title(Path(run_dir).resolve().name)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out
