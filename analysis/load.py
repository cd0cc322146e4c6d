"""Expert load, router confidence, co-activation and token specialisation.

In the manner of the OLMoE and OpenMoE routing analyses, over a dataset-level trace:

- load per layer and expert: picks (token, expert) assignments; `share` of the picks of its
  tier in that layer; gate mass (sum of gate weights);
- per layer and tier: normalised entropy of the load H / log(E) (1 = perfectly even),
  coefficient of variation std / mean of the picks (0 = even; population std), the largest
  share, dead experts (no pick at all) and starved ones (under 10% of the even share);
- router confidence per layer and tier: mean probability of the top expert and the near-tie
  rate, the share of decisions whose `expert_margin` is below epsilon;
- co-activation: tokens whose expert set holds both i and j (diagonal: tokens using i);
- token specialisation: for each expert the tokens it takes, with `token_share` = the share
  of that token's occurrences in the layer that the expert received (OLMoE's vocabulary
  specialisation; 1 = the expert takes every occurrence).

Expert names come from the trace (`tokens.attrs["expert_labels"]`: "S0".."S3", "D0".."D3"
for DASG, "E0".. for one-tier routers, "FFN" for dense); an "S"/"D" name puts the expert in
the shallow / deep tier, anything else in tier "all". Rows of dense layers are left out.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from . import cli, fragility
from .report import Report
from .traces import trace_dataset

HELP = "expert load (entropy, CV, dead experts), confidence, co-activation, specialisation"
DEFAULT_EPSILON = 0.02
STARVED_FRACTION = 0.1  # an expert under 10% of the even share of its tier is "starved"


def expert_labels(frame: pd.DataFrame, labels: Sequence[str] | None = None) -> list[str]:
    """Names of the global expert indices: `labels`, else the trace's, else E0, E1, ..."""
    labels = labels or frame.attrs.get("expert_labels")
    if labels:
        return list(labels)
    top = max((max(e) for e in frame["experts"] if len(e)), default=-1)
    return [f"E{i}" for i in range(top + 1)]


def expert_tier(label: str) -> str:
    """shallow for "S..", deep for "D..", else all."""
    return {"S": "shallow", "D": "deep"}.get(label[:1], "all")


def _moe_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of MoE layers (dense FFN layers carry one pseudo-expert and are left out)."""
    return frame[frame["moe"]]


def _picks(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (trace row, expert assignment): layer, expert, gate."""
    rows = _moe_rows(frame)[["layer", "experts", "gate_weights"]]
    picks = rows.explode(["experts", "gate_weights"]).dropna(subset=["experts"])
    return pd.DataFrame({"layer": picks["layer"].astype(int),
                         "expert": picks["experts"].astype(int),
                         "gate": picks["gate_weights"].astype(float)})


def expert_load(frame: pd.DataFrame, labels: Sequence[str] | None = None) -> pd.DataFrame:
    """Per (layer, expert), every expert listed even without picks: layer, expert,
    expert_label, expert_tier, picks, share (of its tier's picks in the layer), gate_mass."""
    names = expert_labels(frame, labels)
    picks = _picks(frame)
    layers = sorted(_moe_rows(frame)["layer"].unique())
    grid = pd.MultiIndex.from_product([layers, range(len(names))], names=["layer", "expert"])
    load = picks.groupby(["layer", "expert"]).agg(picks=("gate", "size"),
                                                  gate_mass=("gate", "sum"))
    load = load.reindex(grid, fill_value=0).reset_index()
    load.insert(2, "expert_label", [names[e] for e in load["expert"]])
    load.insert(3, "expert_tier", [expert_tier(n) for n in load["expert_label"]])
    tier_total = load.groupby(["layer", "expert_tier"])["picks"].transform("sum")
    load.insert(5, "share", np.where(tier_total > 0, load["picks"] / tier_total.clip(lower=1),
                                     np.nan))
    return load


def load_summary(load: pd.DataFrame) -> pd.DataFrame:
    """Per (layer, expert tier) from an `expert_load` table: experts, picks, entropy
    (normalised), cv, max_share, dead, starved and the dead experts' names."""
    rows = []
    for (layer, tier), part in load.groupby(["layer", "expert_tier"], sort=True):
        picks = part["picks"].to_numpy(float)
        n, total = len(picks), picks.sum()
        p = picks / total if total else np.full(n, np.nan)
        nonzero = p[p > 0]
        entropy = float(-(nonzero * np.log(nonzero)).sum() / np.log(n)) if total and n > 1 \
            else float("nan")
        even = 1.0 / n
        rows.append({"layer": layer, "expert_tier": tier, "experts": n, "picks": int(total),
                     "entropy": entropy,
                     "cv": float(picks.std() / picks.mean()) if total else float("nan"),
                     "max_share": float(p.max()) if total else float("nan"),
                     "dead": int((picks == 0).sum()) if total else 0,
                     "starved": int(((p < STARVED_FRACTION * even) & (p > 0)).sum())
                     if total else 0,
                     "dead_experts": ", ".join(part.loc[part["picks"] == 0, "expert_label"])
                     if total else ""})
    return pd.DataFrame(rows)


