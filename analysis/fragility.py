"""Routing fragility: decisions that a nudge would flip (the trace's margin columns).

Three margins, each "how far from changing its mind" a decision was:

- tier margin (`tier_margin` in the trace) = |score - nearest threshold|: how far the ADR
  score sits from theta_s or theta_d; a near tie means a small threshold move changes which
  rule (shallow / policy / deep) decides the token. Routers with tiers only.
- policy margin = |p_deep - 0.5| for in-band decisions: how sure the learned policy was.
  DASG only (NaN elsewhere).
- expert margin (`expert_margin`) = router probability of the weakest expert picked minus
  that of the strongest expert left out (smallest over sub-tokens): a near tie means the
  expert choice is a coin toss. NaN when every expert of the tier was picked.

A decision is a near tie when its margin is below `epsilon` (default 0.02). Fields that do
not apply to a router are NaN, and so are the rates computed from them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from . import cli
from .report import Report
from .traces import trace_dataset

HELP = "near-tie rates of tier, policy and expert decisions"
DEFAULT_EPSILON = 0.02
MARGINS = ("tier", "policy", "expert")


def margins(frame: pd.DataFrame) -> pd.DataFrame:
    """The three margins of every MoE row: columns tier, policy, expert (NaN where n/a)."""
    rows = frame[frame["moe"]]
    tiered = rows["tier"].isin(("shallow", "deep"))
    return pd.DataFrame({
        "tier": rows["tier_margin"].astype(float).where(tiered),
        "policy": (rows["p_deep"].astype(float) - 0.5).abs().where(rows["in_band"]),
        "expert": rows["expert_margin"].astype(float)}, index=rows.index)


def near_tie_table(frame: pd.DataFrame, epsilon: float = DEFAULT_EPSILON,
                   by: str | None = "layer") -> pd.DataFrame:
    """Near-tie rates per `by` (a column such as "layer" or "tier"; None: one row) plus an
    "all" row. For each margin m: `m_decisions` (rows where it applies), `m_near_tie_rate`
    (share below epsilon) and `m_median`."""
    rows = frame[frame["moe"]]
    m = margins(frame)

    def summary(index) -> dict:
        out = {}
        for name in MARGINS:
            values = m.loc[index, name].dropna()
            out[f"{name}_decisions"] = len(values)
            out[f"{name}_near_tie_rate"] = float((values < epsilon).mean()) if len(
                values) else float("nan")
            out[f"{name}_median"] = float(values.median()) if len(values) else float("nan")
        return out

    records = []
    if by is not None:
        for key, part in rows.groupby(by, sort=True):
            records.append({by: str(key), **summary(part.index)})
    records.append({**({by: "all"} if by else {}), **summary(rows.index)})
    return pd.DataFrame(records)


def fragile_tokens(frame: pd.DataFrame, kind: str = "expert", n: int = 20) -> pd.DataFrame:
    """The `n` decisions with the smallest `kind` margin ("tier", "policy" or "expert"): the
    routing choices most likely to flip."""
    if kind not in MARGINS:
        raise ValueError(f"kind must be one of {', '.join(MARGINS)}, got {kind!r}")
    m = margins(frame)[kind].dropna().nsmallest(n)
    columns = [c for c in ("example", "layer", "position", "token", "tier", "score",
                           "p_deep", "experts", "top_prob") if c in frame.columns]
    out = frame.loc[m.index, columns].copy()
    names = frame.attrs.get("expert_labels")
    if names and "experts" in out.columns:  # "D3, D1" reads better than "7, 5"
        out["experts"] = [[names[e] for e in experts] for experts in out["experts"]]
    out.insert(len(columns), f"{kind}_margin", m)
    return out.reset_index(drop=True)


def margin_figure(frame: pd.DataFrame, kind: str = "expert",
                  epsilon: float = DEFAULT_EPSILON) -> go.Figure:
    """Histogram of one margin per layer, with the near-tie cut-off `epsilon` marked."""
    if kind not in MARGINS:
        raise ValueError(f"kind must be one of {', '.join(MARGINS)}, got {kind!r}")
    m = margins(frame)[kind]
    layer = frame.loc[m.index, "layer"]
    fig = go.Figure()
    for value in sorted(layer.unique()):
        values = m[(layer == value)].dropna()
        if len(values):
            fig.add_trace(go.Histogram(x=values, name=f"layer {value}", opacity=0.6,
                                       xbins=dict(start=0, size=0.01)))
    fig.add_vline(x=epsilon, line_dash="dash", annotation_text=f"near tie < {epsilon:g}")
    titles = {"tier": "distance of the ADR score to the nearest threshold",
              "policy": "|P(deep) - 0.5| of in-band policy decisions",
              "expert": "probability gap: weakest expert picked vs strongest left out"}
    fig.update_layout(barmode="overlay", title=f"Routing margins: {titles[kind]}",
                      xaxis_title=f"{kind} margin", yaxis_title="decisions",
                      template="plotly_white")
    if not fig.data:
        fig.add_annotation(text=f"no {kind} margins for this router", showarrow=False,
                           x=0.5, y=0.5, xref="paper", yref="paper")
    return fig


# Command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m analysis fragility`."""
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder")
    cli.add_data_arguments(parser)
    parser.add_argument("--epsilon", type=float, default=DEFAULT_EPSILON,
                        help=f"near-tie cut-off for every margin (default {DEFAULT_EPSILON})")
    cli.add_run_arguments(parser)


def write_report(report: Report, tokens: pd.DataFrame, epsilon: float) -> None:
    """The fragility tables and figures (also used by the `load` report)."""
    table = near_tie_table(tokens, epsilon)
    report.table("near_ties", table, f"Near-tie rates (margin < {epsilon:g}) per layer")
    missing = [name for name in MARGINS if table[f"{name}_decisions"].iloc[-1] == 0]
    if missing:
        report.text(f"Margins that do not apply to this router (n/a): {', '.join(missing)}.")
    for name in MARGINS:
        if name not in missing:
            report.figure(f"margins_{name}", margin_figure(tokens, name, epsilon),
                          f"{name} margins per layer")
    report.table("fragile_expert_choices", fragile_tokens(tokens, "expert"),
                 "Expert choices closest to a tie")
    if "tier" not in missing:
        report.table("fragile_tier_choices", fragile_tokens(tokens, "tier"),
                     "Tier choices closest to a threshold")


def run(args: argparse.Namespace) -> Path:
    """Trace the split and write the near-tie report; returns the path of report.md."""
    ckpt = cli.open_checkpoint(args.checkpoint, args.device)
    task = cli.resolve_task(args.task, ckpt.config)
    dataset = cli.load_examples(task, args.split, args.data_dir, args.max_examples)
    tokens, _ = trace_dataset(ckpt.model, ckpt.tokenizer, task, dataset,
                              batch_size=args.batch_size, progress=not args.no_progress,
                              cache_dir=cli.cache_dir_for(args, ckpt.path))
    report = Report(args.out, f"Routing fragility: {ckpt.path.name} on {task}")
    report.text(f"Checkpoint `{ckpt.path}` (router `{ckpt.config.router}`), data "
                f"{cli.data_description(task, args.split, len(dataset), args.max_examples)}.")
    report.text(__doc__.split("\n\n", 1)[1])
    write_report(report, tokens, args.epsilon)
    return report.write()

