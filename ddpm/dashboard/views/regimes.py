"""Regimes: ddpm-regimes results (t_S and t_C against theory) and their plots."""

import streamlit as st

from ddpm.dashboard.paths import inside
from ddpm.dashboard.runs import results
from ddpm.dashboard.ui import outputs_root

root = outputs_root()
st.title("Regimes")
found = results(root, "regimes.json")
if not found:
    st.info(f"No ddpm-regimes runs under {root} yet (they write regimes.json and plots).")
    st.stop()
st.dataframe([{"run": name} | scalars for name, scalars in found], hide_index=True)
for name, _ in found:
    folder = inside(root, name)
    plots = sorted(p for p in folder.glob("*.png") if p.is_file() and not p.is_symlink())
    if plots:
        st.subheader(name)
        cols = st.columns(min(len(plots), 3))
        for i, plot in enumerate(plots):
            cols[i % len(cols)].image(str(plot), caption=plot.name)
