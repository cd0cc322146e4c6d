"""The routing trace: the contract between model, analysis and app (DESIGN.md §3).

A forward pass with `trace=True` returns, beside the logits, a `RoutingTrace` built from that
same pass: one `RoutingRecord` per layer (what the evaluator scored, which tier and experts
were chosen, with what gates and router probabilities, and the FLOPs spent) and one
`AttentionMaps` per layer (attention inside every group and head, and the group-summary
attention). All tensors are on the CPU in float32, laid out [B, L, ...]; padding positions
hold NaN / -1 and never appear in `to_frame()`.

Shape legend: B batch, L tokens, S sub-tokens (MH-MoE, else 1), K slots, E experts of the
layer, G groups, H heads, M tokens per group, Y layers, N rows of `to_frame` (Y times the
real tokens).
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
_TIER_TEXT = np.array([TIER_NAMES[t] for t in (-1, 0, 1)], dtype=object)  # tier + 1


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

        Rows are layer-major: every real token of layer 0 (in example, position order), then
        of layer 1, and so on. `tokens` / `offsets` (per example, per position, as from the
        tokenizer) add the token text and its character span; without them the token id is
        shown. Margins measure fragility: `tier_margin` is the distance of the score to the
        nearest threshold, `expert_margin` the router-probability gap between the last
        expert picked and the first one left out (smallest over sub-tokens).

        Every column is computed for all layers and tokens at once; only the list cells
        (experts, gates, router probabilities) are cut into Python lists at the end.
        """
        example, position = self.token_mask.nonzero(as_tuple=True)  # [n] each
        recs = self.records
        Y, n = len(recs), len(example)

        def at_tokens(tensors: list[Tensor]) -> Tensor:
            """Per-layer [B, L, ...] tensors at the real tokens, layer-major: [Y * n, ...]."""
            picked = torch.stack(tensors)[:, example, position]  # [Y, n, ...]
            return picked.reshape(Y * n, *picked.shape[2:])

        def field(name: str) -> np.ndarray:
            return at_tokens([getattr(rec, name) for rec in recs]).numpy()

        def per_layer(values: list) -> np.ndarray:
            return np.repeat(np.asarray(values), n)  # [Y * n]

        def per_token(values: np.ndarray) -> np.ndarray:
            return np.tile(values, Y)  # [Y * n]

        # Layers differ in S, K and E (a dense layer has one slot and one "expert", an
        # MH-MoE layer several sub-tokens): pad each to the largest with unused slots
        # (expert -1, gate 0) and probability -inf, and keep every row's own S and E.
        S = max(rec.expert_idx.shape[2] for rec in recs)
        K = max(rec.expert_idx.shape[3] for rec in recs)
        E = max(rec.router_probs.shape[3] for rec in recs)
        idx = at_tokens([_pad(rec.expert_idx, S, K, -1) for rec in recs])  # [N, S, K]
        gates = at_tokens([_pad(rec.gate_weights, S, K, 0.0) for rec in recs])  # [N, S, K]
        probs = at_tokens([_pad(rec.router_probs, S, E, -math.inf) for rec in recs])  # [N,S,E]
        n_sub = per_layer([rec.expert_idx.shape[2] for rec in recs])  # [N]
        n_exp = per_layer([rec.router_probs.shape[3] for rec in recs])  # [N]
        kept = (idx.flatten(1) >= 0).numpy()  # [N, S*K], sub-token-major as the lists are
        n_kept = kept.sum(-1)  # [N]
        first = probs[:, 0]  # [N, E] router probabilities of the first (or only) sub-token
        own_expert = np.arange(E) < n_exp[:, None]  # [N, E] False in the padding

        score = field("score")
        theta_s = per_layer([rec.theta_s for rec in recs])
        theta_d = per_layer([rec.theta_d for rec in recs])
        # In float32, as NumPy computes a float32 array minus one Python float.
        tier_margin = np.minimum(np.abs(score - theta_s.astype(score.dtype)),
                                 np.abs(score - theta_d.astype(score.dtype)))
        example_np, position_np = per_token(example.numpy()), per_token(position.numpy())
        group_len = per_layer([max(self._group_len(rec.layer), 1) for rec in recs])
        frame = {
            "example": example_np, "layer": per_layer([rec.layer for rec in recs]),
            "position": position_np, "group": position_np // group_len,
            "segment": per_token(self.token_type_ids[example, position].numpy() + 1),
            "special": per_token(self.special[example, position].numpy()),
            "importance": field("importance"), "complexity": field("complexity"),
            "score": score, "p_deep": field("p_deep"), "in_band": field("in_band"),
            "tier": _TIER_TEXT[field("tier").astype(np.int64) + 1].tolist(),
            "theta_s": theta_s, "theta_d": theta_d, "tier_margin": tier_margin,
            "experts": _ragged(idx.flatten(1).numpy()[kept], n_kept),
            "gate_weights": _ragged(_round6(gates.flatten(1).numpy()[kept]), n_kept),
            "n_experts": n_kept.astype(np.int64),
            "router_probs": _ragged(_round6(first.numpy()[own_expert]), n_exp),
            "top_prob": first.max(dim=-1).values.numpy(),
            "expert_margin": _expert_margin(probs, idx, n_sub, n_exp),
            "flops": field("flops"), "moe": per_layer([rec.moe for rec in recs]),
        }
        df = pd.DataFrame(frame)
        df.insert(3, "token_id", per_token(self.input_ids[example, position].numpy()))
        pairs = list(zip(example.tolist(), position.tolist(), strict=True))  # n real tokens
        if tokens is not None:
            df.insert(4, "token", [tokens[e][p] for e, p in pairs] * Y)
        if offsets is not None:
            spans = [offsets[e][p] for e, p in pairs]
            df.insert(5, "start", [s for s, _ in spans] * Y)
            df.insert(6, "end", [e for _, e in spans] * Y)
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


