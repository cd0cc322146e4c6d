"""Compare: the same text through two or more checkpoints, side by side.

Each checkpoint runs with its own thresholds. The alignment of tokens and layers, the
agreement table and the written summary come from `app.comparison`.
"""

from __future__ import annotations

import streamlit as st

from app import comparison, figures, inputs, state
from dasg_moe.checkpoint import CheckpointError
from dasg_moe.data import get_task

PLOT_CONFIG = {"displaylogo": False,
               "toImageButtonOptions": {"format": "png", "scale": 2, "filename": "dasg-compare"}}
ss = st.session_state

st.title("Compare checkpoints")
st.caption("One text through several checkpoints, each with its own thresholds. A is the "
           "first checkpoint; the others are compared with it.")
state.show_url_errors()

choices: dict[str, state.Selected] = {}
for name in inputs.list_checkpoints():
    choices[name] = state.selected(name)
if ss.checkpoint == state.OWN:
    try:
        own = state.selected()
        choices[f"yours: {own.name}"] = own
    except inputs.InputError:
        pass  # nothing loaded in the sidebar yet
if ss.compare is None:
    ss.compare = comparison.default_pair(list(choices), ss.checkpoint,
                                         {n: c.path for n, c in choices.items()})
ss.compare = [n for n in ss.compare if n in choices]
chosen = st.multiselect("Checkpoints (two or more; the first is A)", list(choices),
                        key=state.bind("compare"), on_change=state.sync, args=("compare",))
left, right = st.columns(2)
left.text_area("Sentence 1", key=state.bind("text"), on_change=state.sync, args=("text",),
               height=80, max_chars=5000)
right.text_area("Sentence 2 (optional; used by sentence-pair checkpoints)",
                key=state.bind("text_pair"), on_change=state.sync, args=("text_pair",),
                height=80, max_chars=5000)

try:
    if len(chosen) < 2:
        raise inputs.InputError(f"Pick at least two checkpoints to compare "
                                f"({len(choices)} available).")
    inputs.check_text(ss.text, "Sentence 1")
except inputs.InputError as err:
    st.error(str(err))
    state.write_url(vs=",".join(chosen))
    st.stop()

results = {}
for name in chosen:
    choice = choices[name]
    try:
        ckpt = choice.load()
        try:
            pair = get_task(ckpt.config.task).is_pair
        except ValueError:
            pair = True
        results[name] = choice.inspect(ss.text, ss.text_pair if pair else None, None, None)
    except (CheckpointError, ValueError) as err:
        st.error(f"{name}: {err}")
if len(results) < 2:
    st.stop()
names = list(results)

st.subheader("Where they differ")
st.markdown("\n".join(f"- {line}" for line in comparison.describe(results)))
overview = comparison.summary_table(results)
st.dataframe(overview, hide_index=True, width="stretch", column_config={
    "probability": st.column_config.NumberColumn(format="%.3f"),
    "deep_tier_rate": st.column_config.NumberColumn("deep-tier rate", format="percent"),
    "experts_per_token": st.column_config.NumberColumn("experts / token", format="%.2f"),
    "flops_per_token": st.column_config.NumberColumn("FLOPs / token", format="localized")})

name_a = names[0]
name_b = names[1] if len(names) == 2 else st.selectbox("Compare A with", names[1:],
                                                        key="compare_b")
table = comparison.agreement(results[name_a], results[name_b])
if (table["kind"] == "not comparable").all():
    st.info(f"No tier agreement map: `{name_a}` ({results[name_a].trace.router}) and "
            f"`{name_b}` ({results[name_b].trace.router}) are not both tiered routers.")
else:
    st.plotly_chart(figures.agreement_figure(table, name_a, name_b), config=PLOT_CONFIG,
                    key="agreement")

c1, c2 = st.columns(2)
with c1:
    usage = comparison.expert_usage(results)
    layers = sorted(usage["layer"].unique().tolist())
    if layers:
        layer = st.radio("Layer", layers, horizontal=True, key="compare_layer",
                         format_func=lambda i: f"layer {i}")
        st.plotly_chart(figures.expert_usage_figure(usage, layer), config=PLOT_CONFIG,
                        key="usage")
with c2:
    metrics = [m for m in ("score", "importance", "complexity")
               if table[f"{m}_a"].notna().any() and table[f"{m}_b"].notna().any()]
    metric = st.radio("Scatter of", metrics, horizontal=True, key="compare_metric")
    st.plotly_chart(figures.score_scatter_figure(table, name_a, name_b, metric),
                    config=PLOT_CONFIG, key="scatter")

st.download_button("Agreement table (CSV)", lambda: table.to_csv(index=False),
                   "dasg_compare.csv", "text/csv", on_click="ignore", key="dl_compare")
state.write_url(vs=",".join(chosen))
