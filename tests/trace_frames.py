"""Hand-built trace frames for the analysis tests: the columns of `RoutingTrace.to_frame()`
with values chosen so the right answer of each metric is known.

`make_frame(rows)` takes one dict per (example, layer, token) row with the fields a test
cares about and fills the rest with neutral defaults.
"""

from __future__ import annotations

import math

import pandas as pd

EXPERT_LABELS = ["S0", "S1", "D0", "D1"]  # 2 shallow + 2 deep experts, DASG numbering


def make_frame(rows: list[dict], expert_labels: list[str] | None = None) -> pd.DataFrame:
    """A trace frame from `rows`; defaults: segment 1, not special, tier deep, complexity
    0.5, experts [2, 3] (deep) or [0, 1] (shallow), thresholds 0.3 / 0.7, MoE layer."""
    full = []
    for r in rows:
        tier = r.get("tier", "deep")
        experts = r.get("experts", [2, 3] if tier == "deep" else [0, 1])
        score = r.get("score", 0.5)
        theta_s, theta_d = r.get("theta_s", 0.3), r.get("theta_d", 0.7)
        position = r.get("position", 0)
        token = r.get("token", "tok")
        full.append({
            "example": r.get("example", 0), "layer": r.get("layer", 0), "position": position,
            "token_id": r.get("token_id", abs(hash(token)) % 1000),
            "token": token, "start": r.get("start", position), "end": r.get("end", position + 1),
            "group": 0, "segment": r.get("segment", 1),
            "special": r.get("special", token in ("[CLS]", "[SEP]")),
            "importance": r.get("importance", 0.5), "complexity": r.get("complexity", 0.5),
            "score": score, "p_deep": r.get("p_deep", math.nan),
            "in_band": r.get("in_band", False), "tier": tier,
            "theta_s": theta_s, "theta_d": theta_d,
            "tier_margin": r.get("tier_margin", min(abs(score - theta_s), abs(score - theta_d))),
            "experts": experts,
            "gate_weights": r.get("gate_weights", [1.0 / len(experts)] * len(experts)),
            "n_experts": len(experts), "router_probs": r.get("router_probs", []),
            "top_prob": r.get("top_prob", 0.5), "expert_margin": r.get("expert_margin", 0.1),
            "flops": r.get("flops", 1.0), "moe": r.get("moe", True)})
    frame = pd.DataFrame(full)
    frame.attrs["expert_labels"] = expert_labels or EXPERT_LABELS
    frame.attrs["router"] = "dasg"
    return frame


def sentence_rows(tokens: list[str], example: int = 0, layer: int = 0, segment: int = 1,
                  start_position: int = 0, **fields) -> list[dict]:
    """Rows for consecutive tokens of one segment; a tuple value in `fields` gives one value
    per token, anything else is shared by all tokens."""
    rows = []
    for i, token in enumerate(tokens):
        row = {"example": example, "layer": layer, "segment": segment,
               "position": start_position + i, "token": token}
        for key, value in fields.items():
            row[key] = value[i] if isinstance(value, tuple) else value
        rows.append(row)
    return rows