def _pad(t: Tensor, size: int, slots: int, fill: float) -> Tensor:
    """[B, L, s, k] -> [B, L, size, slots], the new places filled with `fill`."""
    if t.shape[2:] == (size, slots):
        return t
    out = t.new_full((*t.shape[:2], size, slots), fill)
    out[:, :, :t.shape[2], :t.shape[3]] = t
    return out


def _round6(values: np.ndarray) -> np.ndarray:
    """Round to 6 decimals exactly as Python's round(x, 6) does, for float32 values: their
    product with 1e6 is exact in float64 (at most 24 + 14 significant bits), and both then
    round half to even and return the float nearest to the decimal result."""
    return np.round(values.astype(np.float64), 6)


def _ragged(values: np.ndarray, counts: np.ndarray) -> list[list]:
    """Cut the flat `values` into one Python list per row, `counts[i]` items in row i."""
    if not len(counts):
        return []
    if (counts == counts[0]).all():  # e.g. top-k: one reshape, no cutting
        return values.reshape(len(counts), int(counts[0])).tolist()
    flat, ends = values.tolist(), np.cumsum(counts).tolist()
    return [flat[start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)]


def _expert_margin(probs: Tensor, picked: Tensor, n_sub: np.ndarray,
                   n_exp: np.ndarray) -> np.ndarray:
    """probs: [N, S, E] (padding -inf); picked: [N, S, K] (-1 unused); n_sub, n_exp: [N] the
    row's own S and E. Gap between the weakest pick and the strongest expert left out,
    smallest over the row's sub-tokens; NaN when every expert was picked."""
    n_sub_t, n_exp_t = torch.from_numpy(n_sub)[:, None], torch.from_numpy(n_exp)[:, None]
    n_picked = (picked >= 0).sum(-1)  # [N, S]
    ranked = probs.sort(dim=-1, descending=True).values  # [N, S, E], padding last
    top = n_exp_t - 1  # [N, 1] the last real rank
    last = ranked.gather(-1, torch.minimum((n_picked - 1).clamp(min=0), top)[..., None])[..., 0]
    nxt = ranked.gather(-1, torch.minimum(n_picked, top)[..., None])[..., 0]  # [N, S]
    gap = torch.where(n_picked < n_exp_t, last - nxt, torch.full_like(last, math.nan))
    gap = gap.masked_fill(torch.arange(gap.shape[1]) >= n_sub_t, math.inf)  # padded sub-tokens
    return gap.min(dim=-1).values.numpy()
