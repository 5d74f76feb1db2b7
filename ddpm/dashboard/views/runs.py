"""Runs: every training run under the outputs root."""

import streamlit as st

from ddpm.dashboard.runs import find_runs
from ddpm.dashboard.ui import outputs_root, render_run

root = outputs_root()
st.title("Runs")
runs = find_runs(root)
if not runs:
    st.info(f"No training runs under {root} yet: start one on the Train page.")
    st.stop()
st.dataframe(
    [{"run": r.name, "status": r.status, "step": r.step, "max steps": r.max_steps, "checkpoints": len(r.checkpoints)} for r in runs],
    hide_index=True,
)
names = [r.name for r in runs]
picked = st.session_state.get("run")
choice = st.selectbox("Run", names, index=names.index(picked) if picked in names else 0)
st.session_state["run"] = choice
render_run(root, choice)
