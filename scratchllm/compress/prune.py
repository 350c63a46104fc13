"""Pruning: removing the weights a trained model uses least.

Two kinds, with opposite costs:

- **Unstructured** (``magnitude``, ``wanda``, ``2:4``): individual weights of every linear layer
  inside the blocks are set to zero; the matrices keep their shapes. The model is no smaller or
  faster on dense kernels (the zeros are stored and multiplied); what it shows is how many
  weights a model can lose, and 2:4 is the pattern sparse tensor cores of recent GPUs run at
  about twice the speed.
- **Structured** (``heads``, ``neurons``): whole attention heads and feed-forward neurons are
  removed, so W_qkv, out_proj, fc_in and fc_out really shrink, the config records the smaller
  sizes, and the model is smaller and faster everywhere.

The scores, for a linear layer y = x W^T with weight W (out, in):

    magnitude:  S_ij = |W_ij|                      lowest S over the whole matrix removed (Han et al. 2015)
    wanda:      S_ij = |W_ij| * ||X_j||_2          lowest S in each output row i removed (Sun et al. 2023)
    2:4:        in every group of 4 consecutive inputs of a row, the 2 lowest Wanda scores removed

where ||X_j||_2 is the norm of input feature j over every token of a calibration set. Wanda's
point: a small weight on an input that is often large matters more than a larger weight on an input
that is nearly always zero, and LLMs have a few such large "outlier" features. Blocks are pruned
in order, each scored on the inputs that the already pruned blocks before it produce (the paper's
sequential variant). The token table and the head stay dense (as in the paper).

For the structured methods, the importance of a unit is the size of what it adds to the residual
stream over the calibration set, and each layer keeps the same number of its most important units:

    neuron k:  ||a_k||_2 * ||W_out[:, k]||_2       a_k its activation: the exact norm of a_k W_out[:, k]^T
    head h:    ||O_h W_O[:, h]^T||_F               O_h its output (tokens, head_dim), W_O[:, h] its columns

>>> scores = torch.tensor([[4.0, 1.0, 3.0, 2.0]])
>>> n_m_mask(scores, 2, 4).int().tolist(), row_mask(scores, 0.25).int().tolist()
([[1, 0, 1, 0]], [[1, 0, 1, 1]])
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from scratchllm.errors import ScratchLLMError, check_range

METHODS = ("magnitude", "wanda", "2:4", "heads", "neurons")
UNSTRUCTURED = ("magnitude", "wanda", "2:4")
NEEDS_CALIBRATION = ("wanda", "2:4", "heads", "neurons")


# ------------------------------------------------------------------------------------ scores
def wanda_scores(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """Wanda's |W_ij| * ||X_j||_2 for a weight (out, in) and the inputs' column norms (in,)."""
    return weight.detach().abs() * input_norm[None, :]


def layer_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """True where a weight stays: the ``sparsity`` fraction with the lowest scores of the whole matrix goes."""
    n_pruned = int(sparsity * scores.numel())
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    keep[torch.argsort(scores.flatten(), stable=True)[:n_pruned]] = False
    return keep.view_as(scores)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """True where a weight stays: in each output row, the ``sparsity`` fraction with the lowest scores goes."""
    n_pruned = int(sparsity * scores.shape[1])
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep.scatter_(1, torch.argsort(scores, dim=1, stable=True)[:, :n_pruned], False)
    return keep


def n_m_mask(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """True where a weight stays: the ``n`` highest scores of every ``m`` consecutive inputs of a row."""
    rows, cols = scores.shape
    if cols % m:
        raise ScratchLLMError(f"{n}:{m} sparsity needs layers whose input width is a multiple of {m}, got {cols}")
    groups = scores.reshape(rows, cols // m, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(2, torch.topk(groups, n, dim=2).indices, True)
    return keep.reshape(rows, cols)


# ---------------------------------------------------------------------------- calibration data
def calibration_batches(tokens: np.ndarray | Sequence[int], seq_len: int, n_samples: int, batch_size: int,
                        seed: int = 0) -> list[torch.Tensor]:
    """``n_samples`` windows of ``seq_len`` tokens (at most as many as ``tokens`` holds) drawn at random,
    in batches (B, seq_len).

    Too little text for one batch is an error: a score from a handful of tokens is noise.
    """
    check_range("--calibration-samples", n_samples, 1)
    check_range("--batch-size", batch_size, 1)
    check_range("--calibration-length", seq_len, 1)
    tokens = np.asarray(tokens)
    available = len(tokens) // seq_len
    if n_samples < batch_size or available < batch_size:
        raise ScratchLLMError(
            f"the calibration set ({min(n_samples, available)} windows of {seq_len} tokens; the text holds "
            f"{len(tokens):,} tokens) is smaller than one batch of {batch_size}: give more text, more "
            "--calibration-samples, a shorter --calibration-length or a smaller --batch-size")
    generator = np.random.default_rng(seed)  # at most as many windows as fit side by side: no text counted twice
    starts = generator.choice(len(tokens) - seq_len + 1, size=min(n_samples, available), replace=False)
    windows = torch.from_numpy(np.stack([tokens[s:s + seq_len] for s in starts]).astype(np.int64))
    return list(windows.split(batch_size))


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layer it watches has run."""


