"""The routing trace: the contract between model, analysis and app (DESIGN.md §3).

A forward pass with `trace=True` returns, beside the logits, a `RoutingTrace` built from that
same pass: one `RoutingRecord` per layer (what the evaluator scored, which tier and experts
were chosen, with what gates and router probabilities, and the FLOPs spent) and one
`AttentionMaps` per layer (attention inside every group and head, and the group-summary
attention). All tensors are on the CPU in float32, laid out [B, L, ...]; padding positions
hold NaN / -1 and never appear in `to_frame()`.

Shape legend: B batch, L tokens, S sub-tokens (MH-MoE, else 1), K slots, E experts of the
layer, G groups, H heads, M tokens per group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

TIER_NAMES = {-1: "none", 0: "shallow", 1: "deep"}


@dataclass(frozen=True)
class RoutingRecord:
    """What one layer's feed-forward part decided for every token."""

    layer: int
    moe: bool  # False for a dense layer (routers "dense", or between MoE layers)
    token_mask: Tensor  # [B, L] bool, padding False
    importance: Tensor  # [B, L] normalised attention received, NaN where not computed
    complexity: Tensor  # [B, L] evaluator complexity C, NaN without an evaluator
    score: Tensor  # [B, L] routing score, NaN without an evaluator
    p_deep: Tensor  # [B, L] policy probability of the deep tier, NaN without a policy
    in_band: Tensor  # [B, L] bool, theta_s <= score <= theta_d (the policy decided)
    tier: Tensor  # [B, L] int8: 0 shallow, 1 deep, -1 no tiers
    expert_idx: Tensor  # [B, L, S, K] int64, -1 unused
    gate_weights: Tensor  # [B, L, S, K], 0 in unused slots
    router_probs: Tensor  # [B, L, S, E]
    flops: Tensor  # [B, L] FLOPs the dispatcher executed for the token in this layer
    theta_s: float
    theta_d: float


@dataclass(frozen=True)
class AttentionMaps:
    """Attention probabilities of one layer, for the grouped attention plots."""

    layer: int
    local: Tensor  # [B, G, H, M, M] inside each group (query rows, key columns)
    summary: Tensor | None  # [B, H, G, G] group summaries attending to each other
    group_len: int  # M
    n_groups: int  # G actually used for this input
    window: int | None  # None: the whole group is visible


