"""Diagnostics: the over-routing report of `analysis.overrouting` for a checkpoint and a
labelled sample, shown with its tables and figures (the same report as
`python -m analysis overrouting`; `app.report_view` adapts it to the page)."""

from __future__ import annotations

import streamlit as st

from analysis.overrouting import DEFAULT_SWEEP_GRID
from analysis.sweep import thresholds_apply
from app import inputs, state, traces

PLOT_CONFIG = {"displaylogo": False,
               "toImageButtonOptions": {"format": "png", "scale": 2,
                                        "filename": "dasg-diagnostics"}}
ss = st.session_state

st.title("Diagnostics: over-routing")
st.caption("Does the model spend deep-tier compute on tokens it scores as simple? The paper "
           "blames this for its MRPC result. The report traces every example of the sample, "
           "breaks the deep-tier rate down by complexity, token kind, layer and label, and "
           "recommends thresholds from a small sweep.")
state.show_url_errors()
choice, ckpt = state.require_checkpoint()
cfg = ckpt.config
st.caption(traces.checkpoint_caption(choice.name, cfg, ckpt.metrics))
theta_s, theta_d = state.thresholds_for(ckpt)

dataset, data_key = state.labelled_data(ckpt, "diag")
sweep = False
if thresholds_apply(ckpt.model):
    sweep = st.checkbox(f"Add a threshold sweep and a recommendation (grid "
                        f"{DEFAULT_SWEEP_GRID}: nine more passes over the sample)",
                        value=True, key="diag_sweep")
st.caption(f"Traced at the session's thresholds θs = {theta_s:.2f}, θd = {theta_d:.2f} (set "
           f"them on the Inspect or Thresholds page).")
try:
    inputs.check_thresholds(theta_s, theta_d)
except inputs.InputError as err:
    st.error(str(err))
    state.write_url()
    st.stop()
if st.button("Run the report", type="primary", disabled=dataset is None):
    ss.diag_request = (str(choice.path), data_key, theta_s, theta_d, sweep)

request = ss.get("diag_request")
if dataset is not None and request == (str(choice.path), data_key, theta_s, theta_d, sweep):
    with st.spinner(f"Tracing {len(dataset)} examples"
                    + (" and sweeping nine threshold pairs" if sweep else "") + "…"):
        try:
            report = state.overrouting_report(str(choice.path), choice.device, choice.stamp,
                                              cfg.task, data_key, theta_s, theta_d,
                                              DEFAULT_SWEEP_GRID if sweep else None, dataset)
        except ValueError as err:
            st.error(f"The report failed: {err}")
            st.stop()
    st.download_button("Report folder (.zip: report.md, CSV tables, HTML figures)",
                       report.archive, "overrouting_report.zip", "application/zip",
                       on_click="ignore", key="dl_report")
    for kind, *args in report.blocks:
        if kind == "section":
            st.subheader(args[0])
        elif kind == "text":
            st.markdown(args[0])
        elif kind == "bullets":
            st.markdown("\n".join(f"- {item}" for item in args[0]))
        elif kind == "table":
            name, frame, caption = args
            if caption:
                st.caption(caption)
            st.dataframe(frame, hide_index=True, width="stretch")
        elif kind == "figure":
            name, fig, caption = args
            st.plotly_chart(fig, config=PLOT_CONFIG, key=f"report_{name}")
state.write_url()
