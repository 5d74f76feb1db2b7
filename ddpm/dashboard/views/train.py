"""Train: compose a run from the packaged config groups, check it, launch ddpm-train."""

import time

import streamlit as st
from omegaconf import OmegaConf

from ddpm.dashboard import launch
from ddpm.dashboard.ui import outputs_root, render_run, show_error
from ddpm.errors import ConfigError


def fresh_name() -> None:
    st.session_state["run_name"] = time.strftime("run-%Y-%m-%d_%H-%M-%S")


root = outputs_root()
st.title("Train")
groups = {g: v for g, v in launch.train_groups().items() if len(v[1]) > 1 or v[0] is None}
start_from = launch.default_experiment()  # quickstart without CUDA
choices: dict[str, str | None] = {}
cols = st.columns(len(groups))
for col, (group, (default, options)) in zip(cols, groups.items(), strict=True):
    first = f"(default: {default})" if default else "(none)"
    index = 1 + options.index(start_from) if group == "experiment" and start_from in options else 0
    picked = col.selectbox(group, [first, *options], index=index, key=f"group-{group}")
    choices[group] = None if picked == first else picked
if start_from:
    st.caption(
        f"No CUDA on this machine: the form starts from experiment={start_from} (a short MNIST run sized for a CPU, "
        "it ends on train.time_budget_min); pick experiment (none) to compose a run from the groups alone."
    )
extra = st.text_input("Extra overrides", key="extra", placeholder="train.max_steps=200 schedule.T=500")
if "run_name" not in st.session_state:
    fresh_name()
c1, c2 = st.columns([6, 1], vertical_alignment="bottom")
name = c1.text_input("Run name (directory train/<name> under the outputs root)", key="run_name")
c2.button("New name", key="new-name", on_click=fresh_name, help="a fresh name from the current time, for the next run")

try:
    overrides = launch.build_overrides(choices, extra)
    cfg = launch.check_config(overrides)
except ConfigError as exc:
    show_error(exc)
    overrides, cfg = None, None
if cfg is not None:
    st.code(launch.command_line(root, name, overrides), language="bash", wrap_lines=True)
    with st.expander("composed config"):
        st.code(OmegaConf.to_yaml(cfg), language="yaml")
if st.button("Launch", type="primary", disabled=cfg is None, key="launch"):
    target = f"train/{name}"
    try:
        launch.launch(root, name, overrides)
    except launch.RunExists as exc:
        if launch.is_live(launch.run_path(root, name)):  # a second click while the first one's run starts
            st.info(f"{target} exists already: it was launched by the first click and is shown below (one run per name).")
            st.session_state["launched"] = st.session_state["run"] = target
        else:
            show_error(exc)
    except ConfigError as exc:
        show_error(exc)
    else:
        # The name stays in the field: it is the name the run got. "New name" gives the next one.
        st.session_state["launched"] = st.session_state["run"] = target
if "launched" in st.session_state:
    render_run(root, st.session_state["launched"])
