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
from ddpm.paths import default_output_dir

REFRESH_S = 2.0  # how often a live run's view re-reads its files


def outputs_root() -> Path:
    """The outputs root: ``--outputs`` after ``--`` on the ``streamlit run`` line (``ddpm-dashboard``
    passes it), kept in the session; ``outputs`` when absent."""
    if "outputs_root" not in st.session_state:
        p = argparse.ArgumentParser(add_help=False)
        p.add_argument("--outputs", type=Path, default=Path(default_output_dir()))
        args, _ = p.parse_known_args(sys.argv[1:])
        st.session_state["outputs_root"] = str(args.outputs.expanduser().resolve())
    return Path(st.session_state["outputs_root"])


def display_path(path: str | Path) -> str:
    """A path as the pages show it: relative to the working directory when inside it, else with
    ``~`` for the home folder."""
    p = Path(path)
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if p == cwd:
        return "."
    if cwd in p.parents:
        return str(p.relative_to(cwd))
    if home in p.parents:
        return str(Path("~") / p.relative_to(home))
    return str(p)


def show_error(exc: Exception) -> None:
    """A user error as the CLI prints it: one line."""
    st.error(f"error: {exc}")


def render_run(root: Path, name: str) -> None:
    """Stop/Resume, Archive/Delete, status (a failed run's error), progress, loss curve, latest grid
    and checkpoints of one run; re-read every :data:`REFRESH_S` seconds while it trains.

    The buttons belong to the whole page, not to the refreshing part: a click then reruns the page
    (a click on a button inside the fragment can be lost while the page itself reruns)."""
    try:
        run = run_info(root, name)
    except ConfigError as exc:
        show_error(exc)
        return
    if not run.path.is_dir():
        st.info(f"{name} is no longer under the outputs root (archived or deleted).")
        return
    live = launch.is_live(run.path)
    bar = st.container(horizontal=True)  # the run's buttons side by side, from the left
    if live and bar.button("Stop training", key=f"stop-{name}", help="SIGTERM: the run finishes its step and writes a checkpoint"):
        launch.stop(root, name, wait_s=0.5)
        st.info("stop requested: the run writes a checkpoint and exits")
    resumable = not live and run.status in ("stopped", "failed") and bool(run.checkpoints)
    if resumable and bar.button("Resume training", key=f"resume-{name}", help="relaunch with resume=latest"):
        try:
            launch.resume(root, name)
        except ConfigError as exc:
            show_error(exc)
        else:
            st.rerun()
    if not live:
        if bar.button("Archive run", key=f"archive-{name}", help=f"move it to {launch.ARCHIVE}/ under the outputs root"):
            st.session_state["confirm"] = ("archive", name)
        if bar.button("Delete run", key=f"delete-{name}", help="remove its folder and checkpoints"):
            st.session_state["confirm"] = ("delete", name)
        confirm_removal(root, name)

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
        if status == "failed":
            st.error(f"error: {run.error}")
        frac, text = run.progress
        st.progress(frac, text=text)
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
            st.caption(f"checkpoints ({run.checkpoint_count()} files): " + ", ".join(p.name for p in run.checkpoints))
        with st.expander("config"):
            st.code(yaml.safe_dump(read_config(run.path), sort_keys=False), language="yaml")
        log_text = tail(run.path / LAUNCH_LOG) or tail(run.path / "train.log")
        if log_text:
            with st.expander("log", expanded=status == "failed"):
                st.code(log_text)
        if live != started_here:
            st.rerun()  # the whole page: the buttons change and the refresh switches on or off

    body()


def confirm_removal(root: Path, name: str) -> None:
    """The confirmation of a pending Archive or Delete of run ``name`` (Yes / Cancel); once done,
    the page reruns without the run and says where it went."""
    pending = st.session_state.get("confirm")
    if not pending or pending[1] != name:
        return
    action = pending[0]
    what = f"move {name} to {launch.ARCHIVE}/{name}" if action == "archive" else f"delete {name} and all its checkpoints"
    st.warning(f"{what.capitalize()}?" + (" This cannot be undone." if action == "delete" else ""))
    row = st.container(horizontal=True)
    if row.button(f"Yes, {action}", key=f"confirm-{action}-{name}", type="primary"):
        st.session_state.pop("confirm", None)
        try:
            dest = launch.archive(root, name) if action == "archive" else launch.delete(root, name)
        except ConfigError as exc:
            show_error(exc)
            return
        for key in ("run", "launched"):
            if st.session_state.get(key) == name:
                st.session_state.pop(key)
        done = f"archived to {dest.relative_to(root)}" if dest is not None else "deleted"
        st.session_state["removed"] = f"{name}: {done}"
        st.rerun()
    if row.button("Cancel", key=f"cancel-{action}-{name}"):
        st.session_state.pop("confirm", None)
        st.rerun()
