"""Views of one routing trace for the pages and figures (DESIGN.md §3): plain functions.

They only reshape what `dasg_moe.inspect.inspect_text` returned from its single forward
pass (`Inspection.frame`, one row per (layer, token), and `Inspection.trace`); nothing is
recomputed, so every number shown is the number the model used.

Shape legend: L tokens, S sub-tokens (MH-MoE, else 1), K slots, E experts of a layer.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from analysis.fragility import DEFAULT_EPSILON, margins
from dasg_moe.inspect import Inspection, to_json
from dasg_moe.trace import RoutingTrace

TIERED_ROUTERS = ("dasg", "random")
NEAR_TIE_EPS = DEFAULT_EPSILON  # margin below which a decision is a near tie


def has_tiers(trace: RoutingTrace) -> bool:
    """True for routers with a shallow and a deep tier (thresholds matter)."""
    return trace.router in TIERED_ROUTERS


def n_layers(frame: pd.DataFrame) -> int:
    return int(frame["layer"].max()) + 1


def moe_layers(frame: pd.DataFrame) -> list[int]:
    """Layers whose FFN is routed (the others are dense, e.g. with moe_every=2)."""
    return sorted(int(i) for i in frame.loc[frame["moe"], "layer"].unique())


def si(value: float) -> str:
    """A count in SI units: 11.1M, 49.2k."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def layer_rows(frame: pd.DataFrame, layer: int) -> pd.DataFrame:
    """The rows of one layer, in token order."""
    return frame[frame["layer"] == layer].sort_values("position").reset_index(drop=True)


def token_choices(frame: pd.DataFrame) -> list[str]:
    """"position: token" for a token picker, in order (positions keep repeats apart)."""
    first = layer_rows(frame, int(frame["layer"].min()))
    return [f"{p}: {t}" for p, t in zip(first["position"], first["token"], strict=True)]


def group_labels(tokens: list[str], group_len: int, n_groups: int) -> list[str]:
    """"g3: word word …" for each group: its index and first tokens (the grouping rule of
    `dasg_moe.attention.group_count`, as the model used it)."""
    labels = []
    for g in range(n_groups):
        words = tokens[g * group_len:(g + 1) * group_len]
        if not words:
            break
        head = " ".join(words[:3]) + (" …" if len(words) > 3 else "")
        labels.append(f"g{g}: {head}")
    return labels


def near_ties(frame: pd.DataFrame, eps: float = NEAR_TIE_EPS) -> pd.DataFrame:
    """Routing decisions that a small nudge would flip (the fragility list), closest first.

    The margins are `analysis.fragility.margins`: tier (|score - nearest threshold|), policy
    (|P(deep) - 0.5| of in-band decisions) and expert (weakest pick minus strongest expert
    left out). One row per (token, layer, kind) whose margin is below `eps`.
    """
    margin = margins(frame).stack().rename("margin").reset_index(level=1)  # row -> kind
    margin = margin[margin["margin"] < eps].rename(columns={margin.columns[0]: "kind"})
    columns = ["layer", "position", "token", "tier", "score", "p_deep", "experts"]
    out = frame.loc[margin.index, columns].assign(kind=margin["kind"].to_numpy(),
                                                  margin=margin["margin"].to_numpy())
    out = out[["layer", "position", "token", "kind", "margin", *columns[3:]]]
    return out.sort_values(["margin", "layer", "position"]).reset_index(drop=True)


def expert_grid(trace: RoutingTrace, layer: int, example: int = 0) -> dict[str, np.ndarray]:
    """Gate weights and router probabilities of one layer as [S, E, L] arrays.

    `gate` holds the gate weight where expert e was picked for (sub-)token s of token l and
    NaN elsewhere; `probs` the router probability of every expert (0 for the tier a DASG
    token did not go to); `k` the number of experts each token got [L] (DA-MoE varies it).
    """
    rec = trace.records[layer]
    n_tok = int(rec.token_mask[example].sum())
    idx = rec.expert_idx[example, :n_tok].numpy()  # [L, S, K]
    gates = rec.gate_weights[example, :n_tok].numpy()  # [L, S, K]
    probs = rec.router_probs[example, :n_tok].numpy()  # [L, S, E]
    L, S, _ = idx.shape
    E = probs.shape[-1]
    grid = np.full((S, E, L), np.nan)
    for l_, s, k in zip(*np.nonzero(idx >= 0), strict=True):
        grid[s, idx[l_, s, k], l_] = gates[l_, s, k]
    return {"gate": grid, "probs": probs.transpose(1, 2, 0), "k": (idx >= 0).sum(axis=(1, 2))}


def flops_summary(frame: pd.DataFrame, reference: dict[str, float],
                  tiers: bool) -> dict[str, float]:
    """FLOPs per token of this text against the reference choices, summed over layers.

    A reference replaces the FFN of each MoE layer by its choice (`flops_reference` is per
    token per MoE layer) and keeps the dense layers as they ran.
    """
    per_token = frame.groupby("position")["flops"].sum()
    n_tokens = len(per_token)
    moe_layers = frame.loc[frame["moe"], "layer"].nunique()
    dense_part = frame.loc[~frame["moe"], "flops"].sum() / max(n_tokens, 1)
    out = {"actual": float(per_token.mean()) if n_tokens else math.nan,
           "dense": dense_part + moe_layers * reference["dense"]}
    if tiers:
        out["all_deep"] = dense_part + moe_layers * reference["all_deep"]
        out["all_shallow"] = dense_part + moe_layers * reference["all_shallow"]
    return out


def trace_csv(frame: pd.DataFrame) -> str:
    """The trace table as CSV; list cells (experts, gates, router probabilities) as JSON."""
    flat = frame.copy()
    for column in ("experts", "gate_weights", "router_probs"):
        flat[column] = [json.dumps(v) for v in flat[column]]
    return flat.to_csv(index=False)


def trace_json(result: Inspection) -> str:
    """The prediction and the per-token trace as JSON (`python -m dasg_moe.inspect --json`)."""
    return json.dumps(to_json(result), indent=1, ensure_ascii=False)


def checkpoint_caption(name: str, config, metrics: dict) -> str:
    """One Markdown line describing a checkpoint: router, attention, size, task, and the
    dev metrics of its metrics.json where it has them at the top level."""
    attention = (f"GMHA, G={config.n_groups}, window {config.window}"
                 if config.attention == "gmha" else "full MHA")
    parts = [f"**{name}**", f"router `{config.router}`", attention,
             f"{config.n_layers} layers × d={config.d_model}", f"task {config.task}"]
    if config.has_tiers:
        parts.append(f"trained with θs={config.theta_s:.2f}, θd={config.theta_d:.2f}")
    shown = [f"{key} {metrics[key]:.3f}" for key in ("accuracy", "f1", "matthews",
                                                       "deep_tier_rate")
             if isinstance(metrics.get(key), int | float)]
    if shown:
        parts.append("dev " + ", ".join(shown))
    return " · ".join(parts)
