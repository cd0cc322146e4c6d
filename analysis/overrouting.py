"""Over-routing: deep experts spent on tokens the model itself scores as simple.

The paper (DASG-MoE §5.2) explains its MRPC drop (73.01% against Switch's 75.52%) by deep
experts over-processing simple semantic features. This module makes that measurable on our
checkpoints, from a dataset-level trace (`traces.trace_dataset`).

Definitions (all over tier decisions, i.e. (token, MoE layer) pairs that went through the
global router; special tokens included, as in `dasg_moe.evaluate`):

- simple token: evaluator complexity C < `simple_below` (default: the checkpoint's theta_s,
  0.3). The evaluator's own scale, so "simple" means simple *to the model*; paper silent,
  our choice. C is NaN for routers without an evaluator: nothing is simple there.
- deep-tier rate = deep decisions / tier decisions.
- over-routed decision: a deep decision on a simple token.
- over-routing index (ORI) = over-routed decisions / deep decisions: the share of deep-tier
  compute spent on simple tokens (0 = none, 1 = all).
- over-routing rate = over-routed decisions / tier decisions: the same waste per decision;
  unlike the ORI it cannot go *up* just because fewer complex tokens go deep, so threshold
  recommendations minimise this one.
- paraphrase-pair consistency (pair tasks): whole words (lowercased, `tokens.annotate_tokens`)
  that occur in both sentences, punctuation and special tokens left out; every occurrence
  in sentence 1 is paired with every occurrence in sentence 2, piece by piece, in each
  layer. same_tier_rate / same_experts_rate = share of those pairs routed to the same tier /
  the same set of experts. The `_chance` columns give the same share for *any* sentence-1
  token against *any* sentence-2 token of the same example and layer (weighted like the
  shared pairs), the rate to beat.

Functions take the trace frame (`tokens`) and the per-example frame (`examples`) of
`trace_dataset` and return DataFrames or Plotly figures; `run` writes the report.

Cost: one traced pass over the split, plus one pass per threshold pair of `--sweep-grid`
beyond the traced one (`recommend_thresholds`). Pairs already measured by `python -m
analysis sweep` on the same checkpoint and data are read from the cache, so a wide sweep run
once serves every later report.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dasg_moe.data import get_task
from dasg_moe.routers import RoutingOverrides

from . import cli
from .report import Report
from .sweep import (
    PAPER_DEFAULT,
    parse_grid,
    primary_metric,
    sweep_thresholds,
    thresholds_apply,
    write_sweep_sections,
)
from .tokens import STOPWORDS, add_frequency, annotate_tokens, training_token_counts
from .traces import (
    expert_set_key,
    routing_frame_from_trace,
    simple_mask,
    tier_rows,
    trace_dataset,
)

HELP = "deep experts spent on simple tokens: rates by bucket, index, consistency, advice"
DEFAULT_SWEEP_GRID = "0.3,0.5:0.7,0.9"
_RATE_COLUMNS = ["decisions", "deep", "deep_rate", "share_of_deep", "overrouted",
                 "overrouting_index", "mean_complexity"]


def _ratio(a, b):
    """a / b elementwise, NaN where b is 0."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def complexity_bucket(complexity: pd.Series, n_bins: int = 10) -> pd.Categorical:
    """Equal-width buckets of C over [0, 1], labelled "0.0-0.1", ... (NaN stays NaN)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    labels = [f"{lo:.1f}-{hi:.1f}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    # Bins are [lo, hi); C = 1.0 (a saturated sigmoid) belongs to the last one.
    return pd.cut(complexity.clip(upper=1.0 - 1e-9), edges, labels=labels, right=False)


def deep_rate_by(frame: pd.DataFrame, by: str | pd.Series, *,
                 simple_below: float | None = None) -> pd.DataFrame:
    """Deep-tier rate of the tier decisions in `frame`, grouped by a column name or a Series
    aligned with `frame`. Columns: the group, decisions, deep, deep_rate, share_of_deep (of
    all deep decisions), overrouted, overrouting_index, mean_complexity. Categorical groups
    keep their empty categories (decisions 0, rates NaN)."""
    key = frame[by] if isinstance(by, str) else by
    name = by if isinstance(by, str) else (by.name or "group")
    rows = tier_rows(frame)
    deep = rows["tier"].eq("deep")
    parts = pd.DataFrame({name: key.loc[rows.index], "deep": deep,
                          "overrouted": deep & simple_mask(rows, simple_below),
                          "complexity": rows["complexity"]})
    out = parts.groupby(name, observed=False, sort=True).agg(
        decisions=("deep", "size"), deep=("deep", "sum"), overrouted=("overrouted", "sum"),
        mean_complexity=("complexity", "mean")).reset_index()
    out["deep_rate"] = _ratio(out["deep"], out["decisions"])
    out["share_of_deep"] = _ratio(out["deep"], out["deep"].sum())
    out["overrouting_index"] = _ratio(out["overrouted"], out["deep"])
    return out[[name, *_RATE_COLUMNS]]


def overrouting_summary(frame: pd.DataFrame, simple_below: float | None = None) -> dict:
    """Totals over the whole frame: decisions, deep, simple, overrouted, deep_tier_rate,
    overrouting_index, overrouting_rate, simple_deep_rate (NaN where undefined)."""
    rows = tier_rows(frame)
    deep = rows["tier"].eq("deep")
    simple = simple_mask(rows, simple_below)
    n, n_deep, n_simple = len(rows), int(deep.sum()), int(simple.sum())
    n_over = int((deep & simple).sum())
    return {"decisions": n, "deep": n_deep, "simple": n_simple, "overrouted": n_over,
            "deep_tier_rate": float(_ratio(n_deep, n)),
            "overrouting_index": float(_ratio(n_over, n_deep)),
            "overrouting_rate": float(_ratio(n_over, n)),
            "simple_deep_rate": float(_ratio(n_over, n_simple))}


def example_overrouting(frame: pd.DataFrame, examples: pd.DataFrame, *,
                        simple_below: float | None = None, top_words: int = 5) -> pd.DataFrame:
    """One row per example of `examples`: its columns plus decisions, deep, overrouted,
    deep_rate, overrouting_index, overrouting_rate, and `overrouted_words` (the words most
    often over-routed in it, "word×count")."""
    if "token" in frame.columns and "word_text" not in frame.columns:
        frame = annotate_tokens(frame)
    rows = tier_rows(frame)
    deep = rows["tier"].eq("deep")
    over = deep & simple_mask(rows, simple_below)
    counts = pd.DataFrame({"example": rows["example"], "deep": deep, "over": over}).groupby(
        "example").agg(decisions=("deep", "size"), deep=("deep", "sum"),
                       overrouted=("over", "sum"))
    out = examples.merge(counts, left_on="example", right_index=True, how="left")
    out[["decisions", "deep", "overrouted"]] = out[["decisions", "deep",
                                                    "overrouted"]].fillna(0).astype(int)
    out["deep_rate"] = _ratio(out["deep"], out["decisions"])
    out["overrouting_index"] = _ratio(out["overrouted"], out["deep"])
    out["overrouting_rate"] = _ratio(out["overrouted"], out["decisions"])
    words = {}
    if "word_text" in rows.columns and over.any():
        for example, group in rows[over].groupby("example"):
            words[example] = ", ".join(f"{w}×{c}" for w, c in
                                       Counter(group["word_text"]).most_common(top_words))
    out["overrouted_words"] = [words.get(example, "") for example in out["example"]]
    return out


def correctness_table(per_example: pd.DataFrame) -> pd.DataFrame:
    """Over-routing of correctly and wrongly predicted examples (and all). Pooled rates sum
    decisions over the examples of a group; `mean_example_overrouting_rate` averages the
    per-example rates (each example counts once, whatever its length)."""
    groups = {"correct": per_example["correct"], "wrong": ~per_example["correct"],
              "all": pd.Series(True, index=per_example.index)}
    rows = []
    for name, mask in groups.items():
        part = per_example[mask]
        total = part[["decisions", "deep", "overrouted"]].sum()
        rows.append({"predictions": name, "examples": len(part),
                     "decisions": int(total.decisions),
                     "deep_tier_rate": float(_ratio(total.deep, total.decisions)),
                     "overrouting_index": float(_ratio(total.overrouted, total.deep)),
                     "overrouting_rate": float(_ratio(total.overrouted, total.decisions)),
                     "mean_example_overrouting_rate": float(part["overrouting_rate"].mean())
                     if len(part) else float("nan")})
    return pd.DataFrame(rows)


def bootstrap_difference(per_example: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0,
                         level: float = 0.95) -> dict:
    """Pooled over-routing rate of wrong minus correct predictions, with a bootstrap
    confidence interval (examples resampled within each group). NaNs if a group is empty."""
    wrong = per_example[~per_example["correct"]]
    right = per_example[per_example["correct"]]
    nan = {"difference": float("nan"), "low": float("nan"), "high": float("nan")}
    if wrong.empty or right.empty or per_example["decisions"].sum() == 0:
        return nan
    rng = np.random.default_rng(seed)

    def pooled(group: pd.DataFrame) -> tuple[float, np.ndarray]:
        over = group["overrouted"].to_numpy(float)
        dec = group["decisions"].to_numpy(float)
        idx = rng.integers(0, len(group), size=(n_boot, len(group)))  # resampled examples
        return float(_ratio(over.sum(), dec.sum())), _ratio(over[idx].sum(1), dec[idx].sum(1))

    (w, w_boot), (r, r_boot) = pooled(wrong), pooled(right)
    diffs = w_boot - r_boot
    tail = (1 - level) / 2 * 100
    return {"difference": w - r, "low": float(np.nanpercentile(diffs, tail)),
            "high": float(np.nanpercentile(diffs, 100 - tail))}


def worst_examples(per_example: pd.DataFrame, label_names: list[str],
                   n: int = 10) -> pd.DataFrame:
    """The `n` examples with the highest over-routing rate (ties: more over-routed decisions),
    with label, prediction and the words most often over-routed."""
    ranked = per_example[per_example["overrouted"] > 0].sort_values(
        ["overrouting_rate", "overrouted"], ascending=False).head(n)
    name = lambda i: label_names[int(i)] if 0 <= int(i) < len(label_names) else str(i)  # noqa: E731
    out = pd.DataFrame({
        "example": ranked["example"], "label": ranked["label"].map(name),
        "prediction": ranked["prediction"].map(name), "correct": ranked["correct"],
        "prob": ranked["prob"], "n_tokens": ranked["n_tokens"],
        "deep_rate": ranked["deep_rate"], "overrouting_rate": ranked["overrouting_rate"],
        "overrouted": ranked["overrouted"], "overrouted_words": ranked["overrouted_words"],
        "text": ranked["text"]})
    if "text_pair" in ranked.columns and ranked["text_pair"].notna().any():
        out["text_pair"] = ranked["text_pair"]
    return out.reset_index(drop=True)


def _chance(s1: pd.DataFrame, s2: pd.DataFrame, column: str) -> pd.Series:
    """Per (example, layer): probability that a random sentence-1 token and a random
    sentence-2 token share `column`."""
    keys = ["example", "layer"]
    n1 = s1.groupby([*keys, column], observed=True).size().rename("n1")
    n2 = s2.groupby([*keys, column], observed=True).size().rename("n2")
    joint = pd.concat([n1, n2], axis=1, join="inner")
    same = (joint["n1"] * joint["n2"]).groupby(level=keys).sum()
    total = s1.groupby(keys).size() * s2.groupby(keys).size()
    return (same.reindex(total.index, fill_value=0) / total).rename(f"{column}_chance")


def shared_word_pairs(frame: pd.DataFrame) -> pd.DataFrame:
    """Pairs of occurrences of the same whole word in sentence 1 and sentence 2 (see module
    doc), one row per (example, layer, word, piece, occurrence pair) with same_tier (NaN
    without tiers), same_experts and the chance columns of that example and layer."""
    f = annotate_tokens(frame)
    f = f[f["moe"] & ~f["special"] & (f["kind"] != "punctuation")]
    f = f.assign(expert_key=[expert_set_key(e) for e in f["experts"]])
    columns = ["example", "layer", "word_text", "piece", "kind", "tier", "expert_key"]
    s1, s2 = f.loc[f["segment"] == 1, columns], f.loc[f["segment"] == 2, columns]
    pairs = s1.merge(s2.drop(columns="kind"), on=["example", "layer", "word_text", "piece"],
                     suffixes=("_1", "_2"))
    has_tier = pairs["tier_1"] != "none"
    pairs["same_tier"] = (pairs["tier_1"] == pairs["tier_2"]).astype(float).where(has_tier)
    pairs["same_experts"] = (pairs["expert_key_1"] == pairs["expert_key_2"]).astype(float)
    chance = pd.concat([_chance(s1, s2, "tier"), _chance(s1, s2, "expert_key")], axis=1)
    pairs = pairs.merge(chance, left_on=["example", "layer"], right_index=True, how="left")
    pairs["tier_chance"] = pairs["tier_chance"].where(has_tier)
    return pairs


def pair_consistency(frame: pd.DataFrame, by: str | None = "layer") -> pd.DataFrame:
    """Paraphrase-pair consistency per `by` ("layer", "kind" or None for one overall row),
    plus an "all" row: pairs, examples, same_tier_rate, same_tier_chance, same_experts_rate,
    same_experts_chance. Empty for single-sentence tasks."""
    pairs = shared_word_pairs(frame)
    columns = ["pairs", "examples", "same_tier_rate", "same_tier_chance",
               "same_experts_rate", "same_experts_chance"]

    def summary(part: pd.DataFrame) -> dict:
        return {"pairs": len(part), "examples": part["example"].nunique(),
                "same_tier_rate": part["same_tier"].mean(),
                "same_tier_chance": part["tier_chance"].mean(),
                "same_experts_rate": part["same_experts"].mean(),
                "same_experts_chance": part["expert_key_chance"].mean()}

    group = {"layer": "layer", "kind": "kind", None: None}[by]
    rows = []
    if group is not None:
        for key, part in pairs.groupby(group, observed=True, sort=True):
            rows.append({group: key, **summary(part)})
    rows.append({**({group: "all"} if group else {}), **summary(pairs)})
    out = pd.DataFrame(rows, columns=([group] if group else []) + columns)
    if group is not None:
        out[group] = out[group].astype(str)
    return out


def recommend_thresholds(sweep: pd.DataFrame, task: str, *,
                         baseline: tuple[float, float] = PAPER_DEFAULT,
                         tolerance: float = 0.01) -> dict:
    """From a `sweep_thresholds` table: the pair that cuts the over-routing rate most while
    losing at most `tolerance` (absolute) of the primary metric against `baseline`; ties go
    to the higher metric, then fewer FLOPs. Returns a dict with `found` and either the pair
    and its changes or the `reason` none qualifies."""
    metric = primary_metric(task)
    base = sweep[(sweep["theta_s"] == baseline[0]) & (sweep["theta_d"] == baseline[1])]
    if base.empty:
        return {"found": False, "reason": f"the baseline {baseline} is not in the sweep"}
    b = base.iloc[0]
    if np.isnan(b["overrouting_rate"]):
        return {"found": False, "reason": "over-routing is undefined for this router"}
    if b["overrouting_rate"] == 0:
        return {"found": False, "reason": "the baseline has no over-routing to cut"}
    cand = sweep[(sweep["overrouting_rate"] < b["overrouting_rate"])
                 & (sweep[metric] >= b[metric] - tolerance)]
    if cand.empty:
        return {"found": False, "reason": f"no pair in the sweep cuts over-routing with a "
                                          f"{metric} loss of at most {tolerance:g}"}
    best = cand.sort_values(["overrouting_rate", metric, "flops_per_token"],
                            ascending=[True, False, True]).iloc[0]
    return {"found": True, "metric": metric, "theta_s": float(best["theta_s"]),
            "theta_d": float(best["theta_d"]), "tolerance": tolerance,
            "baseline": baseline, "metric_value": float(best[metric]),
            "metric_change": float(best[metric] - b[metric]),
            "overrouting_rate": float(best["overrouting_rate"]),
            "overrouting_rate_change": float(best["overrouting_rate"] - b["overrouting_rate"]),
            "deep_tier_rate": float(best["deep_tier_rate"]),
            "flops_change": float(_ratio(best["flops_per_token"] - b["flops_per_token"],
                                         b["flops_per_token"]))}


# Figures -------------------------------------------------------------------------------------


def rate_figure(table: pd.DataFrame, x: str, title: str, xlabel: str) -> go.Figure:
    """Bars of deep-tier rate per group of a `deep_rate_by` table, the decision count and
    over-routing index in the tooltip."""
    hover = [f"{xlabel}: {g}<br>deep-tier rate: {r:.3f}<br>decisions: {n:,}<br>"
             f"over-routing index: {o:.3f}" for g, r, n, o in
             zip(table[x], table["deep_rate"], table["decisions"], table["overrouting_index"],
                 strict=True)]
    fig = go.Figure(go.Bar(x=table[x].astype(str), y=table["deep_rate"], text=hover,
                           hoverinfo="text", textposition="none", marker_color="#d62728"))
    fig.update_layout(title=title, xaxis_title=xlabel, yaxis_title="deep-tier rate",
                      yaxis_range=[0, 1], template="plotly_white")
    return fig


def complexity_figure(frame: pd.DataFrame, simple_below: float) -> go.Figure:
    """Histogram of evaluator complexity C, shallow and deep decisions overlaid, with the
    "simple" cut-off: deep bars left of the line are over-routed decisions."""
    rows = tier_rows(frame)
    fig = go.Figure()
    for tier, colour in (("shallow", "#1f77b4"), ("deep", "#d62728")):
        values = rows.loc[rows["tier"] == tier, "complexity"]
        fig.add_trace(go.Histogram(x=values, name=f"{tier} tier", opacity=0.6,
                                   marker_color=colour, xbins=dict(start=0, end=1, size=0.02)))
    fig.add_vline(x=simple_below, line_dash="dash",
                  annotation_text=f"simple below C = {simple_below:g}")
    fig.update_layout(barmode="overlay", title="Complexity C of tier decisions, by tier",
                      xaxis_title="complexity C (evaluator)", yaxis_title="decisions",
                      template="plotly_white")
    return fig


def consistency_figure(table: pd.DataFrame) -> go.Figure:
    """Same-tier and same-expert rates of shared words per layer, against chance."""
    rows = table[table["layer"] != "all"]
    fig = go.Figure()
    for column, name, colour in (("same_tier_rate", "same tier", "#d62728"),
                                 ("same_tier_chance", "same tier, any two tokens", "#ff9896"),
                                 ("same_experts_rate", "same experts", "#1f77b4"),
                                 ("same_experts_chance", "same experts, any two tokens",
                                  "#aec7e8")):
        fig.add_trace(go.Bar(x=rows["layer"], y=rows[column], name=name, marker_color=colour,
                             hovertemplate="layer %{x}<br>" + name + ": %{y:.3f}<extra></extra>"))
    fig.update_layout(barmode="group", title="Words shared by sentence 1 and 2: routing "
                                             "agreement per layer",
                      xaxis_title="layer", yaxis_title="share of shared-word pairs",
                      yaxis_range=[0, 1], template="plotly_white")
    return fig


# Report ----------------------------------------------------------------------------------------


def _pct(value: float) -> str:
    """0.253 -> "25.3%", NaN -> "n/a"."""
    return "n/a" if value is None or np.isnan(value) else f"{100 * value:.1f}%"


def write_report(report: Report, tokens: pd.DataFrame, examples: pd.DataFrame, *, task: str,
                 label_names: list[str], simple_below: float,
                 train_counts: pd.Series | None = None, sweep: pd.DataFrame | None = None,
                 tolerance: float = 0.01, router: str = "dasg") -> dict:
    """Fill `report` with the over-routing analysis; returns the headline numbers."""
    spec = get_task(task)
    frame = annotate_tokens(tokens)
    if train_counts is not None:
        frame = add_frequency(frame, train_counts)
    totals = overrouting_summary(frame, simple_below)
    per_example = example_overrouting(frame, examples, simple_below=simple_below)
    has_tiers = totals["decisions"] > 0
    has_complexity = bool(frame["complexity"].notna().any())

    notes = []
    if not has_tiers:
        notes.append(f"Router `{router}` makes no tier decisions: every deep-tier rate and "
                     "over-routing figure below is n/a.")
    elif not has_complexity:
        notes.append(f"Router `{router}` has no evaluator: complexity C is NaN, so no token "
                     "counts as simple and the over-routing measures are n/a.")
    if router == "random":
        notes.append("Router `random` draws the tier by coin toss: its over-routing index is "
                     "the share of simple tokens, a reference point, not a routing choice.")

    report.section("Definitions")
    report.bullets([
        f"**simple token**: evaluator complexity C < {simple_below:g} (the checkpoint's "
        "theta_s, on the evaluator's own scale).",
        "**deep-tier rate** = deep decisions / tier decisions, over (token, MoE layer) pairs.",
        "**over-routing index (ORI)** = deep decisions on simple tokens / all deep decisions: "
        "the share of deep-tier compute spent on simple tokens.",
        "**over-routing rate** = deep decisions on simple tokens / all tier decisions (what "
        "the threshold recommendation minimises).",
        "**token kinds**: special ([CLS]/[SEP]), subword (`##` pieces), punctuation, stopword "
        f"(a built-in list of {len(STOPWORDS)} English function words), content (the rest); "
        "a word's first piece takes the kind of the whole word."])
    report.bullets(notes)

    report.section("Headline")
    correct = correctness_table(per_example)
    diff = bootstrap_difference(per_example)
    if not has_tiers:
        lines = [f"No tier decisions (router `{router}`): nothing to measure here; the "
                 "`load` report covers its experts."]
    else:
        simple_note = (f"Simple tokens went deep in {_pct(totals['simple_deep_rate'])} of "
                       f"their {totals['simple']:,} decisions." if totals["simple"]
                       else "No decision was on a simple token.")
        lines = [f"{totals['decisions']:,} tier decisions; deep-tier rate "
                 f"{_pct(totals['deep_tier_rate'])}.",
                 f"Over-routing index {_pct(totals['overrouting_index'])}: of "
                 f"{totals['deep']:,} deep decisions, {totals['overrouted']:,} went to simple "
                 f"tokens (C < {simple_below:g}). {simple_note}"]
        if not totals["simple"] and has_complexity:
            c = tier_rows(frame)["complexity"]
            lines.append(f"No token is simple at C < {simple_below:g}: C ranges "
                         f"{c.min():.3f}-{c.max():.3f} (quartiles {c.quantile(0.25):.3f}, "
                         f"{c.median():.3f}, {c.quantile(0.75):.3f}). For a relative definition, "
                         f"rerun with `--simple-below {c.quantile(0.25):.3f}` (the lowest "
                         "quarter of C counts as simple).")
    by_kind = deep_rate_by(frame, "kind", simple_below=simple_below)
    if totals["overrouted"]:  # which kinds of token take the over-routed decisions
        shares = (by_kind.set_index("kind")["overrouted"] / totals["overrouted"]).sort_values(
            ascending=False)
        lines.append("Over-routed decisions by token kind: " + ", ".join(
            f"{kind} {_pct(share)}" for kind, share in shares.items() if share > 0) + ".")
    by_group = correct.set_index("predictions")["overrouting_rate"]
    if has_tiers and totals["overrouted"] and not np.isnan(diff["difference"]):
        lines.append(
            f"Wrong predictions: over-routing rate {_pct(by_group['wrong'])} vs "
            f"{_pct(by_group['correct'])} for correct ones (difference "
            f"{100 * diff['difference']:+.2f} points, 95% bootstrap CI "
            f"[{100 * diff['low']:+.2f}, {100 * diff['high']:+.2f}]).")
    report.bullets(lines)

    report.section("Deep-tier rate by complexity")
    by_complexity = deep_rate_by(frame, complexity_bucket(frame["complexity"]).rename(
        "complexity_bucket"), simple_below=simple_below)
    report.table("by_complexity", by_complexity, "Tier decisions per complexity bucket "
                 "(C of the token in that layer)")
    if has_tiers and has_complexity:
        report.figure("complexity_by_tier", complexity_figure(frame, simple_below),
                      "complexity of shallow and deep decisions")
        report.figure("by_complexity", rate_figure(by_complexity, "complexity_bucket",
                                                   "Deep-tier rate by complexity bucket",
                                                   "complexity C"), "deep-tier rate by C")

    report.section("Deep-tier rate by token kind")
    report.table("by_kind", by_kind, "Tier decisions per token kind")
    if has_tiers:
        report.figure("by_kind", rate_figure(by_kind, "kind", "Deep-tier rate by token kind",
                                             "token kind"), "deep-tier rate by token kind")
    if "frequency" in frame.columns:
        by_freq = deep_rate_by(frame, "frequency", simple_below=simple_below)
        report.table("by_frequency", by_freq, f"Tier decisions by how often the token occurs "
                     f"in {task}'s training split (special tokens left out)")
        if has_tiers:
            report.figure("by_frequency", rate_figure(
                by_freq, "frequency", "Deep-tier rate by training-data frequency of the token",
                "occurrences in the training split"), "deep-tier rate by token frequency")

    report.section("Deep-tier rate by layer and by label")
    by_layer = deep_rate_by(frame, "layer", simple_below=simple_below)
    report.table("by_layer", by_layer, "Tier decisions per layer")
    if has_tiers:
        report.figure("by_layer", rate_figure(by_layer, "layer", "Deep-tier rate by layer",
                                              "layer"), "deep-tier rate by layer")
    label = frame["example"].map(examples.set_index("example")["label"]).map(
        lambda i: label_names[int(i)] if 0 <= int(i) < len(label_names) else str(i))
    by_label = deep_rate_by(frame, label.rename("label"), simple_below=simple_below)
    report.table("by_label", by_label, "Tier decisions per gold label")

    report.section("Over-routing and correctness")
    report.table("by_correctness", correct, "Pooled over the examples of each group")
    report.table("worst_examples", worst_examples(per_example, label_names),
                 "Examples with the highest over-routing rate", max_chars=120)

    if spec.is_pair:
        report.section("Paraphrase-pair consistency")
        consistency = pair_consistency(frame, "layer")
        by_word_kind = pair_consistency(frame, "kind")
        report.text("Whole words occurring in both sentences (lowercased, punctuation left "
                    "out): how often their occurrences get the same tier / the same experts, "
                    "against any sentence-1 token paired with any sentence-2 token of the "
                    "same example and layer (`_chance`).")
        report.table("pair_consistency", consistency, "Per layer")
        report.table("pair_consistency_by_kind", by_word_kind, "Per word kind")
        if len(consistency) > 1:
            report.figure("pair_consistency", consistency_figure(consistency),
                          "routing agreement of shared words per layer")

    recommendation = None
    if sweep is not None:
        recommendation = recommend_thresholds(sweep, task, tolerance=tolerance)
        report.section("Recommendation")
        if recommendation["found"]:
            r = recommendation
            report.text(
                f"**theta_s = {r['theta_s']:g}, theta_d = {r['theta_d']:g}**: over-routing "
                f"rate {_pct(r['overrouting_rate'])} ({100 * r['overrouting_rate_change']:+.2f}"
                f" points against {PAPER_DEFAULT}), {r['metric']} {r['metric_value']:.4f} "
                f"({r['metric_change']:+.4f}), FLOPs per token {100 * r['flops_change']:+.1f}%"
                f". Rule: the largest cut of the over-routing rate among pairs losing at most "
                f"{tolerance:g} {r['metric']}.")
        else:
            report.text(f"No recommendation: {recommendation['reason']}.")
        write_sweep_sections(report, sweep, task, simple_below, (
            recommendation["theta_s"], recommendation["theta_d"])
            if recommendation["found"] else None)
    return {**totals, "correct_vs_wrong": diff, "recommendation": recommendation}


# Command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m analysis overrouting`."""
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder")
    cli.add_data_arguments(parser)
    parser.add_argument("--theta-s", type=float, help="trace with this theta_s")
    parser.add_argument("--theta-d", type=float, help="trace with this theta_d")
    parser.add_argument("--simple-below", type=float,
                        help="complexity below which a token is simple (default: the "
                             "checkpoint's theta_s)")
    parser.add_argument("--sweep-grid", default=DEFAULT_SWEEP_GRID,
                        help=f"grid for the recommendation (sweep syntax; 'none' skips it; "
                             f"default {DEFAULT_SWEEP_GRID})")
    parser.add_argument("--tolerance", type=float, default=0.01,
                        help="largest acceptable loss of the primary metric (default 0.01)")
    cli.add_run_arguments(parser)


