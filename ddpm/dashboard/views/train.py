"""Train: compose a run from the packaged config groups, check it, launch ddpm-train."""

import time

import streamlit as st
from omegaconf import OmegaConf

from ddpm.dashboard import launch
from ddpm.dashboard.ui import outputs_root, render_run, show_error
from ddpm.errors import ConfigError

root = outputs_root()
st.title("Train")
groups = {g: v for g, v in launch.train_groups().items() if len(v[1]) > 1 or v[0] is None}
choices: dict[str, str | None] = {}
cols = st.columns(len(groups))
for col, (group, (default, options)) in zip(cols, groups.items(), strict=True):
    first = f"(default: {default})" if default else "(none)"
    picked = col.selectbox(group, [first, *options], key=f"group-{group}")
    choices[group] = None if picked == first else picked
extra = st.text_input("Extra overrides", key="extra", placeholder="train.max_steps=200 schedule.T=500")
if "run_name" not in st.session_state:
    st.session_state["run_name"] = time.strftime("run-%Y-%m-%d_%H-%M-%S")
name = st.text_input("Run name (directory train/<name> under the outputs root)", key="run_name")

try:
    overrides = launch.build_overrides(choices, extra)
    cfg = launch.check_config(overrides)
except ConfigError as exc:
    show_error(exc)
    overrides, cfg = None, None
if cfg is not None:
    st.caption("ddpm-train " + " ".join(overrides))
    with st.expander("composed config"):
        st.code(OmegaConf.to_yaml(cfg), language="yaml")
if st.button("Launch", type="primary", disabled=cfg is None):
    try:
        launch.launch(root, name, overrides)
        st.session_state["launched"] = f"train/{name}"
        st.session_state["run"] = f"train/{name}"
        del st.session_state["run_name"]  # a fresh default name for the next run
    except ConfigError as exc:
        show_error(exc)
if "launched" in st.session_state:
    render_run(root, st.session_state["launched"])
