"""Compare checkpoints on the same data: do they route the same tokens the same way?

The first checkpoint (A) is the reference; every other one (B) is compared with it:

- alignment: a token of A is compared with the token of B that covers the same characters
  of the same sentence (checkpoints with different tokenizers are compared on the tokens
  they cut alike; the report gives the share matched);
- tier agreement per layer: share of aligned (token, layer) pairs with the same tier, and
  Cohen's kappa (agreement beyond what the two tier rates give by chance); NaN when either
  router has no tiers;
- expert-usage overlap: expert numbers are arbitrary, so expert i of A may play the part of
  expert j of B. Per layer we count M[i, j] = tokens for which A picked i and B picked j,
  find the one-to-one matching that maximises the matched counts
  (`scipy.optimize.linear_sum_assignment`, the Hungarian method), and report the share of
  A's picks whose matched B expert was picked for the same token, with the identity
  matching beside it (`overlap_identity`);
- metric differences: task metrics, deep-tier rate and FLOPs per token, minus A's, and the
  share of examples where the predictions agree;
- where they disagree most: per token, token kind, layer and example.

Layers are matched by index; only layers present in both are compared.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from scipy.optimize import linear_sum_assignment

from dasg_moe.evaluate import summarise

from . import cli
from .load import expert_labels
from .report import Report
from .tokens import annotate_tokens
from .traces import expert_set_key, trace_dataset

HELP = "tier agreement, matched expert overlap and metric differences between checkpoints"


def _alignment_keys(frame: pd.DataFrame) -> pd.DataFrame:
    """MoE rows with the columns that identify a token across tokenizers: example, layer,
    segment, character span, and for special tokens (whose span is empty) their rank."""
    rows = frame[frame["moe"]]
    special = rows["special"].astype(int)
    rank = special.groupby([rows["example"], rows["layer"]]).cumsum() - 1
    return rows.assign(special_rank=rank.where(rows["special"], -1))


def align(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """MoE rows of A and B that are the same token of the same example and layer.

    With character offsets in both frames (trace_dataset adds them) tokens are matched by
    (segment, start, end), so checkpoints with different tokenizers are compared on the
    tokens they cut the same way; without offsets, by position in examples whose token ids
    are identical. Columns: example, layer, position (A's), token_id, token, kind, special,
    tier_a, tier_b, experts_a, experts_b, expert_set_a, expert_set_b. `attrs` holds
    `coverage` (share of A's MoE rows matched) and `examples` (examples with a match)."""
    a = annotate_tokens(a) if "token" in a.columns else a.assign(kind="n/a", token=a["token_id"])
    by_span = "start" in a.columns and "start" in b.columns
    if by_span:
        keys = ["example", "layer", "segment", "start", "end", "special_rank"]
        left, right = _alignment_keys(a), _alignment_keys(b)
    else:
        keys = ["example", "layer", "position", "token_id"]
        left, right = a[a["moe"]], b[b["moe"]]
    left = left[[*keys, *(c for c in ("position", "token_id") if c not in keys), "token",
                 "kind", "special", "tier", "experts"]]
    merged = left.merge(right[[*keys, "tier", "experts"]], on=keys, suffixes=("_a", "_b"))
    if not by_span:  # an example counts only if every token matched
        full = merged.groupby("example").size() == left.groupby("example").size().reindex(
            merged["example"].unique())
        merged = merged[merged["example"].isin(full[full].index)]
    merged = merged.drop(columns=[c for c in ("segment", "start", "end", "special_rank")
                                  if c in merged.columns]).reset_index(drop=True)
    merged["expert_set_a"] = [expert_set_key(e) for e in merged["experts_a"]]
    merged["expert_set_b"] = [expert_set_key(e) for e in merged["experts_b"]]
    merged.attrs.update(coverage=len(merged) / len(left) if len(left) else float("nan"),
                        examples=int(merged["example"].nunique()),
                        matched_by="character span" if by_span else "token ids")
    return merged


def _kappa(x: pd.Series, y: pd.Series) -> float:
    """Cohen's kappa of two label series (NaN when chance agreement is 1)."""
    observed = float((x == y).mean())
    px, py = x.value_counts(normalize=True), y.value_counts(normalize=True)
    chance = float((px * py.reindex(px.index, fill_value=0)).sum())
    return (observed - chance) / (1 - chance) if chance < 1 else float("nan")


def tier_agreement(aligned: pd.DataFrame) -> pd.DataFrame:
    """Per layer and "all": decisions ((token, layer) rows), agreement, kappa, deep_rate_a,
    deep_rate_b (NaN without tiers on either side)."""
    tiered = aligned["tier_a"].isin(("shallow", "deep")) & aligned["tier_b"].isin(
        ("shallow", "deep"))
    rows = []
    groups = [(str(layer), part) for layer, part in aligned.groupby("layer", sort=True)]
    for name, part in [*groups, ("all", aligned)]:
        t = part[tiered.loc[part.index]]
        nan = float("nan")
        rows.append({"layer": name, "decisions": len(part),
                     "agreement": float((t["tier_a"] == t["tier_b"]).mean()) if len(t) else nan,
                     "kappa": _kappa(t["tier_a"], t["tier_b"]) if len(t) else nan,
                     "deep_rate_a": float((t["tier_a"] == "deep").mean()) if len(t) else nan,
                     "deep_rate_b": float((t["tier_b"] == "deep").mean()) if len(t) else nan})
    return pd.DataFrame(rows)


def coassignment(aligned: pd.DataFrame, layer: int, n_a: int, n_b: int) -> np.ndarray:
    """[n_a, n_b] counts: tokens of `layer` for which A picked expert i and B picked j."""
    part = aligned[aligned["layer"] == layer]
    one_a = np.zeros((len(part), n_a))
    one_b = np.zeros((len(part), n_b))
    for r, (ea, eb) in enumerate(zip(part["experts_a"], part["experts_b"], strict=True)):
        one_a[r, list(set(ea))] = 1.0
        one_b[r, list(set(eb))] = 1.0
    return one_a.T @ one_b


def expert_matching(aligned: pd.DataFrame, labels_a: list[str],
                    labels_b: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, matches). summary per layer: picks_a, overlap_identity, overlap_matched,
    same_set_identity (share of tokens with the very same expert indices). matches per
    layer and A expert: expert_a, expert_b (matched), coassigned, share_of_a (of A's picks
    of that expert)."""
    summary, matches = [], []
    for layer in sorted(aligned["layer"].unique()):
        M = coassignment(aligned, layer, len(labels_a), len(labels_b))
        part = aligned[aligned["layer"] == layer]
        picks_a = np.zeros(len(labels_a))
        for experts in part["experts_a"]:
            picks_a[list(set(experts))] += 1
        rows, cols = linear_sum_assignment(M, maximize=True)
        total = picks_a.sum()
        n = min(len(labels_a), len(labels_b))
        identity = float(np.trace(M[:n, :n]) / total) if total else float("nan")
        matched = float(M[rows, cols].sum() / total) if total else float("nan")
        summary.append({"layer": layer, "tokens": len(part), "picks_a": int(total),
                        "overlap_identity": identity, "overlap_matched": matched,
                        "same_set_identity": float(
                            (part["expert_set_a"] == part["expert_set_b"]).mean())})
        for i, j in zip(rows, cols, strict=True):
            matches.append({"layer": layer, "expert_a": labels_a[i], "expert_b": labels_b[j],
                            "coassigned": int(M[i, j]),
                            "share_of_a": float(M[i, j] / picks_a[i]) if picks_a[i]
                            else float("nan")})
    return pd.DataFrame(summary), pd.DataFrame(matches)


def metric_differences(examples: Mapping[str, pd.DataFrame], task: str) -> pd.DataFrame:
    """One row per checkpoint: task metrics, deep_tier_rate, flops_per_token, the change of
    each against the first checkpoint (`d_` columns) and prediction_agreement with it."""
    names = list(examples)
    reference = examples[names[0]].set_index("example")["prediction"]
    rows = []
    for name in names:
        frame = examples[name]
        stats = summarise(task, frame)
        mine = frame.set_index("example")["prediction"]
        common = reference.index.intersection(mine.index)
        rows.append({"checkpoint": name, **{k: v for k, v in stats.items()
                                            if k not in ("n_examples", "n_tokens")},
                     "prediction_agreement": float((reference[common] == mine[common]).mean())})
    table = pd.DataFrame(rows)
    for column in [c for c in table.columns if c not in ("checkpoint", "prediction_agreement")]:
        table[f"d_{column}"] = table[column] - table[column].iloc[0]
    return table


def disagreements(aligned: pd.DataFrame, by: str = "token", *, min_count: int = 5,
                  n: int | None = 20) -> pd.DataFrame:
    """Groups (token text, kind, layer or example) by how often A and B disagree: decisions,
    tier_disagreement (NaN without tiers), expert_disagreement (different expert index
    sets), sorted by tier, then expert disagreement. Groups under `min_count` rows are
    left out; `n` limits the rows."""
    tiered = aligned["tier_a"].isin(("shallow", "deep")) & aligned["tier_b"].isin(
        ("shallow", "deep"))
    parts = pd.DataFrame({
        by: aligned[by],
        "tier_diff": (aligned["tier_a"] != aligned["tier_b"]).astype(float).where(tiered),
        "expert_diff": (aligned["expert_set_a"] != aligned["expert_set_b"]).astype(float)})
    out = parts.groupby(by, observed=True).agg(
        decisions=("expert_diff", "size"), tier_disagreement=("tier_diff", "mean"),
        expert_disagreement=("expert_diff", "mean")).reset_index()
    out = out[out["decisions"] >= min_count]
    out = out.sort_values(["tier_disagreement", "expert_disagreement", "decisions"],
                          ascending=False, na_position="last")
    return (out.head(n) if n else out).reset_index(drop=True)


def agreement_figure(tiers: pd.DataFrame, experts: pd.DataFrame, name_b: str) -> go.Figure:
    """Per layer: tier agreement, matched expert overlap and identity overlap."""
    layers = tiers[tiers["layer"] != "all"]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=layers["layer"], y=layers["agreement"], name="same tier"))
    fig.add_trace(go.Bar(x=experts["layer"].astype(str), y=experts["overlap_matched"],
                         name="expert overlap (matched)"))
    fig.add_trace(go.Bar(x=experts["layer"].astype(str), y=experts["overlap_identity"],
                         name="expert overlap (same index)"))
    fig.update_layout(barmode="group", title=f"Routing agreement with {name_b}, per layer",
                      xaxis_title="layer", yaxis_title="share", yaxis_range=[0, 1],
                      template="plotly_white")
    return fig


def matching_figure(M: np.ndarray, labels_a: list[str], labels_b: list[str],
                    layer: int) -> go.Figure:
    """Heatmap of the co-assignment counts of one layer (rows: A's experts)."""
    fig = go.Figure(go.Heatmap(z=M, x=labels_b, y=labels_a, colorscale="Blues",
                               colorbar=dict(title="tokens"),
                               hovertemplate="A %{y} & B %{x}: %{z} tokens<extra></extra>"))
    fig.update_layout(title=f"Co-assignment of experts, layer {layer}",
                      xaxis_title="expert of B", yaxis_title="expert of A",
                      yaxis_autorange="reversed", template="plotly_white")
    return fig


# Command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m analysis compare`."""
    parser.add_argument("--checkpoints", nargs="+", required=True,
                        help="two or more checkpoint folders; the first is the reference")
    cli.add_data_arguments(parser)
    cli.add_run_arguments(parser)


def run(args: argparse.Namespace) -> Path:
    """Trace every checkpoint on the same examples, compare each with the first; returns the
    path of report.md."""
    if len(args.checkpoints) < 2:
        raise ValueError("compare needs at least two checkpoints")
    ckpts = [cli.open_checkpoint(path, args.device) for path in args.checkpoints]
    names = [c.path.name for c in ckpts]
    if len(set(names)) < len(names):
        names = [str(c.path) for c in ckpts]
    task = cli.resolve_task(args.task, ckpts[0].config)
    dataset = cli.load_examples(task, args.split, args.data_dir, args.max_examples)
    traces = {name: trace_dataset(c.model, c.tokenizer, task, dataset,
                                  batch_size=args.batch_size, progress=not args.no_progress,
                                  cache_dir=cli.cache_dir_for(args, c.path))
              for name, c in zip(names, ckpts, strict=True)}
    report = Report(args.out, f"Comparison on {task}: {', '.join(names)}")
    report.text(f"Data {cli.data_description(task, args.split, len(dataset), args.max_examples)}"
                f". Reference (A): `{names[0]}`. Routers: " + ", ".join(
                    f"`{n}` {c.config.router}" for n, c in zip(names, ckpts, strict=True)) + ".")
    report.text(__doc__.split("\n\n", 1)[1])
    report.section("Metrics")
    report.table("metrics", metric_differences({n: t[1] for n, t in traces.items()}, task),
                 "Differences (`d_`) are against the reference")
    tokens_a = traces[names[0]][0]
    labels_a = expert_labels(tokens_a)
    for index, name in enumerate(names[1:], start=1):
        tokens_b = traces[name][0]
        labels_b = expert_labels(tokens_b)
        aligned = align(tokens_a, tokens_b)
        report.section(f"{names[0]} (A) vs {name} (B)")
        report.text(f"Tokens matched by {aligned.attrs['matched_by']}: "
                    f"{100 * aligned.attrs['coverage']:.1f}% of A's (token, layer) rows have "
                    f"a counterpart in B, in {aligned.attrs['examples']} examples.")
        if aligned.empty:
            continue
        tiers = tier_agreement(aligned)
        experts, matches = expert_matching(aligned, labels_a, labels_b)
        if tiers["agreement"].isna().all():
            report.text("Tier agreement is n/a: at least one of the routers has no tiers.")
        report.table(f"tier_agreement_{index}", tiers, "Tier agreement per layer")
        report.table(f"expert_overlap_{index}", experts, "Expert-usage overlap per layer")
        report.table(f"expert_matching_{index}", matches,
                     "Best one-to-one matching of A's experts to B's", max_rows=40)
        report.figure(f"agreement_{index}", agreement_figure(tiers, experts, name),
                      "agreement per layer")
        last = int(aligned["layer"].max())
        report.figure(f"coassignment_{index}", matching_figure(
            coassignment(aligned, last, len(labels_a), len(labels_b)), labels_a, labels_b,
            last), f"co-assignment matrix of the last layer ({last})")
        for by, caption in (("layer", "per layer"), ("kind", "per token kind"),
                            ("token", "tokens (seen 5+ times) with the most disagreement"),
                            ("example", "examples with the most disagreement")):
            report.table(f"disagreement_by_{by}_{index}",
                         disagreements(aligned, by, min_count=1 if by in ("layer", "kind")
                                       else 5), f"Where they disagree: {caption}")
    return report.write()