def router_confidence(frame: pd.DataFrame, epsilon: float = DEFAULT_EPSILON) -> pd.DataFrame:
    """Per (layer, tier): decisions, mean_top_prob, median_expert_margin, near_tie_rate (share
    of decisions with expert_margin < epsilon among those where it is defined)."""
    rows = _moe_rows(frame)
    margin = rows["expert_margin"].astype(float)
    parts = pd.DataFrame({"layer": rows["layer"], "tier": rows["tier"],
                          "top_prob": rows["top_prob"].astype(float), "margin": margin,
                          "near_tie": (margin < epsilon).astype(float).where(margin.notna())})
    out = parts.groupby(["layer", "tier"], sort=True).agg(
        decisions=("top_prob", "size"), mean_top_prob=("top_prob", "mean"),
        median_expert_margin=("margin", "median"), near_tie_rate=("near_tie", "mean"))
    return out.reset_index()


def coactivation(frame: pd.DataFrame, layer: int, labels: Sequence[str] | None = None, *,
                 conditional: bool = False) -> pd.DataFrame:
    """Square frame over the experts of `layer`: entry (i, j) counts the tokens whose expert
    set holds both i and j; the diagonal counts the tokens using i. With `conditional`, each
    row is divided by its diagonal: P(j picked | i picked)."""
    names = expert_labels(frame, labels)
    rows = _moe_rows(frame)
    rows = rows[rows["layer"] == layer]
    one_hot = np.zeros((len(rows), len(names)))
    for r, experts in enumerate(rows["experts"]):
        one_hot[r, list(set(experts))] = 1.0
    counts = one_hot.T @ one_hot  # [E, E]
    if conditional:
        diag = np.diag(counts).copy()
        counts = np.divide(counts, diag[:, None], out=np.full_like(counts, np.nan),
                           where=diag[:, None] > 0)
    return pd.DataFrame(counts, index=names, columns=names)


def token_specialisation(frame: pd.DataFrame, labels: Sequence[str] | None = None, *,
                         top: int = 5, min_count: int = 5) -> pd.DataFrame:
    """Per (layer, expert) the `top` tokens it takes, among tokens seen at least `min_count`
    times in the layer, ranked by token_share then count. Columns: layer, expert_label, rank,
    token, count, token_share, expert_share (of the expert's picks)."""
    names = expert_labels(frame, labels)
    rows = _moe_rows(frame)
    text = rows["token"] if "token" in rows.columns else rows["token_id"].astype(str)
    picks = pd.DataFrame({"layer": rows["layer"], "token": text,
                          "experts": [sorted(set(e)) for e in rows["experts"]]}
                         ).explode("experts").dropna(subset=["experts"])
    picks["expert"] = picks["experts"].astype(int)
    seen = rows.groupby(["layer", text]).size().rename("occurrences")
    seen.index = seen.index.set_names(["layer", "token"])
    counts = picks.groupby(["layer", "expert", "token"]).size().rename("count").reset_index()
    counts = counts.merge(seen.reset_index(), on=["layer", "token"])
    counts = counts[counts["occurrences"] >= min_count]
    counts["token_share"] = counts["count"] / counts["occurrences"]
    picked = picks.groupby(["layer", "expert"]).size().rename("expert_picks").reset_index()
    counts = counts.merge(picked, on=["layer", "expert"])
    counts["expert_share"] = counts["count"] / counts["expert_picks"]
    counts = counts.sort_values(["layer", "expert", "token_share", "count"],
                                ascending=[True, True, False, False])
    counts["rank"] = counts.groupby(["layer", "expert"]).cumcount() + 1
    counts = counts[counts["rank"] <= top]
    counts.insert(2, "expert_label", [names[e] for e in counts["expert"]])
    return counts[["layer", "expert_label", "rank", "token", "count", "token_share",
                   "expert_share"]].reset_index(drop=True)


def load_figure(load: pd.DataFrame) -> go.Figure:
    """Heatmap of each expert's share of its tier's picks, layers down, experts across."""
    grid = load.pivot_table(index="layer", columns="expert", values="share", dropna=False)
    names = load.drop_duplicates("expert").set_index("expert")["expert_label"]
    fig = go.Figure(go.Heatmap(
        z=grid.to_numpy(), x=[names[e] for e in grid.columns], y=[str(i) for i in grid.index],
        colorscale="Blues", colorbar=dict(title="share of<br>tier picks"),
        hovertemplate="layer %{y}, expert %{x}<br>share %{z:.3f}<extra></extra>"))
    fig.update_layout(title="Expert load: share of its tier's picks", xaxis_title="expert",
                      yaxis_title="layer", template="plotly_white")
    return fig