def run(args: argparse.Namespace) -> Path:
    """Trace the split, count training frequencies, sweep for the recommendation, write the
    report; returns the path of report.md."""
    skip_sweep = args.sweep_grid.strip().lower() == "none"
    grid = [] if skip_sweep else parse_grid(args.sweep_grid)  # fail fast on a typo
    ckpt = cli.open_checkpoint(args.checkpoint, args.device)
    task = cli.resolve_task(args.task, ckpt.config)
    dataset = cli.load_examples(task, args.split, args.data_dir, args.max_examples)
    cache_dir = cli.cache_dir_for(args, ckpt.path)
    simple_below = ckpt.config.theta_s if args.simple_below is None else args.simple_below
    overrides = RoutingOverrides(args.theta_s, args.theta_d)
    theta_s, theta_d = overrides.thresholds(ckpt.config)
    progress = not args.no_progress
    tokens, examples = trace_dataset(ckpt.model, ckpt.tokenizer, task, dataset,
                                     batch_size=args.batch_size, overrides=overrides,
                                     progress=progress, cache_dir=cache_dir)
    counts = training_token_counts(
        ckpt.tokenizer, task, args.data_dir,
        cache_file=cache_dir / f"counts-{task}-train.parquet" if cache_dir else None)
    sweep = None
    if not skip_sweep and thresholds_apply(ckpt.model):
        pairs = {*grid, PAPER_DEFAULT}
        traced = {(theta_s, theta_d): routing_frame_from_trace(tokens, examples, simple_below)}
        sweep = sweep_thresholds(ckpt.model, ckpt.tokenizer, task, dataset, sorted(pairs),
                                 simple_below=simple_below, batch_size=args.batch_size,
                                 progress=progress, cache_dir=cache_dir, precomputed=traced)
    report = Report(args.out, f"Over-routing: {ckpt.path.name} on {task}")
    report.text(f"Checkpoint `{ckpt.path}` (router `{ckpt.config.router}`), data "
                f"{cli.data_description(task, args.split, len(dataset), args.max_examples)}, "
                f"traced at theta_s = {theta_s:g}, theta_d = {theta_d:g}; primary metric "
                f"`{primary_metric(task)}`.")
    write_report(report, tokens, examples, task=task,
                 label_names=cli.label_names(ckpt.config, task), simple_below=simple_below,
                 train_counts=counts, sweep=sweep, tolerance=args.tolerance,
                 router=ckpt.config.router)
    return report.write()
