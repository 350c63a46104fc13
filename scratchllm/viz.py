"""Pictures of what happens inside a GPT: attention heatmaps, the sinusoidal position encoding,
the residual stream and the next-token distribution; of a classifier: its confusion matrix
and its loss and accuracy per epoch; and lines to compare (``plot_curves``, the benchmarks').

Each function draws one figure with matplotlib's file-only backend (Agg) and writes it as PNG
atomically; each returns the path it wrote. The training loss curve lives with the training code
(``scratchllm.train.metrics.plot_run``).

Heatmaps read like the book's figures: row i is a query token, column j the token it attends to,
so row i of an attention map holds the weights with which token i mixes the values of tokens
0..i; masked entries (j > i) are drawn blank.

>>> save_attention_maps(model, tokenizer, "Every effort moves you", "runs/attn")   # doctest: +SKIP
[PosixPath('runs/attn/attention-layer0.png'), ..., PosixPath('runs/attn/attention.png')]
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.fileio import atomic_path
from scratchllm.model.positions import sinusoidal_encoding

MAX_LABELLED_TOKENS = 48  # beyond this many tokens, tick labels would overlap: leave them out


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    _pyplot().close(fig)
    return path


def token_text(tokenizer: Any, token_id: int) -> str:
    """A token's text, or its bytes in hex when they are only part of a UTF-8 character.

    >>> from scratchllm.tokenizer import BPETokenizer
    >>> tok = BPETokenizer([], pattern="gpt2")
    >>> token_text(tok, 104), token_text(tok, 0xE2)
    ('h', '<0xE2>')
    """
    data = tokenizer.token_bytes(int(token_id))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(f"<0x{b:02X}>" for b in data)


def token_labels(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """A short printable label per token: spaces as '·', line breaks as '⏎'.

    >>> from scratchllm.tokenizer import BPETokenizer
    >>> token_labels(BPETokenizer([], pattern="gpt2"), [72, 105, 32, 10])
    ['H', 'i', '·', '⏎']
    """
    return [token_text(tokenizer, i).replace(" ", "·").replace("\n", "⏎") for i in ids]


def hide_future(weights: torch.Tensor) -> torch.Tensor:
    """Attention weights (..., T, T) with the causally masked entries (key after query) set to
    NaN, so heatmaps draw them blank instead of as a zero.

    >>> hide_future(torch.ones(2, 2))
    tensor([[1., nan],
            [1., 1.]])
    """
    T = weights.shape[-1]
    future = torch.ones(T, T, dtype=torch.bool, device=weights.device).triu(1)
    return weights.float().masked_fill(future, float("nan"))


def plot_heatmaps(
    panels: Sequence[tuple[str, torch.Tensor]],
    path: str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
    ncols: int | None = None,
    title: str | None = None,
    cmap: str = "viridis",
) -> Path:
    """Draw each ``(title, matrix (T, T))`` panel as a heatmap, queries down, keys across.

    ``-inf`` entries (masked scores) and NaNs are drawn blank. ``labels`` name the tokens on
    both axes (left out beyond ``MAX_LABELLED_TOKENS``).
    """
    if not panels:
        raise ScratchLLMError("nothing to draw: no heatmap panels given")
    plt = _pyplot()
    ncols = ncols or len(panels)
    nrows = math.ceil(len(panels) / ncols)
    size = 2.2 + 0.16 * min(panels[0][1].shape[-1], MAX_LABELLED_TOKENS)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), dpi=100, squeeze=False)
    show_labels = labels is not None and len(labels) <= MAX_LABELLED_TOKENS
    for ax, (name, matrix) in zip(axes.flat, panels, strict=False):
        values = matrix.detach().float().cpu()
        values = values.masked_fill(~torch.isfinite(values), float("nan"))  # blank, not a colour
        image = ax.imshow(values.numpy(), cmap=cmap, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        if show_labels:
            ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
            ax.set_yticks(range(len(labels)), labels, fontsize=7)
        else:
            ax.set_xlabel("key position", fontsize=8)
            ax.set_ylabel("query position", fontsize=8)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def plot_attention_layer(weights: torch.Tensor, path: str | os.PathLike, *, labels: Sequence[str] | None = None,
                         layer: int = 0) -> Path:
    """One layer's attention weights (H, T, T): one heatmap per head, four heads to a row."""
    heads = [(f"layer {layer}, head {h}", hide_future(w)) for h, w in enumerate(weights)]
    return plot_heatmaps(heads, path, labels=labels, ncols=min(4, len(heads)),
                         title=f"attention weights, layer {layer} (row = query token, column = key token)")


