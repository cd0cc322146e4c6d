"""DASG-MoE Routing Lab: the app's entry point (`streamlit run app/Home.py`; DESIGN.md §6).

It sets the page up, declares the pages with `st.Page` + `st.navigation` (the pages are
files in `app/views/`), draws the sidebar every page shares (checkpoint and device) and
runs the selected page. Session values shared by the pages are seeded here from the URL
(`app.state.init_session`).
"""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run app/Home.py` puts app/ on sys.path, not the repository root that holds
# the `dasg_moe` and `app` packages.
ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import streamlit as st  # noqa: E402

from app import state  # noqa: E402

st.set_page_config(page_title="DASG-MoE Routing Lab", page_icon=":material/alt_route:",
                   layout="wide")

PAGES = [
    # The default page is served at "/" (Streamlit ignores its url_path).
    st.Page("views/inspect.py", title="Inspect", icon=":material/search:", default=True),
    st.Page("views/compare.py", title="Compare", icon=":material/compare_arrows:",
            url_path="compare"),
    st.Page("views/thresholds.py", title="Thresholds", icon=":material/tune:",
            url_path="thresholds"),
    st.Page("views/diagnostics.py", title="Diagnostics", icon=":material/troubleshoot:",
            url_path="diagnostics"),
]

page = st.navigation(PAGES, position="top")
state.configure_torch()
state.init_session()
state.sidebar()
page.run()