@dataclass(frozen=True)
class RoutingTrace:
    router: str
    records: tuple[RoutingRecord, ...]
    attention: tuple[AttentionMaps, ...]
    input_ids: Tensor  # [B, L]
    token_type_ids: Tensor  # [B, L]
    special: Tensor  # [B, L] bool, [CLS]/[SEP]
    expert_labels: tuple[str, ...]  # name of each expert index of an MoE layer ("S0", "D1", ...)
    flops_reference: dict[str, float]  # FLOPs per token per MoE layer of reference choices

    @property
    def token_mask(self) -> Tensor:
        return self.records[0].token_mask

    def to_frame(self, tokens: Sequence[Sequence[str]] | None = None,
                 offsets: Sequence[Sequence[tuple[int, int]]] | None = None) -> pd.DataFrame:
        """One row per (example, layer, real token) with the columns of DESIGN.md §3.

        `tokens` / `offsets` (per example, per position, as from the tokenizer) add the token
        text and its character span; without them the token id is shown.
        Margins measure fragility: `tier_margin` is the distance of the score to the nearest
        threshold, `expert_margin` the router-probability gap between the last expert picked
        and the first one left out (smallest over sub-tokens).
        """
        mask = self.token_mask
        example, position = mask.nonzero(as_tuple=True)
        n_tok = len(example)
        frames = []
        for rec in self.records:
            picked_idx = rec.expert_idx[example, position]  # [n, S, K]
            picked_gate = rec.gate_weights[example, position]
            probs = rec.router_probs[example, position]  # [n, S, E]
            score = rec.score[example, position].numpy()
            frame = {
                "example": example.numpy(), "layer": np.full(n_tok, rec.layer),
                "position": position.numpy(),
                "group": position.numpy() // max(self._group_len(rec.layer), 1),
                "segment": self.token_type_ids[example, position].numpy() + 1,
                "special": self.special[example, position].numpy(),
                "importance": rec.importance[example, position].numpy(),
                "complexity": rec.complexity[example, position].numpy(),
                "score": score, "p_deep": rec.p_deep[example, position].numpy(),
                "in_band": rec.in_band[example, position].numpy(),
                "tier": [TIER_NAMES[int(t)] for t in rec.tier[example, position]],
                "theta_s": np.full(n_tok, rec.theta_s), "theta_d": np.full(n_tok, rec.theta_d),
                "tier_margin": np.minimum(np.abs(score - rec.theta_s),
                                          np.abs(score - rec.theta_d)),
                "experts": [[int(e) for e in row[row >= 0]] for row in picked_idx.flatten(1)],
                "gate_weights": [[round(float(g), 6) for g, e in zip(gr, er, strict=True)
                                  if e >= 0] for gr, er in zip(picked_gate.flatten(1),
                                                               picked_idx.flatten(1),
                                                               strict=True)],
                "n_experts": (picked_idx >= 0).sum(dim=(1, 2)).numpy(),
                "router_probs": [[round(float(p), 6) for p in row] for row in probs[:, 0]],
                "top_prob": probs.max(dim=-1).values[:, 0].numpy(),
                "expert_margin": _expert_margin(probs, picked_idx),
                "flops": rec.flops[example, position].numpy(),
                "moe": np.full(n_tok, rec.moe),
            }
            frames.append(pd.DataFrame(frame))
        df = pd.concat(frames, ignore_index=True)
        df.insert(3, "token_id", self.input_ids[df["example"], df["position"]].numpy())
        if tokens is not None:
            df.insert(4, "token", [tokens[e][p] for e, p in zip(df["example"], df["position"],
                                                                  strict=True)])
        if offsets is not None:
            spans = [offsets[e][p] for e, p in zip(df["example"], df["position"], strict=True)]
            df.insert(5, "start", [s for s, _ in spans])
            df.insert(6, "end", [e for _, e in spans])
        return df

    def _group_len(self, layer: int) -> int:
        return self.attention[layer].group_len if self.attention else 0

    def attention_map(self, layer: int, example: int = 0, group: int = 0,
                      head: int | None = None) -> np.ndarray:
        """[M, M] attention inside one group (mean over heads when `head` is None).

        Rows and columns beyond the example's real tokens are cut off."""
        maps = self.attention[layer]
        local = maps.local[example, group]  # [H, M, M]
        probs = local.mean(0) if head is None else local[head]
        start = group * maps.group_len
        n_real = int(self.token_mask[example, start:start + maps.group_len].sum())
        return probs[:n_real, :n_real].numpy()

    def summary_attention(self, layer: int, example: int = 0,
                          head: int | None = None) -> np.ndarray | None:
        """[G, G] attention between the group summaries, or None without aggregation."""
        summary = self.attention[layer].summary
        if summary is None:
            return None
        probs = summary[example].mean(0) if head is None else summary[example, head]
        n_real = math.ceil(int(self.token_mask[example].sum()) / self.attention[layer].group_len)
        return probs[:n_real, :n_real].numpy()


def _expert_margin(probs: Tensor, picked: Tensor) -> np.ndarray:
    """probs: [n, S, E]; picked: [n, S, K]. Gap between the weakest pick and the strongest
    expert left out, smallest over sub-tokens; NaN when every expert was picked."""
    n_picked = (picked >= 0).sum(-1)  # [n, S]
    sorted_probs = probs.sort(dim=-1, descending=True).values  # [n, S, E]
    E = probs.shape[-1]
    last = sorted_probs.gather(-1, (n_picked - 1).clamp(0, E - 1).unsqueeze(-1)).squeeze(-1)
    nxt = sorted_probs.gather(-1, n_picked.clamp(0, E - 1).unsqueeze(-1)).squeeze(-1)
    gap = torch.where(n_picked < E, last - nxt, torch.full_like(last, float("nan")))
    return gap.min(dim=-1).values.numpy()