def plot_attention_grid(attention: Sequence[torch.Tensor], path: str | os.PathLike, *,
                        labels: Sequence[str] | None = None) -> Path:
    """Every layer's (H, T, T) weights at once: a row per layer, a column per head."""
    panels = [(f"L{layer} H{h}", hide_future(w))
              for layer, weights in enumerate(attention) for h, w in enumerate(weights)]
    n_heads = len(attention[0])
    # Small multiples: token labels would not fit, so only positions are shown.
    return plot_heatmaps(panels, path, labels=labels if len(panels) <= 4 else None, ncols=n_heads,
                         title="attention weights: a row per layer, a column per head")


def plot_sinusoidal_encoding(path: str | os.PathLike, n_positions: int = 64, dim: int = 64) -> Path:
    """The fixed encoding PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...) as a heatmap
    (positions down; the sin dimensions, then the cos ones, across) and as curves of a few
    dimensions against position: each pair of dimensions turns at its own speed."""
    plt = _pyplot()
    pe = sinusoidal_encoding(torch.arange(n_positions), dim)  # (n_positions, dim), sin and cos interleaved
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    by_kind = torch.cat((pe[:, 0::2], pe[:, 1::2]), dim=1)  # sin of every frequency, then cos
    image = left.imshow(by_kind.numpy(), cmap="RdBu", aspect="auto", vmin=-1, vmax=1, interpolation="nearest")
    left.axvline(dim / 2 - 0.5, color="black", lw=1)
    left.set_xticks([dim / 4, 3 * dim / 4], ["sin(p w_i), i = 0..d/2-1", "cos(p w_i), i = 0..d/2-1"])
    left.set_ylabel("position p")
    left.set_title(f"sinusoidal encoding, {n_positions} positions x {dim} dimensions", fontsize=10)
    fig.colorbar(image, ax=left)
    for i in sorted({0, dim // 16, dim // 8, dim // 4, dim // 2 - 1}):
        right.plot(pe[:, 2 * i].numpy(), lw=1.2, label=f"dim {2 * i}: sin(p / 10000^({2 * i}/{dim}))")
    right.set_xlabel("position p")
    right.set_ylabel("value")
    right.set_title("low dimensions turn fast, high ones slowly", fontsize=10)
    right.legend(fontsize=8, loc="lower left")
    right.grid(alpha=0.3)
    return _save(fig, path)


def plot_residual_stream(norms: torch.Tensor, path: str | os.PathLike, *, labels: Sequence[str] | None = None) -> Path:
    """The size (L2 norm) of each token's vector in the residual stream, (n_layers + 1, T):
    row 0 is the input embeddings, row l the stream after block l."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    for t in range(norms.shape[1]):
        name = labels[t] if labels is not None and t < len(labels) else str(t)
        ax.plot(range(norms.shape[0]), norms[:, t].float().numpy(), "o-", lw=1, ms=3,
                label=name if norms.shape[1] <= 12 else None)
    ax.set_xticks(range(norms.shape[0]), ["embeddings"] + [f"block {i}" for i in range(norms.shape[0] - 1)],
                  fontsize=8)
    ax.set_ylabel("L2 norm of the token's vector")
    ax.set_title("the residual stream: every block adds its output to it", fontsize=10)
    ax.grid(alpha=0.3)
    if norms.shape[1] <= 12:
        ax.legend(fontsize=7, ncols=2)
    return _save(fig, path)


def plot_next_token(probs: Sequence[float], labels: Sequence[str], path: str | os.PathLike, *,
                    title: str = "next-token probabilities") -> Path:
    """A horizontal bar per candidate token, most likely on top."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(probs) + 1.2), dpi=100)
    ax.barh(range(len(probs))[::-1], probs, color="tab:blue")
    ax.set_yticks(range(len(probs))[::-1], [repr(s) for s in labels], fontsize=9)
    ax.set_xlabel("probability")
    ax.set_title(title, fontsize=10)
    for y, p in zip(range(len(probs))[::-1], probs, strict=True):
        ax.text(p, y, f" {p:.3f}", va="center", fontsize=8)
    ax.set_xlim(0, max(max(probs) * 1.25, 1e-3))
    return _save(fig, path)


def plot_confusion_matrix(counts: torch.Tensor, labels: Sequence[str], path: str | os.PathLike, *,
                          title: str = "confusion matrix") -> Path:
    """Counts (C, C) as a heatmap with the numbers written in: row = true label, column = predicted."""
    plt = _pyplot()
    size = 1.2 + 0.8 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1, size), dpi=100)
    image = ax.imshow(counts.float().numpy(), cmap="Blues")
    for (i, j), value in zip(((i, j) for i in range(len(labels)) for j in range(len(labels))),
                             counts.flatten().tolist(), strict=True):
        ax.text(j, i, f"{int(value)}", ha="center", va="center",
                color="white" if value > counts.max().item() / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 4 else 0)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax)
    return _save(fig, path)