def coactivation_figure(matrix: pd.DataFrame, layer: int) -> go.Figure:
    """Heatmap of a `coactivation(..., conditional=True)` matrix."""
    fig = go.Figure(go.Heatmap(
        z=matrix.to_numpy(), x=list(matrix.columns), y=list(matrix.index), colorscale="Reds",
        zmin=0, zmax=1, colorbar=dict(title="P(column | row)"),
        hovertemplate="P(%{x} picked | %{y} picked) = %{z:.3f}<extra></extra>"))
    fig.update_layout(title=f"Expert co-activation, layer {layer}", xaxis_title="expert",
                      yaxis_title="given expert", yaxis_autorange="reversed",
                      template="plotly_white")
    return fig


# Command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m analysis load`."""
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder")
    cli.add_data_arguments(parser)
    parser.add_argument("--epsilon", type=float, default=DEFAULT_EPSILON,
                        help=f"near-tie cut-off on expert_margin (default {DEFAULT_EPSILON})")
    parser.add_argument("--min-count", type=int, default=5,
                        help="tokens seen fewer times are left out of specialisation")
    cli.add_run_arguments(parser)


def run(args: argparse.Namespace) -> Path:
    """Trace the split and write the load report; returns the path of report.md."""
    ckpt = cli.open_checkpoint(args.checkpoint, args.device)
    task = cli.resolve_task(args.task, ckpt.config)
    dataset = cli.load_examples(task, args.split, args.data_dir, args.max_examples)
    tokens, _ = trace_dataset(ckpt.model, ckpt.tokenizer, task, dataset,
                              batch_size=args.batch_size, progress=not args.no_progress,
                              cache_dir=cli.cache_dir_for(args, ckpt.path))
    report = Report(args.out, f"Expert load: {ckpt.path.name} on {task}")
    report.text(f"Checkpoint `{ckpt.path}` (router `{ckpt.config.router}`), data "
                f"{cli.data_description(task, args.split, len(dataset), args.max_examples)}.")
    report.text(__doc__.split("\n\n", 1)[1])
    if ckpt.config.router == "dense":
        report.text("Router `dense`: one FFN per layer, recorded as a single expert; load, "
                    "co-activation and specialisation are trivial.")
    load = expert_load(tokens)
    summary = load_summary(load)
    dead = summary[summary["dead"] > 0]
    report.section("Load balance")
    dead_list = ", ".join(f"layer {r.layer}: {r.dead_experts}" for r in dead.itertuples())
    report.bullets([f"Dead experts: {dead_list}." if len(dead)
                    else "No dead experts: every expert got at least one token.",
                    f"Normalised entropy ranges {summary['entropy'].min():.3f}-"
                    f"{summary['entropy'].max():.3f} (1 = even), CV "
                    f"{summary['cv'].min():.3f}-{summary['cv'].max():.3f} (0 = even)."])
    report.table("load_summary", summary, "Per layer and tier")
    report.table("expert_load", load, "Per expert", max_rows=40)
    report.figure("expert_load", load_figure(load), "expert load heatmap")
    report.section("Router confidence and near ties")
    report.table("router_confidence", router_confidence(tokens, args.epsilon),
                 f"Near tie: expert_margin < {args.epsilon:g}")
    fragility.write_report(report, tokens, args.epsilon)
    report.section("Co-activation")
    report.text("P(column expert picked | row expert picked), per layer."
                + (" Top-k routing runs inside the chosen tier, so experts of different "
                   "tiers are never picked together." if ckpt.config.has_tiers else ""))
    for layer in sorted(tokens.loc[tokens["moe"], "layer"].unique()):
        matrix = coactivation(tokens, layer, conditional=True)
        counts = coactivation(tokens, layer)
        report.table(f"coactivation_layer{layer}", counts.reset_index(names="expert"),
                     f"Layer {layer}: tokens using both experts (diagonal: using the expert)")
        report.figure(f"coactivation_layer{layer}", coactivation_figure(matrix, layer),
                      f"co-activation, layer {layer}")
    report.section("Token specialisation")
    report.table("token_specialisation", token_specialisation(tokens, top=5,
                                                               min_count=args.min_count),
                 f"Top tokens per expert (tokens seen at least {args.min_count} times in the "
                 "layer), by the share of their occurrences the expert took", max_rows=40)
    return report.write()
