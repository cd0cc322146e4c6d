"""MoE layers: router + dispatch + experts, one class per routing family (DESIGN.md §2.3, §2.5).

Every layer takes the real tokens of the batch flattened to [T, D] (padding is never routed)
and returns a `MoEOutput` with the combined output and everything the routing decided, from
which `model.py` builds the trace. Expert indices are global within a layer: shallow experts
are 0..Es-1 and deep experts Es..Es+Ed-1.

Shape legend: T tokens, D model dim, S sub-tokens per token (MH-MoE, else 1), K slots,
E experts of the layer (both tiers for DASG).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .config import DasgConfig
from .dispatch import dispatch
from .experts import DeepExperts, ShallowExperts
from .losses import compute_penalty, load_balancing_loss
from .routers import (
    Evaluator,
    LocalRouting,
    TierDecision,
    TierPolicy,
    TopKRouter,
    choose_tier,
    dynamic_k,
    top_k_gates,
)


@dataclass(frozen=True)
class MoEInput:
    """One layer's routing inputs. importance/entropy are NaN when not computed."""

    x: Tensor  # [T, D]
    importance: Tensor  # [T] in [0, 1]
    entropy: Tensor  # [T]
    theta_s: float
    theta_d: float
    sample_tiers: bool = False  # REINFORCE: draw in-band tier decisions from the policy
    force_tier: str | None = None  # "shallow" / "deep": every token to that tier


@dataclass(frozen=True)
class MoEOutput:
    out: Tensor  # [T, D]
    expert_idx: Tensor  # [T, S, K] int64, -1 unused
    gate: Tensor  # [T, S, K]
    router_probs: Tensor  # [T, S, E]
    flops: Tensor  # [T] FLOPs the dispatcher executed for each token
    tokens_per_expert: Tensor  # [E]
    tier: Tensor  # [T] int8: 0 shallow, 1 deep, -1 no tiers
    complexity: Tensor  # [T], NaN without an evaluator
    score: Tensor  # [T], NaN without an evaluator
    p_deep: Tensor  # [T] policy probability of deep, NaN without a policy
    in_band: Tensor  # [T] bool
    policy_log_prob: Tensor  # [T] log-prob of the in-band decisions taken, 0 elsewhere
    aux: dict[str, Tensor] = field(default_factory=dict)  # training losses; empty without grad


def _untiered(inp: MoEInput, out: Tensor, local: LocalRouting, flops: Tensor,
              tokens_per_expert: Tensor, aux: dict[str, Tensor], S: int = 1) -> MoEOutput:
    """Package the output of a one-tier router."""
    T = inp.x.shape[0]
    nan = torch.full((T,), float("nan"), device=inp.x.device)
    return MoEOutput(out, local.expert_idx.view(T, S, -1), local.gate.view(T, S, -1),
                     local.probs.view(T, S, -1), flops, tokens_per_expert,
                     torch.full((T,), -1, dtype=torch.int8, device=inp.x.device), nan, nan, nan,
                     torch.zeros(T, dtype=torch.bool, device=inp.x.device),
                     torch.zeros(T, device=inp.x.device), aux)


class DenseFFN(nn.Module):
    """The reference: one plain FFN, recorded as a single expert with gate 1."""

    def __init__(self, cfg: DasgConfig) -> None:
        super().__init__()
        self.experts = ShallowExperts(1, cfg.d_model, cfg.d_ff_dense or cfg.d_ff)

    def forward(self, inp: MoEInput) -> MoEOutput:
        T = inp.x.shape[0]
        ones = torch.ones(T, 1, device=inp.x.device)
        local = LocalRouting(torch.zeros(T, 1, dtype=torch.long, device=inp.x.device), ones,
                             ones, ones)
        out = self.experts.expert_forward(0, inp.x)
        flops = torch.full((T,), float(self.experts.flops_per_token()), device=inp.x.device)
        count = torch.tensor([T], device=inp.x.device)
        return _untiered(inp, out, local, flops, count, {})


def shared_expert(cfg: DasgConfig) -> ShallowExperts | None:
    """The always-on expert of `cfg.shared_expert` (DeepSeekMoE), width d_ff_shared."""
    return ShallowExperts(1, cfg.d_model, cfg.d_ff_shared or cfg.d_ff) \
        if cfg.shared_expert else None