def plot_epoch_curves(records: Sequence[dict[str, float]], path: str | os.PathLike) -> Path:
    """Loss (left) and accuracy (right) per epoch, train and validation: records of
    ``{"epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy"}``."""
    plt = _pyplot()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    epochs = [r["epoch"] for r in records]
    for name in ("train", "val"):
        label = "validation" if name == "val" else name
        loss_ax.plot(epochs, [r[f"{name}_loss"] for r in records], "o-", label=label)
        acc_ax.plot(epochs, [r[f"{name}_accuracy"] for r in records], "o-", label=label)
    for ax, what in ((loss_ax, "cross-entropy per example"), (acc_ax, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_curves(curves: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | os.PathLike, *,
                xlabel: str, ylabel: str, title: str = "", log_x: bool = False, log_y: bool = False,
                vline: float | None = None, vline_label: str = "") -> Path:
    """One line per ``label: (xs, ys)`` on shared axes (benchmarks' comparisons); ``vline`` marks
    an x such as the training context."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for label, (xs, ys) in curves.items():
        ax.plot(xs, ys, "o-" if len(xs) <= 12 else "-", label=label, markersize=4)
    if vline is not None:
        ax.axvline(vline, color="grey", linestyle="--", linewidth=1, label=vline_label or None)
    ax.set_xscale("log" if log_x else "linear")
    ax.set_yscale("log" if log_y else "linear")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


@torch.no_grad()
def save_attention_maps(model: Any, tokenizer: Any, text: str, out: str | os.PathLike, *,
                        per_layer: bool = True, special: str = "refuse") -> list[Path]:
    """Run ``text`` through ``model`` and save its attention weights: ``attention-layer{l}.png``
    per layer (one panel per head; unless ``per_layer=False``) and ``attention.png`` with every
    layer and head.

    Learned-position models see at most their context; a longer text is an error naming it.
    ``special``: what a special-token string in ``text`` becomes (``BPETokenizer.encode_user_text``).
    """
    ids = tokenizer.encode_user_text(text, special, "--text")
    if not ids:
        raise ScratchLLMError("the text is empty: give --text with at least one character")
    context = model.config.context_length
    if model.config.pos_encoding == "learned" and len(ids) > context:
        raise ScratchLLMError(f"the text is {len(ids)} tokens, the model reads at most {context}: "
                              "give a shorter --text")
    model.eval()
    record = model.inspect(torch.tensor([ids], device=next(model.parameters()).device))
    attention = [weights[0].cpu() for weights in record["attention"]]  # per layer (H, T, T)
    labels = token_labels(tokenizer, ids)
    out = Path(out)
    paths = [plot_attention_layer(weights, out / f"attention-layer{layer}.png", labels=labels, layer=layer)
             for layer, weights in enumerate(attention) if per_layer]
    paths.append(plot_attention_grid(attention, out / "attention.png", labels=labels))
    return paths
