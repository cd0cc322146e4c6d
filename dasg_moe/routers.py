"""Routers: the local top-k routers, DA-MoE's dynamic K, and ADR's evaluator and tier choice
(DESIGN.md §2.3, §2.5; DASG-MoE paper §4.4; DA-MoE).

Routers are stateless apart from their parameters: everything a call decides is returned,
nothing is stashed on the module, and thresholds arrive per call (`RoutingOverrides`), so one
model can serve many app sessions at once.

Shape legend: T tokens, D model dim, E experts, K slots per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DasgConfig


@dataclass(frozen=True)
class RoutingOverrides:
    """Per-call routing settings; None keeps the checkpoint's value."""

    theta_s: float | None = None
    theta_d: float | None = None
    force_tier: Literal["shallow", "deep"] | None = None  # every token to one tier (pretraining,
    # benchmarks, "what if" comparisons); None lets the thresholds and the policy decide

    def thresholds(self, cfg: DasgConfig) -> tuple[float, float]:
        theta_s = cfg.theta_s if self.theta_s is None else float(self.theta_s)
        theta_d = cfg.theta_d if self.theta_d is None else float(self.theta_d)
        if self.force_tier not in (None, "shallow", "deep"):
            raise ValueError(f"force_tier must be 'shallow', 'deep' or None, got "
                             f"{self.force_tier!r}")
        if not (math.isfinite(theta_s) and math.isfinite(theta_d)
                and 0.0 <= theta_s <= theta_d <= 1.0):
            raise ValueError(f"thresholds must satisfy 0 <= theta_s <= theta_d <= 1, got "
                             f"theta_s={theta_s}, theta_d={theta_d}")
        return theta_s, theta_d


@dataclass(frozen=True)
class LocalRouting:
    """Experts picked for each token inside one tier."""

    expert_idx: Tensor  # [T, K] int64, -1 marks an unused slot
    gate: Tensor  # [T, K] gate weights, 0 in unused slots
    probs: Tensor  # [T, E] router softmax
    logits: Tensor  # [T, E]


def top_k_gates(logits: Tensor, k: Tensor | int) -> LocalRouting:
    """Top-k of the softmax. `k` is an int or a per-token [T] tensor (DA-MoE).

    A token with one expert keeps its raw probability as gate (Switch: the router learns
    through the gate value); a token with several gets them renormalised to sum to 1
    (GShard / Mixtral).
    """
    probs = logits.float().softmax(dim=-1)  # [T, E]
    if isinstance(k, int):  # every token k experts: no per-token masks
        top_p, top_idx = probs.topk(k, dim=-1)  # [T, k]
        gate = top_p / top_p.sum(-1, keepdim=True).clamp_min(1e-9) if k > 1 else top_p
        return LocalRouting(top_idx, gate, probs, logits)
    k_max = int(k.max().item()) if k.numel() else 1
    top_p, top_idx = probs.topk(k_max, dim=-1)  # [T, K]
    keep = torch.arange(k_max, device=logits.device) < k.unsqueeze(-1)  # [T, K]
    top_p = top_p * keep
    several = (k > 1).unsqueeze(-1)
    gate = torch.where(several, top_p / top_p.sum(-1, keepdim=True).clamp_min(1e-9), top_p)
    return LocalRouting(top_idx.masked_fill(~keep, -1), gate, probs, logits)


class TopKRouter(nn.Module):
    """Linear scores over E experts, softmax, top-k (Switch k=1, GShard/Mixtral k=2)."""

    def __init__(self, d_model: int, n_experts: int) -> None:
        super().__init__()
        self.gate = nn.Linear(d_model, n_experts, bias=False)
        nn.init.normal_(self.gate.weight, std=0.02)

    def forward(self, x: Tensor, k: Tensor | int) -> LocalRouting:
        return top_k_gates(self.gate(x), k)


def dynamic_k(importance: Tensor, k_max: int) -> Tensor:
    """DA-MoE: experts per token from its attention importance, K = clamp(ceil(k_max * I), 1,
    k_max). importance: [T] in [0, 1] -> [T] int64."""
    return torch.ceil(importance * k_max).clamp(1, k_max).long()