def add_shared(shared: ShallowExperts | None, x: Tensor, out: Tensor,
               flops: Tensor) -> tuple[Tensor, Tensor]:
    """Add the shared expert's output (every token, gate 1) and its FLOPs, if there is one."""
    if shared is None:
        return out, flops
    return out + shared.expert_forward(0, x), flops + shared.flops_per_token()


def _balance(local: LocalRouting) -> dict[str, Tensor]:
    """The load-balancing loss of a one-tier router, computed only when gradients are on
    (a training loss: inference skips it)."""
    if not torch.is_grad_enabled():
        return {}
    return {"balance": load_balancing_loss(local.probs, local.expert_idx)}


def _run(experts: ShallowExperts, x: Tensor, local: LocalRouting):
    flops = torch.full((experts.n_experts,), float(experts.flops_per_token()), device=x.device)
    return dispatch(x, local.expert_idx, local.gate, experts.expert_forward, flops)


class TopKMoE(nn.Module):
    """Switch (k=1) and GShard/Mixtral-style top-k (k=2) routing over one tier."""

    def __init__(self, cfg: DasgConfig, k: int) -> None:
        super().__init__()
        self.k = k
        self.router = TopKRouter(cfg.d_model, cfg.n_shallow)
        self.experts = ShallowExperts(cfg.n_shallow, cfg.d_model, cfg.d_ff)
        self.shared = shared_expert(cfg)

    def route(self, inp: MoEInput) -> LocalRouting:
        return self.router(inp.x, self.k)

    def forward(self, inp: MoEInput) -> MoEOutput:
        local = self.route(inp)
        result = _run(self.experts, inp.x, local)
        out, flops = add_shared(self.shared, inp.x, result.out, result.flops)
        return _untiered(inp, out, local, flops, result.tokens_per_expert, _balance(local))


class DAMoE(TopKMoE):
    """DA-MoE: each token gets K = clamp(ceil(k_max * importance), 1, k_max) experts."""

    def __init__(self, cfg: DasgConfig) -> None:
        super().__init__(cfg, cfg.k_max)

    def route(self, inp: MoEInput) -> LocalRouting:
        return self.router(inp.x, dynamic_k(inp.importance, self.k))


