"""Mamba (Gu and Dao 2023): a selective state-space layer in plain PyTorch, beside attention.

Each of the layer's ``d_inner`` channels carries a state of ``d_state`` numbers along the text:

    h_t = exp(delta_t A) * h_{t-1} + delta_t B_t x_t        h_t, A: (d_inner, d_state)
    y_t = C_t . h_t + D x_t                                  C_t . h_t sums over d_state

A is diagonal (one decay rate per channel and state number) and negative, A = -exp(A_log), so
the state forgets; the step size delta_t (per channel), B_t and C_t (d_state each) are computed
from the input, so what is kept and what is read depends on the token ("selective").

**Training** runs the recurrence for all T positions at once. It is linear in h,
h_t = a_t h_{t-1} + b_t, and such steps compose associatively,

    (a1, b1) then (a2, b2)  =  (a2 a1, a2 b1 + b2),

so a parallel prefix scan (Blelloch 1990) gives every h_t in 2 log2(T) sweeps over the sequence
(``linear_scan``); its gradient is the same kind of scan run backwards in time.

**Generation** keeps the state instead of keys and values: per layer, h (d_inner, d_state) and
the last ``d_conv - 1`` inputs of the convolution (``MambaState``, a slot of the ``KVCache``).
A new token costs the same however long the text already is (O(1) in T, not O(T) as attention).

The layer (the paper's Figure 3), ``MambaMixer``, registered as the attention kind ``"mamba"`` so
that a per-layer pattern mixes it with attention (``attention=["mamba", "mamba", "multihead"]``,
a hybrid stack, each layer with its feed-forward, as Jamba does); the block kind ``"mamba"`` is
the paper's residual block, norm and mixer with no feed-forward:

    x, z = in_proj(u)                          (B, T, d_inner) each, d_inner = ssm_expand * d_model
    x = silu(causal depthwise conv1d(x))       kernel ssm_conv, per channel
    delta, B, C = split(x_proj(x));  delta = softplus(dt_proj(delta) + dt_bias)
    y = selective_scan(x, delta, A, B, C, D) * silu(z)
    out = out_proj(y)

The layer reads no positions (the convolution and the scan are causal by construction) and ignores
the attention mask: rows of a batch must be padded on the right. mamba-minimal (sequential) and
mamba.py (a pure-PyTorch parallel scan) are readable anchors; the CUDA kernel fuses the scan
without ever storing h for every position, which this version does (memory B T d_inner d_state).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.errors import ScratchLLMError
from scratchllm.model import registry
from scratchllm.model.config import GPTConfig
from scratchllm.model.registry import register

# -- the scan --------------------------------------------------------------------------------


def _scan_power_of_two_(a: torch.Tensor, b: torch.Tensor) -> None:
    """In place, along dim 1 (length T, a power of two): b[:, t] <- a[:, t] b[:, t-1] + b[:, t]
    for t = 0..T-1 in order, so b ends as the states h; a is overwritten.

    Up-sweep: blocks of 2, 4, ... T positions; the last position of each block combines its two
    halves, so it holds the pair (product of a, state from a zero start) of the whole block.
    Down-sweep: blocks of T/2, ... 2; the middle of each block (the end of its first half, which
    holds that half's pair) takes in the full state before the block, from the previous block's
    end. After the sweep with blocks of 2, every position holds its state.
    """
    B, T, rest = b.shape[0], b.shape[1], b.shape[2:]
    s = 1
    while s < T:  # up-sweep: blocks of 2s
        av, bv = a.view(B, T // (2 * s), 2 * s, *rest), b.view(B, T // (2 * s), 2 * s, *rest)
        bv[:, :, -1] += av[:, :, -1] * bv[:, :, s - 1]
        av[:, :, -1] *= av[:, :, s - 1]
        s *= 2
    s = T // 4
    while s >= 1:  # down-sweep: in blocks of 2s, position s - 1 reads the end of the block before
        av, bv = a.view(B, T // (2 * s), 2 * s, *rest), b.view(B, T // (2 * s), 2 * s, *rest)
        bv[:, 1:, s - 1] += av[:, 1:, s - 1] * bv[:, :-1, -1]
        s //= 2


def _scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t along dim 1 from h_{-1} = 0, out of place; any length (padded at the
    end to a power of two: the padding comes after every real position, so it changes none)."""
    B, T = b.shape[:2]
    padded = 1 << (T - 1).bit_length()
    a_work = a.new_zeros(B, padded, *a.shape[2:])
    h = b.new_zeros(B, padded, *b.shape[2:])
    a_work[:, :T], h[:, :T] = a, b
    _scan_power_of_two_(a_work, h)
    return h[:, :T]


class _LinearScan(torch.autograd.Function):
    """``_scan`` with its gradient. For a loss L with g_t = dL/dh_t (from the outputs),
    the adjoint delta_t = dL/dh_t through all later states obeys the same recurrence backwards,

        delta_t = g_t + a_{t+1} delta_{t+1},    dL/db_t = delta_t,    dL/da_t = delta_t h_{t-1},

    so the backward pass is one more scan (on the time-reversed sequence) instead of autograd
    storing every sweep."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h = _scan(a, b)
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx, grad_h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, h = ctx.saved_tensors
        a_next = torch.cat([a[:, 1:], torch.zeros_like(a[:, :1])], dim=1)  # a_{t+1}; nothing after the end
        delta = _scan(a_next.flip(1), grad_h.flip(1)).flip(1)
        h_prev = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)  # h_{t-1}; zero before the start
        return delta * h_prev, delta


def linear_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Every state of h_t = a_t h_{t-1} + b_t (h_{-1} = 0), t along dim 1, by a parallel scan;
    a and b (B, T, ...) of one shape; differentiable in both.

    >>> linear_scan(torch.tensor([[0.5, 0.5, 2.0]]), torch.tensor([[1.0, 1.0, 1.0]]))
    tensor([[1.0000, 1.5000, 4.0000]])
    """
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return _LinearScan.apply(a, b)
    return _scan(a, b)


def selective_scan(
    x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor,
    h0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The selective state-space recurrence of the module docstring over T positions at once.

    x, delta (batch, T, d_inner); A (d_inner, d_state); B, C (batch, T, d_state); D (d_inner,);
    h0 (batch, d_inner, d_state): the state before the first position (None: zeros).
    Returns y (batch, T, d_inner) and the state after the last position (batch, d_inner, d_state).
    """
    a = torch.exp(delta.unsqueeze(-1) * A)  # (batch, T, d_inner, d_state): the decay of each step
    b = (delta * x).unsqueeze(-1) * B.unsqueeze(2)  # (batch, T, d_inner, d_state): what each step writes
    if h0 is not None:  # the state before the text enters through the first step: a_0 h0 + b_0
        b = torch.cat([b[:, :1] + a[:, :1] * h0.unsqueeze(1), b[:, 1:]], dim=1)
    h = linear_scan(a, b)  # (batch, T, d_inner, d_state)
    y = torch.einsum("btdn,btn->btd", h, C) + D * x
    return y, h[:, -1]


# -- generation state ------------------------------------------------------------------------


class MambaState:
    """One Mamba layer's slot in a ``KVCache``: what generation carries from token to token,
    of a size that does not grow with the text.

    conv: (batch, d_inner, d_conv - 1), the last inputs of the causal convolution;
    ssm: (batch, d_inner, d_state), the scan's state h. Zeros: the state before any token.
    ``max_len`` is only the cache's bound on positions (other layers' keys and values).
    """

    def __init__(self, batch_size: int, d_inner: int, d_conv: int, d_state: int, max_len: int,
                 device=None, dtype=None) -> None:
        self.conv = torch.zeros(batch_size, d_inner, d_conv - 1, device=device, dtype=dtype)
        self.ssm = torch.zeros(batch_size, d_inner, d_state, device=device, dtype=dtype)
        self.max_len = max_len

    @property
    def nbytes(self) -> int:
        """Bytes this layer's state holds for all its rows, whatever the text's length."""
        return self.conv.nbytes + self.ssm.nbytes

    def move_row(self, src: int, dst: int, length: int) -> None:
        """Copy row ``src``'s state into row ``dst`` (the engine compacting its rows)."""
        self.conv[dst] = self.conv[src]
        self.ssm[dst] = self.ssm[src]

    def clear_row(self, row: int) -> None:
        """Row ``row`` back to the state before any token (a new sequence takes the slot)."""
        self.conv[row] = 0
        self.ssm[row] = 0


# -- the layer and the block -----------------------------------------------------------------


def _check_ssm_config(config: GPTConfig) -> None:
    for name in ("ssm_state", "ssm_expand", "ssm_conv"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ScratchLLMError(f"{name} must be a positive integer for the mamba layer, got {value!r}")


@register("attention", "mamba")
class MambaMixer(nn.Module):
    """Mamba's selective state-space layer (module docstring), in the attention slot of a block:
    x (B, T, d_model) -> (B, T, d_model), with a ``MambaState`` for generation."""

    check_config = staticmethod(_check_ssm_config)

    def __init__(self, config: GPTConfig, layer_index: int = 0) -> None:
        super().__init__()
        d_model = config.d_model
        self.d_inner, self.d_state, self.d_conv = config.ssm_expand * d_model, config.ssm_state, config.ssm_conv
        self.dt_rank = math.ceil(d_model / 16)  # the paper's default rank of the step-size projection
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=config.bias)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, self.d_conv, groups=self.d_inner)  # per channel
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * self.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=False)
        # The step size's bias is its own parameter, so GPT.init_weights (zero biases) keeps
        # Mamba's initialisation: delta = softplus(dt_bias) log-uniform in [0.001, 0.1].
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(0.1) - math.log(0.001)) + math.log(0.001))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        # S4D-real: A = -(1, 2, ..., d_state) in every channel, stored as its log so it stays negative
        self.A_log = nn.Parameter(torch.log(torch.arange(1, self.d_state + 1).float()).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=config.bias)
        self.store_attention = False  # GPT.inspect asks every layer; a scan has no attention weights
        self.last_attention: torch.Tensor | None = None

    def new_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> MambaState:
        """This layer's slot in a ``KVCache``: its state, the same size for any text length."""
        return MambaState(batch_size, self.d_inner, self.d_conv, self.d_state, max_len, device, dtype)

    def residual_projections(self) -> list[nn.Linear]:
        return [self.out_proj]

    def forward(self, x: torch.Tensor, rope=None, mask=None, cache=None, layer: int = 0) -> torch.Tensor:
        """x (B, T, d_model) -> (B, T, d_model). With a cache, the T tokens continue the state in
        ``cache.layers[layer]`` (rows ``cache.rows``), which is then advanced past them.
        ``rope`` and ``mask`` are the attention layers' and are not read."""
        state = cache.layers[layer] if cache is not None else None
        rows = cache.rows if cache is not None else slice(None)
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (B, T, d_inner) each
        xs, conv_state = self.causal_conv(xs, state.conv[rows] if state is not None else None)
        xs = F.silu(xs)
        dt, B, C = self.x_proj(xs).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt) + self.dt_bias)  # (B, T, d_inner), > 0
        A = -torch.exp(self.A_log)  # (d_inner, d_state), < 0
        y, h = selective_scan(xs, delta, A, B, C, self.D, state.ssm[rows] if state is not None else None)
        if state is not None:
            state.conv[rows], state.ssm[rows] = conv_state, h
        return self.out_proj(y * F.silu(z))

    def causal_conv(self, x: torch.Tensor, before: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The depthwise convolution over x (B, T, d_inner), each position reading itself and the
        d_conv - 1 inputs before it: ``before`` (B, d_inner, d_conv - 1), zeros at the start of a
        text. Returns the output (B, T, d_inner) and the last d_conv - 1 inputs, for the next call."""
        x = x.transpose(1, 2)  # (B, d_inner, T)
        if before is None:
            before = x.new_zeros(x.shape[0], self.d_inner, self.d_conv - 1)
        window = torch.cat([before, x], dim=-1)  # (B, d_inner, d_conv - 1 + T)
        return self.conv1d(window).transpose(1, 2), window[:, :, window.shape[-1] - (self.d_conv - 1):]


@register("block", "mamba")
class MambaBlock(nn.Module):
    """Mamba's residual block: x + Mixer(Norm(x)); no feed-forward, the mixer's gated expansion
    takes its place (the paper stacks these alone)."""

    check_config = staticmethod(_check_ssm_config)

    def __init__(self, config: GPTConfig, layer_index: int = 0) -> None:
        super().__init__()
        self.norm = registry.build("norm", config.norm, config, layer_index)
        self.mixer = MambaMixer(config, layer_index)
        self.drop_shortcut = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rope=None, mask=None, cache=None, layer: int = 0) -> torch.Tensor:
        return x + self.drop_shortcut(self.mixer(self.norm(x), rope, mask, cache, layer))

    @property
    def attention(self) -> MambaMixer:
        """The block's sequence-mixing layer (the GPT asks it for its cache slot)."""
        return self.mixer

    def residual_projections(self) -> list[nn.Linear]:
        return self.mixer.residual_projections()
