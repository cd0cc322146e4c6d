"""Thresholds: move theta_s / theta_d and watch the current text re-route, then sweep a grid
of thresholds on a labelled sample (GLUE validation or your own CSV/TSV).

The live part is an `st.fragment`: moving a slider re-runs only it, on the cached model.
The sweep is `analysis.sweep.sweep_thresholds`, one cached call per grid point
(`app.state.sweep_point`), so the progress bar advances per point and a repeated or
interrupted sweep resumes from the cache; its figures are the analysis report's.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from analysis.overrouting import recommend_thresholds
from analysis.sweep import (
    PAPER_DEFAULT,
    pareto_front,
    parse_grid,
    primary_metric,
    sweep_figure,
    sweep_heatmap,
    thresholds_apply,
)
from app import figures, inputs, state, traces
from app.comparison import routing_totals
from dasg_moe.data import get_task

PLOT_CONFIG = {"displaylogo": False,
               "toImageButtonOptions": {"format": "png", "scale": 2,
                                        "filename": "dasg-thresholds"}}
GRID_VALUES = [round(i / 20, 2) for i in range(21)]
ss = st.session_state


def apply_thresholds(theta_s: float, theta_d: float) -> None:
    state.put("theta_s", theta_s)
    state.put("theta_d", theta_d)


st.title("Thresholds")
state.show_url_errors()
choice, ckpt = state.require_checkpoint()
cfg = ckpt.config
st.caption(traces.checkpoint_caption(choice.name, cfg, ckpt.metrics))
if not thresholds_apply(ckpt.model):
    st.info(f"Router `{cfg.router}` does not route by the evaluator's score, so θs and θd "
            f"change nothing. Pick a DASG checkpoint in the sidebar.")
    state.write_url()
    st.stop()
try:
    pair_task = get_task(cfg.task).is_pair
except ValueError:
    pair_task = True
state.thresholds_for(ckpt)


@st.fragment
def live_rerouting() -> None:
    """The current text, re-routed whenever a slider moves (only this part re-runs)."""
    st.subheader("Live re-routing of the current text")
    c1, c2 = st.columns(2)
    c1.slider("θs: scores below go shallow", 0.0, 1.0, step=0.01, key=state.bind("theta_s"),
              on_change=state.sync, args=("theta_s",))
    c2.slider("θd: scores above go deep", 0.0, 1.0, step=0.01, key=state.bind("theta_d"),
              on_change=state.sync, args=("theta_d",))
    pair = ss.text_pair if pair_task and ss.text_pair.strip() else None
    st.caption(f"Text: “{ss.text[:200]}”" + (f" / “{pair[:200]}”" if pair else "")
               + " (edit it on the Inspect page).")
    try:
        inputs.check_text(ss.text)
        inputs.check_thresholds(ss.theta_s, ss.theta_d)
        result = choice.inspect(ss.text, pair, ss.theta_s, ss.theta_d)
        base = choice.inspect(ss.text, pair, None, None)
    except ValueError as err:
        st.error(str(err))
        state.write_url()
        return
    now, was = routing_totals(result), routing_totals(base)
    m1, m2, m3 = st.columns(3)
    m1.metric("Prediction", result.prediction, delta_color="off",
              delta=None if result.prediction == base.prediction else f"was {base.prediction}")
    rate_change = 100 * (now["deep_tier_rate"] - was["deep_tier_rate"])
    flops_change = now["flops_per_token"] / was["flops_per_token"] - 1
    m2.metric("Deep-tier rate", f"{now['deep_tier_rate']:.0%}", delta_color="off",
              delta=f"{rate_change:+.0f} points vs the checkpoint's θs/θd"
              if round(rate_change) else None)
    m3.metric("FFN FLOPs / token", traces.si(now["flops_per_token"]), delta_color="off",
              delta=f"{flops_change:+.1%}" if round(flops_change, 3) else None)
    st.plotly_chart(figures.tier_map_figure(result.frame, result.trace.router,
                                            selectable=False),
                    config=PLOT_CONFIG, key="live_tier_map")
    state.write_url()


live_rerouting()

# Sweep ------------------------------------------------------------------------------------
st.subheader("Sweep θs × θd on a labelled sample")
task = cfg.task
dataset, data_key = state.labelled_data(ckpt, "sweep")
c1, c2 = st.columns(2)
values_s = c1.multiselect("θs values", GRID_VALUES, default=[0.2, 0.3, 0.4], key="grid_s")
values_d = c2.multiselect("θd values", GRID_VALUES, default=[0.6, 0.7, 0.8], key="grid_d")
grid = []
try:
    grid = sorted({*parse_grid(f"{','.join(map(str, values_s))}:"
                               f"{','.join(map(str, values_d))}"), PAPER_DEFAULT})
except ValueError as err:
    st.error(f"{err}. Pick some θs values at or below some θd values.")
st.caption(f"{len(grid)} settings (pairs with θs ≤ θd, plus the paper's default "
           f"{PAPER_DEFAULT}); each runs the model once over the sample.")
if st.button("Run sweep", type="primary", disabled=dataset is None or not grid):
    ss.sweep_request = (data_key, tuple(grid))

request = ss.get("sweep_request")
if request and dataset is not None and request[0] == data_key:
    points = request[1]
    bar = st.progress(0.0, text="Sweeping…")
    rows = []
    for i, (theta_s, theta_d) in enumerate(points, start=1):
        rows.append(state.sweep_point(str(choice.path), choice.device, choice.stamp, task,
                                      data_key, theta_s, theta_d, dataset))
        bar.progress(i / len(points), text=f"θs={theta_s:.2f}, θd={theta_d:.2f} "
                                           f"({i}/{len(points)})")
    bar.empty()
    table = pd.DataFrame(rows)
    metric = primary_metric(task)
    table["paper_default"] = [(s, d) == PAPER_DEFAULT
                              for s, d in zip(table["theta_s"], table["theta_d"], strict=True)]
    table["pareto"] = pareto_front(table, metric)
    advice = recommend_thresholds(table, task)
    recommended = (advice["theta_s"], advice["theta_d"]) if advice["found"] else None
    if recommended:
        st.success(f"Recommended θs = {recommended[0]:g}, θd = {recommended[1]:g}: the largest "
                   f"cut of the over-routing rate ({100 * advice['overrouting_rate_change']:+.1f}"
                   f" points) losing at most {advice['tolerance']:g} {metric} against "
                   f"{PAPER_DEFAULT} ({advice['metric_change']:+.4f}); FLOPs per token "
                   f"{100 * advice['flops_change']:+.1f}%.")
        st.button("Use the recommended thresholds", on_click=apply_thresholds,
                  args=recommended)
    else:
        st.info(f"No recommendation: {advice['reason']}.")
    st.plotly_chart(sweep_figure(table, metric, recommended), config=PLOT_CONFIG,
                    key="sweep_pareto")
    value = st.radio("Over the grid", [metric, "deep_tier_rate", "flops_per_token",
                                       "overrouting_rate"], horizontal=True, key="sweep_value")
    st.plotly_chart(sweep_heatmap(table, value), config=PLOT_CONFIG, key="sweep_heatmap")
    st.dataframe(table, hide_index=True, width="stretch")
    st.download_button("Sweep table (CSV)", lambda: table.to_csv(index=False),
                       "dasg_sweep.csv", "text/csv", on_click="ignore", key="dl_sweep")
state.write_url()
