"""Threshold sweep: theta_s / theta_d grid -> accuracy, F1, deep-tier rate, FLOPs, Pareto front.

DESIGN.md §2.3 asks that both thresholds can be changed at inference without retraining; this
measures what each setting costs and buys on a dataset split. Every pair is one batched
forward pass over the split (`traces.predict_routing`, the same batches and totals as
`dasg_moe.evaluate.predict`), summarised with `dasg_moe.evaluate.summarise`, plus the
over-routing measures of `overrouting.py`:

- overrouting_index = deep-tier decisions on simple tokens / all deep-tier decisions;
- overrouting_rate  = deep-tier decisions on simple tokens / all tier decisions;
- simple_deep_rate  = deep-tier decisions on simple tokens / tier decisions on simple tokens;

where "simple" means complexity C < `simple_below`, fixed for the whole sweep (the
checkpoint's own theta_s by default) so that settings are compared on one definition.

Grid syntax (`parse_grid`): `"S1,S2,...:D1,D2,..."`, theta_s values before the colon,
theta_d values after; every pair with theta_s <= theta_d is swept. The paper's default
(0.3, 0.7) is always added and marked. Each pair is cached per checkpoint, split and pair,
so an interrupted sweep resumes and a wider grid reuses the pairs already measured.

Pareto front: a pair is on it when no other pair has a primary metric at least as high and
FLOPs per token at most as low, one of them strictly.

Routers without tiers (and `random`, whose tier is a coin toss) ignore the thresholds: the
sweep then measures one point and says so.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from dasg_moe.data import get_task
from dasg_moe.evaluate import summarise
from dasg_moe.model import DasgMoEModel
from dasg_moe.routers import RoutingOverrides

from . import cli
from .cache import dataset_fingerprint, read_parquet, threshold_tag, write_parquet
from .report import Report
from .traces import predict_routing

PAPER_DEFAULT = (0.3, 0.7)
DEFAULT_GRID = "0.1,0.2,0.3,0.4,0.5:0.5,0.6,0.7,0.8,0.9"
HELP = "theta_s/theta_d grid: accuracy, F1, deep-tier rate, FLOPs; Pareto front"


def parse_grid(spec: str) -> list[tuple[float, float]]:
    """`"0.1,0.3:0.7,0.9"` -> [(0.1, 0.7), (0.1, 0.9), (0.3, 0.7), (0.3, 0.9)].

    Pairs with theta_s > theta_d are dropped; values must lie in [0, 1]."""
    if spec.count(":") != 1:
        raise ValueError(f"grid {spec!r}: expected 'S1,S2,...:D1,D2,...' (theta_s values, "
                         "a colon, theta_d values)")

    def values(part: str, name: str) -> list[float]:
        try:
            out = sorted({round(float(v), 6) for v in part.split(",") if v.strip()})
        except ValueError:
            raise ValueError(f"grid {spec!r}: {name} values must be numbers") from None
        if not out:
            raise ValueError(f"grid {spec!r}: no {name} values")
        if any(not 0.0 <= v <= 1.0 for v in out):
            raise ValueError(f"grid {spec!r}: {name} values must lie in [0, 1]")
        return out

    left, right = spec.split(":")
    pairs = [(s, d) for s in values(left, "theta_s") for d in values(right, "theta_d")
             if s <= d]
    if not pairs:
        raise ValueError(f"grid {spec!r}: no pair with theta_s <= theta_d")
    return pairs


def primary_metric(task: str) -> str:
    """The metric a recommendation optimises: F1 where the task reports it, else its first."""
    metrics = get_task(task).metrics
    return "f1" if "f1" in metrics else metrics[0]


def thresholds_apply(model: DasgMoEModel) -> bool:
    """True when theta_s / theta_d change the routing (DASG tiers, not random routing)."""
    return model.config.router == "dasg"


def summarise_pair(task: str, frame: pd.DataFrame) -> dict:
    """`summarise` of a `predict_routing` frame plus the three over-routing measures."""
    total = frame[["overrouted_decisions", "simple_decisions", "deep_decisions",
                   "tier_decisions"]].sum()
    ratio = lambda a, b: float(a / b) if b else float("nan")  # noqa: E731
    return {**summarise(task, frame),
            "overrouting_index": ratio(total.overrouted_decisions, total.deep_decisions),
            "overrouting_rate": ratio(total.overrouted_decisions, total.tier_decisions),
            "simple_deep_rate": ratio(total.overrouted_decisions, total.simple_decisions)}


def sweep_thresholds(model: DasgMoEModel, tokenizer: Tokenizer, task: str, dataset,
                     pairs: Sequence[tuple[float, float]], *, simple_below: float | None = None,
                     batch_size: int = 32, progress: bool = True,
                     cache_dir: str | Path | None = None,
                     precomputed: dict[tuple[float, float], pd.DataFrame] | None = None
                     ) -> pd.DataFrame:
    """One row per threshold pair: theta_s, theta_d, the task metrics, deep_tier_rate,
    mean_experts_per_token, flops_per_token, the over-routing measures, n_examples, n_tokens,
    `paper_default` and `pareto` (bool). Sorted by theta_s, theta_d.

    `simple_below` defaults to the checkpoint's theta_s. `cache_dir` is the checkpoint's
    cache folder; each pair's per-example frame is stored there. `precomputed` maps a pair
    to a `predict_routing` frame already at hand (`traces.routing_frame_from_trace`), which
    is used (and cached) instead of running that pair."""
    spec = get_task(task)
    simple_below = model.config.theta_s if simple_below is None else simple_below
    pairs = sorted(set(pairs))
    for theta_s, theta_d in pairs:  # validate all before running any
        RoutingOverrides(theta_s, theta_d).thresholds(model.config)
    folder = None
    if cache_dir is not None:
        data = dataset_fingerprint(dataset, [*spec.text_columns, "label"])
        folder = Path(cache_dir) / f"sweep-{spec.name}-{data}-simple{simple_below:.3f}"
    rows = []
    for theta_s, theta_d in tqdm(pairs, desc=f"sweep {task}", unit="pair",
                                 disable=not progress or len(pairs) == 1):
        file = folder / f"{threshold_tag(theta_s, theta_d)}.parquet" if folder else None
        frame = _read_cached(file)  # a resumed sweep skips the pairs already measured
        if frame is None and precomputed and (theta_s, theta_d) in precomputed:
            frame = precomputed[(theta_s, theta_d)]
            if file is not None:
                write_parquet(frame, file)
        elif frame is None:
            frame = predict_routing(model, tokenizer, task, dataset,
                                    overrides=RoutingOverrides(theta_s, theta_d),
                                    simple_below=simple_below, batch_size=batch_size,
                                    progress=progress, desc=f"theta=({theta_s}, {theta_d})")
            if file is not None:
                write_parquet(frame, file)
        rows.append({"theta_s": theta_s, "theta_d": theta_d, **summarise_pair(task, frame)})
    table = pd.DataFrame(rows)
    table["paper_default"] = [(s, d) == PAPER_DEFAULT for s, d in zip(
        table["theta_s"], table["theta_d"], strict=True)]
    table["pareto"] = pareto_front(table, primary_metric(task))
    return table


def _read_cached(file: Path | None) -> pd.DataFrame | None:
    """A pair's cached per-example frame, or None when there is none. Files are written
    atomically (`cache.write_parquet`), so an interrupted sweep leaves whole files only; one
    that still cannot be read (damaged or truncated by a copy) is measured again and
    replaced rather than failing the whole sweep."""
    if file is None or not file.is_file():
        return None
    try:
        return read_parquet(file)
    except (OSError, ValueError):  # pyarrow's ArrowInvalid is a ValueError
        return None


def pareto_front(frame: pd.DataFrame, maximise: str,
                 minimise: str = "flops_per_token") -> pd.Series:
    """True for rows no other row dominates (>= on `maximise`, <= on `minimise`, one of them
    strictly). Rows with NaN in either column are never on the front."""
    values = frame[[maximise, minimise]].to_numpy(float)
    on_front = []
    for i, (gain, cost) in enumerate(values):
        if math.isnan(gain) or math.isnan(cost):
            on_front.append(False)
            continue
        dominated = any(g >= gain and c <= cost and (g > gain or c < cost)
                        for j, (g, c) in enumerate(values) if j != i)
        on_front.append(not dominated)
    return pd.Series(on_front, index=frame.index)


def sweep_figure(table: pd.DataFrame, metric: str,
                 recommended: tuple[float, float] | None = None) -> go.Figure:
    """Metric against FLOPs per token, one point per pair (colour: deep-tier rate), the
    Pareto front as a line, the paper's default as a star, a recommendation as a diamond."""
    hover = [f"theta_s={s:g}, theta_d={d:g}<br>{metric}={m:.4f}<br>FLOPs/token={f:,.0f}"
             f"<br>deep-tier rate={r:.3f}<br>over-routing rate={o:.3f}"
             for s, d, m, f, r, o in zip(table["theta_s"], table["theta_d"], table[metric],
                                         table["flops_per_token"], table["deep_tier_rate"],
                                         table["overrouting_rate"], strict=True)]
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=table["flops_per_token"], y=table[metric], mode="markers", name="threshold pair",
        text=hover, hoverinfo="text",
        marker=dict(size=11, color=table["deep_tier_rate"], colorscale="Viridis",
                    colorbar=dict(title="deep-tier<br>rate"), line=dict(width=1))))
    front = table[table["pareto"]].sort_values("flops_per_token")
    fig.add_trace(go.Scatter(x=front["flops_per_token"], y=front[metric], mode="lines",
                             name="Pareto front", line=dict(dash="dash", color="black"),
                             hoverinfo="skip"))
    marks = [(PAPER_DEFAULT, "paper default (0.3, 0.7)", "star", "red")]
    if recommended is not None:
        marks.append((recommended, f"recommended {recommended}", "diamond-open", "orange"))
    for (s, d), name, symbol, colour in marks:
        row = table[(table["theta_s"] == s) & (table["theta_d"] == d)]
        if not row.empty:
            fig.add_trace(go.Scatter(x=row["flops_per_token"], y=row[metric], mode="markers",
                                     name=name, hoverinfo="skip",
                                     marker=dict(symbol=symbol, size=20, color=colour,
                                                 line=dict(width=2, color=colour))))
    fig.update_layout(title=f"Threshold sweep: {metric} against compute",
                      xaxis_title="FFN FLOPs per token (all layers)", yaxis_title=metric,
                      legend=dict(orientation="h", y=-0.2), template="plotly_white")
    return fig


