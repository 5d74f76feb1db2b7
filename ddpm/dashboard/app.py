"""The ``ddpm-dashboard`` Streamlit app: one page per view in ``views/``."""

from pathlib import Path

import streamlit as st

from ddpm.dashboard.ui import display_path, outputs_root

VIEWS = Path(__file__).with_name("views")

st.set_page_config(page_title="ddpm dashboard", layout="wide")
st.sidebar.caption(f"outputs root: {display_path(outputs_root())}")
pages = [
    st.Page(str(VIEWS / "runs.py"), title="Runs", default=True),
    st.Page(str(VIEWS / "train.py"), title="Train"),
    st.Page(str(VIEWS / "sample.py"), title="Sample"),
    st.Page(str(VIEWS / "evaluate.py"), title="Evaluate"),
    st.Page(str(VIEWS / "regimes.py"), title="Regimes"),
]
st.navigation(pages).run()