class Evaluator(nn.Module):
    """ADR's lightweight evaluator: complexity C, and the routing score from I, C and urgency.

    - importance I (computed from attention in `model.py`) is an input here;
    - complexity C = sigmoid(MLP([x, entropy])) in (0, 1), learned;
    - score = clamp(lam * I + (1 - lam) * C + u, 0, 1) with a learned mix lam (starts at 0.5)
      and a learned task-urgency shift u (one value per task; our checkpoints hold one task).
    Paper silent on how I and C combine; a convex mix keeps the score on the thresholds'
    [0, 1] scale, so theta_s = 0.3 and theta_d = 0.7 mean the same thing in every layer.
    """

    def __init__(self, d_model: int, task_urgency: bool, hidden: int = 32) -> None:
        super().__init__()
        self.complexity_net = nn.Sequential(nn.Linear(d_model + 1, hidden), nn.GELU(),
                                            nn.Linear(hidden, 1))
        self.mix_logit = nn.Parameter(torch.zeros(()))
        self.urgency = nn.Parameter(torch.zeros(()), requires_grad=task_urgency)

    def forward(self, x: Tensor, importance: Tensor, entropy: Tensor) -> tuple[Tensor, Tensor]:
        """x: [T, D]; importance, entropy: [T]. Returns complexity [T] and score [T]."""
        features = torch.cat([x, entropy.unsqueeze(-1).to(x.dtype)], dim=-1)  # [T, D+1]
        complexity = torch.sigmoid(self.complexity_net(features).squeeze(-1).float())
        lam = torch.sigmoid(self.mix_logit)
        score = (lam * importance + (1 - lam) * complexity + self.urgency).clamp(0.0, 1.0)
        return complexity, score


class TierPolicy(nn.Module):
    """Global router's learned policy for scores between theta_s and theta_d.

    P(deep) = sigmoid(w . [score, importance, complexity, entropy] + b), trained by REINFORCE
    (`train.py`). It starts as sigmoid(10 * (score - 0.5)): the band is split at its middle.
    """

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[10.0, 0.0, 0.0, 0.0]]))
            self.linear.bias.fill_(-5.0)

    def forward(self, score: Tensor, importance: Tensor, complexity: Tensor,
                entropy: Tensor) -> Tensor:
        """All [T]; returns the logit of P(deep) [T]."""
        features = torch.stack([score, importance, complexity, entropy.float()], dim=-1)
        return self.linear(features).squeeze(-1)


@dataclass(frozen=True)
class TierDecision:
    deep: Tensor  # [T] bool, True for the deep tier
    in_band: Tensor  # [T] bool, theta_s <= score <= theta_d: the policy decided
    p_deep: Tensor  # [T] policy probability of deep (used only in the band)
    log_prob: Tensor  # [T] log-probability of the taken in-band decision, 0 outside the band


def choose_tier(score: Tensor, policy_logit: Tensor, theta_s: float, theta_d: float,
                sample: bool, force_tier: str | None = None) -> TierDecision:
    """Global router: below theta_s shallow, above theta_d deep, in between the policy.

    `sample=True` draws in-band decisions from the policy (REINFORCE); otherwise the more
    likely tier is taken, so inference is deterministic.
    """
    p_deep = torch.sigmoid(policy_logit.float())
    in_band = (score >= theta_s) & (score <= theta_d)
    policy_deep = torch.bernoulli(p_deep).bool() if sample else p_deep >= 0.5
    deep = (score > theta_d) | (in_band & policy_deep)
    if force_tier is not None:
        deep = torch.full_like(in_band, force_tier == "deep")
        in_band = torch.zeros_like(in_band)
    log_prob = torch.where(policy_deep, F.logsigmoid(policy_logit.float()),
                           F.logsigmoid(-policy_logit.float()))
    return TierDecision(deep, in_band, p_deep, torch.where(in_band, log_prob, 0.0))
