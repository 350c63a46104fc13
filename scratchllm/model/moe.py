"""A mixture-of-experts feed-forward (Shazeer et al. 2017; Switch Transformer, Fedus et al. 2021):
many feed-forward networks ("experts"), of which each token uses only k.

A router (one linear layer, d_model -> n_experts) scores the experts for each token; the token goes
through its ``moe_top_k`` best, and their outputs are added, weighted by its gates:

    p = softmax(router(x))                   (n_experts,)
    E_k = the k experts of largest p;  g_e = p_e / sum_{E_k} p  (k > 1, as GShard and Mixtral),
                                       g_e = p_e               (k = 1, as Switch: the router still learns)
    y = sum_{e in E_k} g_e expert_e(x)

Parameters grow with n_experts while the compute per token stays that of k experts.

**Dispatch.** The (token, expert) assignments are sorted by expert, so each expert runs once, on
a batch of its own tokens, and the outputs are added back at their tokens (``index_add_``).

**Dropless by default** (``moe_capacity=None``): every assignment is computed, however uneven the
load. With a capacity factor c, each expert takes at most ceil(c * N k / n_experts) of the N k
assignments of a batch; first choices go before second choices, and earlier tokens before later
ones (GShard's order); an assignment past an expert's capacity is dropped: that expert adds nothing
to that token, which, if all its choices overflowed, passes through the block on the residual
connection alone. Capacity only applies in training; evaluation and generation are dropless, so
a token's output never depends on the other tokens of its batch (cached equals uncached).

**Auxiliary losses** (training forward passes leave them for the loss, ``pop_auxiliary``):

    balance  = n_experts * sum_e f_e P_e    (Switch eq. 4; 1 when balanced)
               f_e: fraction of the N k assignments routed to e, P_e: mean router probability of e
    router_z = mean over tokens of logsumexp(router logits)^2   (ST-MoE, Zoph et al. 2022: keeps
               the logits small, so the router's softmax stays in float range)

added to the loss with weights ``moe_balance_weight`` (0.01) and ``moe_z_weight`` (0.001); the
per-expert load f_e of each layer is logged beside them (``moe_load_l<layer>_e<expert>``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from scratchllm.errors import ScratchLLMError, check_range
from scratchllm.model import registry
from scratchllm.model.config import GPTConfig
from scratchllm.model.registry import register


@register("ffn", "moe")
class MixtureOfExperts(nn.Module):
    """The mixture-of-experts feed-forward of the module docstring: x (B, T, d) -> (B, T, d)."""

    def __init__(self, config: GPTConfig, layer_index: int = 0) -> None:
        super().__init__()
        self.n_experts, self.top_k, self.capacity_factor = config.n_experts, config.moe_top_k, config.moe_capacity
        self.loss_weights = {"balance": config.moe_balance_weight, "router_z": config.moe_z_weight}
        self.layer_index = layer_index
        self.router = nn.Linear(config.d_model, config.n_experts, bias=False)
        self.experts = nn.ModuleList(registry.build("ffn", config.moe_expert, config, layer_index)
                                     for _ in range(config.n_experts))
        self._auxiliary: tuple[dict[str, tuple[torch.Tensor, float]], dict[str, torch.Tensor]] | None = None

    @classmethod
    def check_config(cls, config: GPTConfig) -> None:
        n, k = config.n_experts, config.moe_top_k
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ScratchLLMError(f"n_experts must be a positive integer, got {n!r}")
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= n:
            raise ScratchLLMError(f"moe_top_k={k!r} must be between 1 and n_experts={n}: each token goes "
                                  f"through moe_top_k of the n_experts experts")
        if config.moe_expert == "moe" or config.moe_expert not in registry.names("ffn"):
            others = ", ".join(name for name in registry.names("ffn") if name != "moe")
            raise ScratchLLMError(f"moe_expert={config.moe_expert!r} must be a feed-forward kind other than "
                                  f"moe: one of {others}")
        if config.moe_capacity is not None:
            check_range("moe_capacity", config.moe_capacity, 0, low_open=True,
                        note="a capacity factor; null = dropless")
        check_range("moe_balance_weight", config.moe_balance_weight, 0)
        check_range("moe_z_weight", config.moe_z_weight, 0)

    def residual_projections(self) -> list[nn.Linear]:
        return [p for expert in self.experts for p in expert.residual_projections()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])  # (N, d)
        logits = self.router(tokens).float()  # (N, E), float32 for the softmax and the z-loss
        probs = logits.softmax(dim=-1)
        top_p, chosen = probs.topk(self.top_k, dim=-1)  # (N, k), best first
        gates = top_p / top_p.sum(dim=-1, keepdim=True) if self.top_k > 1 else top_p
        capacity = None
        if self.training and self.capacity_factor is not None:
            capacity = math.ceil(self.capacity_factor * chosen.numel() / self.n_experts)
        out, dropped = self.dispatch(tokens, chosen, gates.to(x.dtype), capacity)
        if self.training:
            self._auxiliary = self.router_losses(logits, probs, chosen, dropped)
        return out.view(shape)

    def dispatch(self, tokens: torch.Tensor, chosen: torch.Tensor, gates: torch.Tensor,
                 capacity: int | None = None) -> tuple[torch.Tensor, int]:
        """sum over each token's chosen experts of gate * expert(token): tokens (N, d), chosen and
        gates (N, k). Each expert takes at most ``capacity`` assignments (None: all), first choices
        before second ones, earlier tokens first. Returns the output (N, d) and how many
        assignments were dropped."""
        N, k = chosen.shape
        expert_of = chosen.t().reshape(-1)  # (k N,): assignment j is choice j // N of token j % N
        gate_of = gates.t().reshape(-1)
        order = expert_of.argsort(stable=True)  # by expert; within one, in assignment order
        counts = torch.bincount(expert_of, minlength=self.n_experts).tolist()
        out = torch.zeros_like(tokens)
        start, dropped = 0, 0
        for e, count in enumerate(counts):
            taken = count if capacity is None else min(count, capacity)
            dropped += count - taken
            if taken:
                assignment = order[start : start + taken]
                token = assignment % N
                out.index_add_(0, token, (self.experts[e](tokens[token]) * gate_of[assignment, None]).to(out.dtype))
            start += count
        return out, dropped

    def router_losses(self, logits: torch.Tensor, probs: torch.Tensor, chosen: torch.Tensor, dropped: int
                      ) -> tuple[dict[str, tuple[torch.Tensor, float]], dict[str, torch.Tensor]]:
        """(losses, figures) of one forward pass: each loss with its weight, and the load of each expert."""
        load = torch.bincount(chosen.reshape(-1), minlength=self.n_experts).float() / chosen.numel()  # f_e
        balance = self.n_experts * (load * probs.mean(dim=0)).sum()  # the gradient flows through P_e only
        router_z = torch.logsumexp(logits, dim=-1).square().mean()
        figures = {f"moe_load_l{self.layer_index}_e{e}": load[e] for e in range(self.n_experts)}
        if self.capacity_factor is not None:
            figures[f"moe_dropped_l{self.layer_index}"] = torch.tensor(dropped / chosen.numel())
        losses = {"balance": (balance, self.loss_weights["balance"]),
                  "router_z": (router_z, self.loss_weights["router_z"])}
        return losses, figures

    def pop_auxiliary(self) -> tuple[dict[str, tuple[torch.Tensor, float]], dict[str, torch.Tensor]]:
        """The auxiliary losses (name -> (mean over the batch's tokens, weight in the loss)) and
        figures (name -> value) of the last training forward pass, handed over once (empty after
        that, and after an evaluation pass, which leaves none)."""
        auxiliary, self._auxiliary = self._auxiliary, None
        return auxiliary or ({}, {})
