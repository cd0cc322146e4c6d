"""The DASG-MoE Routing Lab Streamlit app (DESIGN.md §6).

`streamlit run app/Home.py` starts it. Pages live in `app/views/` and stay thin: what they
show is computed by plain functions in this package (`figures`, `traces`, `comparison`,
`sweep`, `inputs`) that the tests call without Streamlit; `state` holds the cached loaders
and the session / URL state, the only Streamlit-aware helpers.
"""