def sweep_heatmap(table: pd.DataFrame, value: str) -> go.Figure:
    """`value` over the (theta_s, theta_d) grid; empty cells are pairs with theta_s > theta_d."""
    grid = table.pivot_table(index="theta_s", columns="theta_d", values=value)
    fig = go.Figure(go.Heatmap(
        z=grid.to_numpy(), x=[f"{d:g}" for d in grid.columns], y=[f"{s:g}" for s in grid.index],
        colorscale="Viridis", colorbar=dict(title=value),
        hovertemplate="theta_s=%{y}, theta_d=%{x}<br>" + value + "=%{z:.4f}<extra></extra>"))
    fig.update_layout(title=f"{value} over the threshold grid", xaxis_title="theta_d",
                      yaxis_title="theta_s", template="plotly_white")
    return fig


# Command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m analysis sweep`."""
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder")
    cli.add_data_arguments(parser)
    parser.add_argument("--grid", default=DEFAULT_GRID,
                        help=f"'S1,S2,...:D1,D2,...' theta_s values : theta_d values; pairs "
                             f"with theta_s <= theta_d (default {DEFAULT_GRID})")
    parser.add_argument("--simple-below", type=float,
                        help="complexity below which a token counts as simple (default: the "
                             "checkpoint's theta_s)")
    cli.add_run_arguments(parser)