@contextlib.contextmanager
def _watch_inputs(layers: dict[str, nn.Module], record: dict[str, list[torch.Tensor]],
                  stop_after: nn.Module | None = None) -> Iterator[None]:
    """Append each watched layer's input, flattened to (tokens, features), to ``record[name]``."""
    def keep(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            record.setdefault(name, []).append(args[0].detach().flatten(0, -2).float())
        return hook

    def stop(module: nn.Module, args: tuple, output: Any) -> None:
        raise _Stop

    handles = [layer.register_forward_pre_hook(keep(name)) for name, layer in layers.items()]
    if stop_after is not None:
        handles.append(stop_after.register_forward_hook(stop))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def _run(model: nn.Module, batches: list[torch.Tensor]) -> None:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for batch in batches:
            with contextlib.suppress(_Stop):
                model(batch.to(device))
    finally:
        model.train(was_training)


@torch.no_grad()
def input_norms(model: nn.Module, layers: dict[str, nn.Module], batches: list[torch.Tensor],
                stop_after: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """||X_j||_2 for every input feature j of each of ``layers``, over all tokens of ``batches``."""
    record: dict[str, list[torch.Tensor]] = {}
    squares: dict[str, torch.Tensor] = {}
    with _watch_inputs(layers, record, stop_after):
        for batch in batches:  # one batch at a time: the inputs of all calibration tokens need not fit
            _run(model, [batch])
            for name, inputs in record.items():
                squares[name] = squares.get(name, 0) + sum(x.pow(2).sum(dim=0) for x in inputs)
            record.clear()
    return {name: s.sqrt() for name, s in squares.items()}


# ------------------------------------------------------------------------------- unstructured
def block_linears(model: nn.Module) -> list[dict[str, nn.Linear]]:
    """Per block, its linear layers by name (W_qkv, out_proj, fc_in, fc_out): what pruning touches."""
    return [{name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)} for block in model.trf_blocks]


def check_prunable(model: nn.Module, method: str, sparsity: float) -> None:
    """Refuse, in one line, a method or a sparsity that cannot be done on this model."""
    from scratchllm.finetune.lora import lora_spec

    if method not in METHODS:
        raise ScratchLLMError(f"unknown pruning method {method!r}: use one of {', '.join(METHODS)}")
    check_range("--sparsity", sparsity, 0, 1, high_open=True, note="the fraction of weights or units removed")
    if method == "2:4" and sparsity != 0.5:
        raise ScratchLLMError(f"2:4 removes 2 of every 4 weights, a sparsity of 0.5; got --sparsity {sparsity}")
    if lora_spec(model):
        raise ScratchLLMError("this checkpoint has LoRA adapters: merge them first (scratchllm finetune --merge), "
                              "then prune the merged model")
    config = model.config
    if method == "heads" and set(config.part_names("attention")) != {"multihead"}:
        raise ScratchLLMError(f"head pruning takes multi-head attention; this model has {config.attention!r} "
                              "(grouped-query heads share keys and values): prune neurons instead")
    if method == "heads" and round((1 - sparsity) * config.n_heads) < 1:
        raise ScratchLLMError(f"--sparsity {sparsity} keeps no head of {config.n_heads}: give at most "
                              f"{1 - 0.5 / config.n_heads:.3f}")
    if method == "neurons" and round((1 - sparsity) * config.hidden_dim) < 1:
        raise ScratchLLMError(f"--sparsity {sparsity} keeps no neuron of {config.hidden_dim}")


def prune_unstructured(model: nn.Module, method: str, sparsity: float,
                       calibration: list[torch.Tensor] | None = None, progress: bool = False) -> nn.Module:
    """Zero weights of every linear layer in the blocks, in place (``magnitude``, ``wanda`` or ``2:4``).

    Wanda and 2:4 score each block on the calibration inputs that reach it through the blocks
    already pruned before it.
    """
    check_prunable(model, method, sparsity)
    if method != "magnitude" and not calibration:
        raise ScratchLLMError(f"{method} pruning scores weights by their inputs: give calibration text (--data)")
    for index, linears in enumerate(tqdm(block_linears(model), desc=f"prune {method}", unit="block",
                                         disable=not progress)):
        norms = {}
        if method != "magnitude":
            norms = input_norms(model, linears, calibration, stop_after=model.trf_blocks[index])
        for name, linear in linears.items():
            weight = linear.weight.data
            if method == "magnitude":
                keep = layer_mask(weight.abs(), sparsity)
            elif method == "wanda":
                keep = row_mask(wanda_scores(weight, norms[name]), sparsity)
            else:
                keep = n_m_mask(wanda_scores(weight, norms[name]), 2, 4)
            weight.mul_(keep)
    return model


def sparsity_of(model: nn.Module) -> float:
    """The fraction of zero weights over the linear layers of the blocks."""
    weights = [linear.weight for linears in block_linears(model) for linear in linears.values()]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


@contextlib.contextmanager
def frozen_zeros(model: nn.Module) -> Iterator[None]:
    """While inside, the zero weights of the blocks' linear layers get zero gradients, so a recovery
    fine-tune keeps them zero (AdamW moves a weight only by its gradient's moments and by decay
    proportional to the weight itself, both zero there)."""
    handles = []
    for linears in block_linears(model):
        for linear in linears.values():
            mask = (linear.weight.detach() != 0).to(linear.weight.dtype)
            handles.append(linear.weight.register_hook(lambda grad, mask=mask: grad * mask))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# --------------------------------------------------------------------------------- structured
@torch.no_grad()
def neuron_importance(model: nn.Module, calibration: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per block, ||a_k||_2 * ||W_out[:, k]||_2 for each feed-forward neuron k (hidden,)."""
    layers = {str(i): block.ff.fc_out for i, block in enumerate(model.trf_blocks)}
    norms = input_norms(model, layers, calibration)
    return [norms[str(i)] * block.ff.fc_out.weight.norm(dim=0) for i, block in enumerate(model.trf_blocks)]


@torch.no_grad()
def head_importance(model: nn.Module, calibration: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per block, ||O_h W_O[:, h]^T||_F for each attention head h (n_heads,): the size of what the
    head writes into the residual stream over the calibration tokens."""
    config = model.config
    H, hd = config.n_heads, config.head_dim
    layers = {str(i): block.att.out_proj for i, block in enumerate(model.trf_blocks)}
    squares = [torch.zeros(H) for _ in layers]
    record: dict[str, list[torch.Tensor]] = {}
    with _watch_inputs(layers, record):
        for batch in calibration:
            _run(model, [batch])
            for name, inputs in record.items():
                W_o = layers[name].weight.float().cpu().view(-1, H, hd)  # (d_model, H, hd)
                for x in inputs:  # (tokens, H * hd): the heads' outputs side by side
                    writes = torch.einsum("nhk,dhk->nhd", x.cpu().view(-1, H, hd), W_o)  # (tokens, H, d_model)
                    squares[int(name)] += writes.pow(2).sum(dim=(0, 2))
            record.clear()
    return [s.sqrt() for s in squares]


def _kept(importance: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Indices of the ``n_keep`` most important units, in their original order."""
    return torch.topk(importance, n_keep).indices.sort().values


@torch.no_grad()
def shrink(model: nn.Module, heads: list[torch.Tensor] | None = None,
           neurons: list[torch.Tensor] | None = None) -> nn.Module:
    """A new, smaller GPT keeping, per block, the heads ``heads[i]`` and the neurons ``neurons[i]``
    (indices; equally many in every block) of ``model``: the rows and columns of the other units
    are gone from W_qkv, out_proj, fc_in and fc_out, and the config says the new sizes."""
    from scratchllm.model import GPT

    config = model.config
    changes: dict[str, Any] = {}
    if heads is not None:
        changes.update(n_heads=len(heads[0]), attn_head_dim=config.head_dim)
    if neurons is not None:
        changes.update(ffn_hidden=len(neurons[0]))
    small = GPT(dataclasses.replace(config, **changes))
    state = model.state_dict()
    hd, width, hidden = config.head_dim, config.attn_dim, config.hidden_dim
    for i in range(config.n_layers):
        prefix = f"trf_blocks.{i}."
        if heads is not None:
            columns = (heads[i][:, None] * hd + torch.arange(hd)).flatten()  # the kept heads' slices of Q
            rows = torch.cat([columns, width + columns, 2 * width + columns])  # ... of Q, K and V in W_qkv
            for name in ("att.W_qkv.weight", "att.W_qkv.bias"):
                if prefix + name in state:
                    state[prefix + name] = state[prefix + name][rows]
            state[prefix + "att.out_proj.weight"] = state[prefix + "att.out_proj.weight"][:, columns]
        if neurons is not None:
            kept = neurons[i]
            if config.part("ffn", i) == "swiglu":  # fc_in stacks [W_gate; W_up]: the same neurons of both
                kept_in = torch.cat([kept, hidden + kept])
            else:
                kept_in = kept
            for name in ("ff.fc_in.weight", "ff.fc_in.bias"):
                if prefix + name in state:
                    state[prefix + name] = state[prefix + name][kept_in]
            state[prefix + "ff.fc_out.weight"] = state[prefix + "ff.fc_out.weight"][:, kept]
    small.load_state_dict(state, strict=True)
    small.tie_weights()
    return small.to(next(model.parameters()).device).train(model.training)


def prune_structured(model: nn.Module, method: str, sparsity: float, calibration: list[torch.Tensor],
                     progress: bool = False) -> nn.Module:
    """A smaller model without the ``sparsity`` fraction of heads or neurons least important in each
    block (``method`` ``heads`` or ``neurons``), scored in one pass over the calibration set."""
    check_prunable(model, method, sparsity)
    if not calibration:
        raise ScratchLLMError(f"{method} pruning scores units by what they write: give calibration text (--data)")
    config = model.config
    if method == "heads":
        n_keep = round((1 - sparsity) * config.n_heads)
        return shrink(model, heads=[_kept(s, n_keep) for s in head_importance(model, calibration)])
    n_keep = round((1 - sparsity) * config.hidden_dim)
    return shrink(model, neurons=[_kept(s, n_keep) for s in neuron_importance(model, calibration)])


def prune(model: nn.Module, method: str, sparsity: float, calibration: list[torch.Tensor] | None = None,
          progress: bool = False) -> nn.Module:
    """Prune ``model`` by ``method`` (one of ``METHODS``); unstructured methods work in place and
    return ``model``, structured ones return a new, smaller model.

    >>> from scratchllm.model import GPT, GPTConfig
    >>> model = prune(GPT(GPTConfig.preset("tiny")), "magnitude", 0.5)
    >>> sparsity_of(model)
    0.5
    """
    if method in UNSTRUCTURED:
        return prune_unstructured(model, method, sparsity, calibration, progress)
    return prune_structured(model, method, sparsity, calibration or [], progress)


def recover(model: nn.Module, tokens: np.ndarray, steps: int, *, lr: float = 1e-4, batch_size: int = 8,
            seed: int = 0, progress: bool = False) -> nn.Module:
    """A short fine-tune of a pruned ``model`` on ``tokens`` through the ``Trainer`` (next-token loss),
    with the pruned weights held at zero; returns the model, trained in place."""
    import tempfile

    from scratchllm.data.batches import RandomBatches
    from scratchllm.train import TrainConfig, Trainer

    check_range("--recover-steps", steps, 1)
    check_range("--recover-lr", lr, 0, low_open=True)
    settings = TrainConfig(max_steps=steps, batch_size=batch_size, lr=lr, min_lr=lr / 10,
                           warmup_steps=min(10, steps // 10), eval_interval=0, eval_at_start=False,
                           sample_tokens=0, plot=False, precision="fp32", seed=seed, keep_last=1,
                           peak_flops=1e12)  # only for the MFU column of a log nobody reads: skip measuring it
    batches = RandomBatches(np.asarray(tokens), batch_size, model.config.context_length, seed=seed)
    with tempfile.TemporaryDirectory(prefix="scratchllm-recover-") as run_dir, frozen_zeros(model):
        Trainer(model.train(), batches, run_dir, settings=settings, progress=progress).fit()
    return model.eval()
