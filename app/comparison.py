"""One text through several checkpoints: alignment, agreement and a written summary
(the Compare page; DESIGN.md §6). Plain functions over `Inspection`s.

Checkpoints may use different tokenizers (a MiniLM flagship beside a small from-scratch
model) and different depths. Tokens are matched by where they sit in the text: a token of
checkpoint A is matched to every token of B from the same sentence whose character span
overlaps its own, and special tokens are matched by their order ([CLS] to [CLS], the first
[SEP] to the first [SEP]). With one tokenizer this is the identity. Layers are compared by
index, up to the shallower model's depth (paper silent; by index is what a reader expects
when two models have the same depth, which is the common case).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from app.traces import has_tiers
from dasg_moe.config import DasgConfig
from dasg_moe.inspect import Inspection
from dasg_moe.tokenizer import EncodedText


def default_pair(names: list[str], current: str, folders: Mapping[str, Path]) -> list[str]:
    """The checkpoints Compare opens with: the current one (else the first) and the one a
    reader most likely wants beside it: the same task with the Switch router (the paper's
    baseline), else the same task, else any other."""
    if not names:
        return []
    first = current if current in names else names[0]

    def config(name: str) -> DasgConfig | None:
        try:
            return DasgConfig.from_json(folders[name] / "config.json")
        except (OSError, ValueError, TypeError):
            return None

    ref = config(first)
    task = ref.task if ref else None
    others = [(n, config(n)) for n in names if n != first]
    ranked = sorted(others, key=lambda nc: (nc[1] is None or nc[1].task != task,
                                            nc[1] is None or nc[1].router != "switch"))
    return [first, *[n for n, _ in ranked[:1]]]


def align(a: EncodedText, b: EncodedText) -> list[list[int]]:
    """For every token of `a`, the positions of the tokens of `b` that cover the same text."""
    if a.tokens == b.tokens and a.segment == b.segment:
        return [[i] for i in range(len(a.tokens))]
    specials_b = [j for j, s in enumerate(b.special) if s]
    matches, n_special = [], 0
    for i, (seg, (start, end)) in enumerate(zip(a.segment, a.offsets, strict=True)):
        if a.special[i]:
            matches.append([specials_b[n_special]] if n_special < len(specials_b) else [])
            n_special += 1
            continue
        matches.append([j for j, (seg_b, (s_b, e_b)) in enumerate(zip(b.segment, b.offsets,
                                                                      strict=True))
                        if not b.special[j] and seg_b == seg and s_b < end and start < e_b])
    return matches


def _kind(tier_a: str, tier_b: str) -> str:
    if tier_a not in ("shallow", "deep") or tier_b not in ("shallow", "deep"):
        return "not comparable"
    if tier_a == tier_b:
        return f"both {tier_a}"
    return "only A deep" if tier_a == "deep" else "only B deep"


def agreement(a: Inspection, b: Inspection) -> pd.DataFrame:
    """One row per (token of A, layer both models have): both tiers, the kind of
    (dis)agreement, and score / importance / complexity of A and of B (B averaged over the
    tokens matched to A's token; a tier is "mixed" when they differ)."""
    matches = align(a.encoded, b.encoded)
    layers = min(a.frame["layer"].max(), b.frame["layer"].max()) + 1
    fa = a.frame.set_index(["layer", "position"])
    fb = b.frame.set_index(["layer", "position"])
    metrics = ("score", "importance", "complexity")
    rows = []
    for layer in range(int(layers)):
        for i, token in enumerate(a.encoded.tokens):
            ra = fa.loc[(layer, i)]
            matched = [fb.loc[(layer, j)] for j in matches[i]]
            tiers_b = {r["tier"] for r in matched}
            tier_b = "unmatched" if not matched else tiers_b.pop() if len(tiers_b) == 1 \
                else "mixed"
            row = {"layer": layer, "position": i, "token": token, "tier_a": ra["tier"],
                   "tier_b": tier_b, "kind": _kind(ra["tier"], tier_b),
                   "tokens_b": " ".join(b.encoded.tokens[j] for j in matches[i])}
            for m in metrics:
                row[f"{m}_a"] = float(ra[m])
                row[f"{m}_b"] = float(np.mean([r[m] for r in matched])) if matched \
                    else float("nan")
            row["value_a"] = f"{row['tier_a']}, score {row['score_a']:.3f}"
            row["value_b"] = (f"{row['tier_b']}, score {row['score_b']:.3f} "
                              f"[{row['tokens_b']}]")
            rows.append(row)
    return pd.DataFrame(rows)


def expert_usage(results: Mapping[str, Inspection]) -> pd.DataFrame:
    """Picks per expert and layer for each checkpoint on this text (sub-token picks of
    MH-MoE count one each): columns checkpoint, layer, expert, picks, share."""
    rows = []
    for name, result in results.items():
        labels = result.trace.expert_labels
        for layer, part in result.frame[result.frame["moe"]].groupby("layer", sort=True):
            counts = Counter(e for picks in part["experts"] for e in picks)
            total = sum(counts.values()) or 1
            for e, label in enumerate(labels):
                rows.append({"checkpoint": name, "layer": int(layer), "expert": label,
                             "picks": counts.get(e, 0), "share": counts.get(e, 0) / total})
    return pd.DataFrame(rows, columns=["checkpoint", "layer", "expert", "picks", "share"])


def routing_totals(result: Inspection) -> dict[str, float]:
    """Per-text routing totals: deep-tier rate, experts per token and FLOPs per token."""
    moe = result.frame[result.frame["moe"]]
    tiers = moe[moe["tier"] != "none"]
    return {"deep_tier_rate": float((tiers["tier"] == "deep").mean()) if len(tiers)
            else float("nan"),
            "experts_per_token": float(moe["n_experts"].mean()) if len(moe) else float("nan"),
            "flops_per_token": float(result.frame.groupby("position")["flops"].sum().mean())}


def summary_table(results: Mapping[str, Inspection]) -> pd.DataFrame:
    """One row per checkpoint: router, prediction with its probability, routing totals."""
    rows = []
    for name, r in results.items():
        best = int(np.argmax(r.probabilities))
        rows.append({"checkpoint": name, "router": r.trace.router,
                     "layers": int(r.frame["layer"].max()) + 1,
                     "tokens": len(r.encoded.tokens), "prediction": r.prediction,
                     "probability": r.probabilities[best], **routing_totals(r)})
    return pd.DataFrame(rows)


def describe(results: Mapping[str, Inspection]) -> list[str]:
    """A few sentences (Markdown) on where the checkpoints differ most, against the first."""
    names = list(results)
    lines = []
    predictions = {n: results[n].prediction for n in names}
    if len(set(predictions.values())) == 1:
        lines.append(f"All {len(names)} checkpoints predict **{predictions[names[0]]}**.")
    else:
        lines.append("Predictions differ: " + "; ".join(
            f"`{n}` → **{p}** ({max(results[n].probabilities):.2f})"
            for n, p in predictions.items()) + ".")
    ref_name, ref = names[0], results[names[0]]
    totals = {n: routing_totals(results[n]) for n in names}
    for name in names[1:]:
        other = results[name]
        table = agreement(ref, other)
        notes = []
        if ref.encoded.tokens != other.encoded.tokens:
            unmatched = int((table[table["layer"] == 0]["tier_b"] == "unmatched").sum())
            notes.append(f"their tokenizers differ, so tokens were matched by character span"
                         f"{f' ({unmatched} of A unmatched)' if unmatched else ''}")
        depth_a, depth_b = ref.frame["layer"].max() + 1, other.frame["layer"].max() + 1
        if depth_a != depth_b:
            notes.append(f"`{ref_name}` has {depth_a} layers and `{name}` {depth_b}; layers "
                         f"0–{min(depth_a, depth_b) - 1} are compared")
        comparable = table[table["kind"] != "not comparable"]
        if has_tiers(ref.trace) and has_tiers(other.trace) and len(comparable):
            agree = comparable["kind"].str.startswith("both")
            by_layer = agree.groupby(comparable["layer"]).mean()
            worst = by_layer.idxmin()
            text = (f"`{ref_name}` vs `{name}`: same tier in {agree.mean():.0%} of the "
                    f"(token, layer) decisions; least in layer {worst} ({by_layer[worst]:.0%})")
            flips = comparable[~agree].groupby(["position", "token"]).size()
            if len(flips):
                top = flips.sort_values(ascending=False).head(3)
                text += "; most often split: " + ", ".join(
                    f"“{t}” ({c} layer{'s' if c > 1 else ''})" for (_, t), c in top.items())
            lines.append(text + ".")
        else:
            lines.append(f"`{ref_name}` vs `{name}`: tiers cannot be compared (router "
                         f"{ref.trace.router} vs {other.trace.router}; tier agreement needs "
                         f"two tiered routers).")
        metric = "score" if table["score_a"].notna().any() and table["score_b"].notna().any() \
            else "importance"
        ordinary = ~table["token"].isin(("[CLS]", "[SEP]"))  # specials soak up attention
        gap = (table[f"{metric}_a"] - table[f"{metric}_b"]).abs().where(ordinary)
        if gap.notna().any():
            row = table.loc[gap.idxmax()]
            lines.append(f"Largest {metric} gap: “{row['token']}” in layer {row['layer']} "
                         f"(A {row[f'{metric}_a']:.2f}, B {row[f'{metric}_b']:.2f}).")
        fa, fb = totals[ref_name]["flops_per_token"], totals[name]["flops_per_token"]
        lines.append(f"Compute: `{name}` spends {fb:,.0f} FFN FLOPs per token, "
                     f"{fb / fa:.2f}× `{ref_name}` ({fa:,.0f}).")
        if notes:
            lines.append("Note: " + "; ".join(notes) + ".")
    return lines