def run(args: argparse.Namespace) -> Path:
    """Sweep the grid (plus the paper's default) and write the report; returns the path
    of report.md."""
    pairs = parse_grid(args.grid)  # a typo in the grid should fail before any loading
    ckpt = cli.open_checkpoint(args.checkpoint, args.device)
    task = cli.resolve_task(args.task, ckpt.config)
    dataset = cli.load_examples(task, args.split, args.data_dir, args.max_examples)
    notes = []
    if thresholds_apply(ckpt.model):
        pairs = sorted({*pairs, PAPER_DEFAULT, (ckpt.config.theta_s, ckpt.config.theta_d)})
    else:
        pairs = [(ckpt.config.theta_s, ckpt.config.theta_d)]
        why = "its tier is a coin toss" if ckpt.config.router == "random" else "no tiers"
        notes.append(f"Router `{ckpt.config.router}` ignores theta_s / theta_d ({why}), so "
                     "the sweep has one point.")
    table = sweep_thresholds(ckpt.model, ckpt.tokenizer, task, dataset, pairs,
                             simple_below=args.simple_below, batch_size=args.batch_size,
                             progress=not args.no_progress,
                             cache_dir=cli.cache_dir_for(args, ckpt.path))
    metric = primary_metric(task)
    report = Report(args.out, f"Threshold sweep: {ckpt.path.name} on {task}")
    report.text(f"Checkpoint `{ckpt.path}` (router `{ckpt.config.router}`), data "
                f"{cli.data_description(task, args.split, len(dataset), args.max_examples)}; "
                f"primary metric `{metric}`.")
    report.bullets(notes)
    write_sweep_sections(report, table, task, ckpt.config.theta_s if args.simple_below is None
                         else args.simple_below)
    return report.write()