class MHMoE(nn.Module):
    """MH-MoE: each token is split into h sub-tokens, each routed top-k, then merged back."""

    def __init__(self, cfg: DasgConfig) -> None:
        super().__init__()
        self.h, self.k = cfg.mh_heads, cfg.top_k
        D = cfg.d_model
        self.split = nn.Linear(D, D)  # the multi-head layer before splitting
        self.merge = nn.Linear(D, D)  # the merge layer after combining
        self.router = TopKRouter(D // self.h, cfg.n_shallow)
        self.experts = ShallowExperts(cfg.n_shallow, D // self.h, cfg.d_ff)

    def forward(self, inp: MoEInput) -> MoEOutput:
        T, D = inp.x.shape
        sub = self.split(inp.x).reshape(T * self.h, D // self.h)  # [T*S, D/S]
        local = self.router(sub, self.k)
        result = _run(self.experts, sub, local)
        out = self.merge(result.out.reshape(T, D))  # [T, D]
        flops = result.flops.view(T, self.h).sum(-1)  # [T]
        return _untiered(inp, out, local, flops, result.tokens_per_expert, _balance(local),
                         S=self.h)


class DASGMoE(nn.Module):
    """ADR + DSSE: evaluator -> global tier choice -> top-k inside the tier.

    With `random_routing` (the paper's ablation) the tier is a fair coin and the experts are
    drawn at random; the evaluator still runs so its scores can be compared in the trace.
    """

    def __init__(self, cfg: DasgConfig, layer: int, random_routing: bool = False) -> None:
        super().__init__()
        D = cfg.d_model
        self.k, self.layer, self.random_routing = cfg.top_k, layer, random_routing
        self.evaluator = Evaluator(D, cfg.task_urgency)
        self.policy = TierPolicy()
        self.shallow_router = TopKRouter(D, cfg.n_shallow)
        self.deep_router = TopKRouter(D, cfg.n_deep)
        self.shallow = ShallowExperts(cfg.n_shallow, D, cfg.d_ff)
        self.deep = DeepExperts(cfg.n_deep, D, cfg.d_ff, cfg.d_ff_deep)
        self.deep.transfer_from(self.shallow, cfg.deep_init_from or
                                tuple(e % cfg.n_shallow for e in range(cfg.n_deep)))
        self.shared = shared_expert(cfg)

    def expert_forward(self, e: int, x: Tensor) -> Tensor:
        n_shallow = self.shallow.n_experts
        if e < n_shallow:
            return self.shallow.expert_forward(e, x)
        return self.deep.expert_forward(e - n_shallow, x)

    def forward(self, inp: MoEInput) -> MoEOutput:
        x = inp.x
        Es, Ed = self.shallow.n_experts, self.deep.n_experts
        complexity, score = self.evaluator(x, inp.importance, inp.entropy)
        policy_logit = self.policy(score, inp.importance, complexity, inp.entropy)
        decision = choose_tier(score, policy_logit, inp.theta_s, inp.theta_d, inp.sample_tiers,
                               inp.force_tier)
        shallow_local = self.shallow_router(x, self.k)
        deep_local = self.deep_router(x, self.k)
        if self.random_routing and inp.force_tier is None:
            decision, shallow_local, deep_local = self._random(x, Es, Ed)
        deep = decision.deep

        # Global expert numbering: deep experts follow the shallow ones.
        expert_idx = torch.where(deep.unsqueeze(-1), deep_local.expert_idx + Es,
                                 shallow_local.expert_idx)  # [T, K]
        gate = torch.where(deep.unsqueeze(-1), deep_local.gate, shallow_local.gate)
        probs = torch.cat([shallow_local.probs * ~deep.unsqueeze(-1),
                           deep_local.probs * deep.unsqueeze(-1)], dim=-1)  # [T, Es+Ed]
        flops_per_expert = torch.tensor([float(self.shallow.flops_per_token())] * Es
                                        + [float(self.deep.flops_per_token())] * Ed,
                                        device=x.device)
        result = dispatch(x, expert_idx, gate, self.expert_forward, flops_per_expert)
        out, flops = result.out, result.flops

        # Straight-through tier gate (paper silent on how the evaluator learns from the task
        # loss): the value is multiplied by exactly 1, but the gradient tells the score
        # whether a stronger output of the chosen tier would have helped.
        # Without gradients it is the identity, and skipped.
        if torch.is_grad_enabled():
            tier_gate = torch.where(deep, score, 1.0 - score).unsqueeze(-1)  # [T, 1]
            out = out * (1.0 + tier_gate - tier_gate.detach()).to(out.dtype)
        out, flops = add_shared(self.shared, x, out, flops)

        aux = {}
        if torch.is_grad_enabled():  # training losses: nothing to compute for inference
            aux = {"balance": load_balancing_loss(shallow_local.probs[~deep],
                                                  shallow_local.expert_idx[~deep])
                   + load_balancing_loss(deep_local.probs[deep], deep_local.expert_idx[deep]),
                   "compute": compute_penalty(score)}
        return MoEOutput(out, expert_idx.unsqueeze(1), gate.unsqueeze(1), probs.unsqueeze(1),
                         flops, result.tokens_per_expert, deep.to(torch.int8), complexity,
                         score, decision.p_deep, decision.in_band, decision.log_prob, aux)

    def _random(self, x: Tensor, Es: int,
                Ed: int) -> tuple[TierDecision, LocalRouting, LocalRouting]:
        """Random tier and experts. In eval mode a fixed seed per layer keeps traces
        reproducible; in training the global generator is used."""
        T = x.shape[0]
        generator = None
        if not self.training:
            generator = torch.Generator(device=x.device).manual_seed(1000 + self.layer)
        deep = torch.rand(T, generator=generator, device=x.device) < 0.5
        shallow_logits = torch.randn(T, Es, generator=generator, device=x.device)
        deep_logits = torch.randn(T, Ed, generator=generator, device=x.device)
        no_band = torch.zeros(T, dtype=torch.bool, device=x.device)
        decision = TierDecision(deep, no_band, torch.full((T,), 0.5, device=x.device),
                                torch.zeros(T, device=x.device))
        return decision, top_k_gates(shallow_logits, self.k), top_k_gates(deep_logits, self.k)


def build_ffn(cfg: DasgConfig, layer: int) -> nn.Module:
    """The feed-forward part of block `layer`, chosen by `cfg.router` and `cfg.moe_every`."""
    if not cfg.is_moe_layer(layer):
        return DenseFFN(cfg)
    if cfg.router == "switch":
        return TopKMoE(cfg, k=1)
    if cfg.router == "topk":
        return TopKMoE(cfg, k=cfg.top_k)
    if cfg.router == "da_moe":
        return DAMoE(cfg)
    if cfg.router == "mh_moe":
        return MHMoE(cfg)
    return DASGMoE(cfg, layer, random_routing=cfg.router == "random")
