"""Runs: every training run under the outputs root."""

import streamlit as st

from ddpm.dashboard.runs import find_runs
from ddpm.dashboard.ui import display_path, outputs_root, render_run

root = outputs_root()
st.title("Runs")
if removed := st.session_state.pop("removed", None):
    st.success(removed)
runs = find_runs(root)
if not runs:
    st.info(f"No training runs under {display_path(root)} yet: start one on the Train page.")
    st.stop()
names = [r.name for r in runs]
event = st.dataframe(
    [
        {
            "run": r.name,
            "status": r.status,
            "progress": r.progress_short,
            "step": r.step,
            "img/s": round(r.images_per_s) if r.images_per_s else None,
            "checkpoints": r.checkpoint_count(),
        }
        for r in runs
    ],
    hide_index=True,
    key="runs-table",
    on_select="rerun",
    selection_mode="single-row",
)
rows = list(event.selection.rows)
if rows and rows != st.session_state.get("runs-table-seen") and rows[0] < len(names):
    st.session_state["run"] = names[rows[0]]  # a click on a row selects its run
    st.session_state.pop("run-pick", None)
st.session_state["runs-table-seen"] = rows
if st.session_state.get("run-pick") not in names:  # first view of the page, or that run went away
    st.session_state.pop("run-pick", None)
    picked = st.session_state.get("run")  # also set by the Train page's Launch
    st.session_state["run-pick"] = picked if picked in names else names[0]
choice = st.selectbox("Run", names, key="run-pick", help="or click a row of the table")
st.session_state["run"] = choice
render_run(root, choice)
