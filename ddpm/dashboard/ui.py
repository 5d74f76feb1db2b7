"""Streamlit pieces shared by the pages: the outputs root and the view of one run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import streamlit as st
import yaml

from ddpm.dashboard import launch
from ddpm.dashboard.runs import LAUNCH_LOG, loss_curve, read_config, run_info, tail
from ddpm.errors import ConfigError

REFRESH_S = 2.0  # how often a live run's view re-reads its files


def outputs_root() -> Path:
    """The outputs root: ``--outputs`` after ``--`` on the ``streamlit run`` line (``ddpm-dashboard``
    passes it), kept in the session; ``outputs`` when absent."""
    if "outputs_root" not in st.session_state:
        p = argparse.ArgumentParser(add_help=False)
        p.add_argument("--outputs", type=Path, default=Path("outputs"))
        args, _ = p.parse_known_args(sys.argv[1:])
        st.session_state["outputs_root"] = str(args.outputs.expanduser().resolve())
    return Path(st.session_state["outputs_root"])


def show_error(exc: Exception) -> None:
    """A user error as the CLI prints it: one line."""
    st.error(f"error: {exc}")


def render_run(root: Path, name: str) -> None:
    """Stop/Resume, status, progress, loss curve, latest grid and checkpoints of one run; re-read
    every :data:`REFRESH_S` seconds while it trains.

    The buttons belong to the whole page, not to the refreshing part: a click then reruns the page
    (a click on a button inside the fragment can be lost while the page itself reruns)."""
    try:
        run = run_info(root, name)
    except ConfigError as exc:
        show_error(exc)
        return
    live = launch.is_live(run.path)
    b1, _ = st.columns([1, 5])
    if live and b1.button("Stop training", key=f"stop-{name}", help="SIGTERM: the run finishes its step and writes a checkpoint"):
        launch.stop(root, name, wait_s=0.5)
        st.info("stop requested: the run writes a checkpoint and exits")
    resumable = not live and run.status == "stopped" and bool(run.checkpoints)
    if resumable and b1.button("Resume training", key=f"resume-{name}", help="relaunch with resume=latest"):
        try:
            launch.resume(root, name)
        except ConfigError as exc:
            show_error(exc)
        else:
            st.rerun()

    @st.fragment(run_every=REFRESH_S if live else None)
    def body() -> None:
        try:
            run = run_info(root, name)
        except ConfigError as exc:
            show_error(exc)
            return
        started_here = launch.is_live(run.path)
        status = "starting" if started_here and run.status != "running" else run.status
        st.subheader(f"{run.name} · {status}")
        if run.max_steps:
            st.progress(min(run.step / run.max_steps, 1.0), text=f"step {run.step} / {run.max_steps}")
        else:
            st.write(f"step {run.step}")
        c1, c2 = st.columns(2)
        with c1:
            curve = loss_curve(run.path)
            if curve:
                st.line_chart({"loss": [v for _, v in curve]} | {"step": [s for s, _ in curve]}, x="step", y="loss", height=260)
            else:
                st.caption("no loss logged yet")
        with c2:
            if run.grids:
                st.image(str(run.grids[-1]), caption=f"latest grid: {run.grids[-1].name}")
            else:
                st.caption("no sample grid yet")
        if run.checkpoints:
            st.caption("checkpoints: " + ", ".join(p.name for p in run.checkpoints))
        with st.expander("config"):
            st.code(yaml.safe_dump(read_config(run.path), sort_keys=False), language="yaml")
        log_text = tail(run.path / LAUNCH_LOG) or tail(run.path / "train.log")
        if log_text:
            with st.expander("log", expanded=status == "stopped" and not run.checkpoints):
                st.code(log_text)
        if live != started_here:
            st.rerun()  # the whole page: the buttons change and the refresh switches on or off

    body()
