"""The DASG-MoE Routing Lab Streamlit app (DESIGN.md §6).

`streamlit run app/Home.py` starts it. Pages live in `app/views/` and stay thin: what they
show is computed by plain functions that the tests call without Streamlit: `figures`
(Plotly builders), `traces` (views of one routing trace), `comparison` (one text through
several checkpoints), `inputs` (checkpoint discovery, uploads, URL values, all checked),
`report_view` (the `analysis` reports as page blocks) and `launch` (start the app for the
browser test and the latency benchmark). `state` holds the cached loaders and the session
and URL state, the only Streamlit-aware helpers. Dataset-level work (threshold sweeps, the
over-routing report, margins) comes from the `analysis` package.
"""