def write_sweep_sections(report: Report, table: pd.DataFrame, task: str, simple_below: float,
                         recommended: tuple[float, float] | None = None) -> None:
    """The sweep's tables and figures, also used inside the over-routing report."""
    metric = primary_metric(task)
    metrics = list(get_task(task).metrics)
    columns = ["theta_s", "theta_d", *metrics, "deep_tier_rate", "flops_per_token",
               "overrouting_index", "overrouting_rate", "pareto", "paper_default"]
    report.section("Threshold sweep")
    best = table.loc[table[metric].idxmax()] if table[metric].notna().any() else None
    lines = [f"{len(table)} threshold pair(s); \"simple\" = complexity C < {simple_below:g} "
             "for every pair."]
    default = table[table["paper_default"]]
    if not default.empty:
        d = default.iloc[0]
        lines.append(f"Paper default (0.3, 0.7): {metric} {d[metric]:.4f}, deep-tier rate "
                     f"{d['deep_tier_rate']:.3f}, {d['flops_per_token']:,.0f} FLOPs/token.")
    if best is not None:
        lines.append(f"Highest {metric}: {best[metric]:.4f} at ({best['theta_s']:g}, "
                     f"{best['theta_d']:g}), {best['flops_per_token']:,.0f} FLOPs/token.")
    report.bullets(lines)
    report.table("sweep", table[columns], "All threshold pairs", max_rows=30)
    report.table("pareto_front", table.loc[table["pareto"], columns].sort_values(
        "flops_per_token"), "Pareto front (maximise the metric, minimise FLOPs per token)")
    report.figure("sweep_pareto", sweep_figure(table, metric, recommended),
                  f"{metric} against FLOPs per token, Pareto front and paper default")
    if table["theta_s"].nunique() > 1 or table["theta_d"].nunique() > 1:
        report.figure("sweep_heatmap_metric", sweep_heatmap(table, metric),
                      f"{metric} over the grid")
        report.figure("sweep_heatmap_deep_rate", sweep_heatmap(table, "deep_tier_rate"),
                      "deep-tier rate over the grid")
