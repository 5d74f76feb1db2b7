"""Regimes: ddpm-regimes results (t_S and t_C against theory) and their plots."""

import streamlit as st

from ddpm.dashboard.paths import inside
from ddpm.dashboard.runs import checkpoint_choices, results
from ddpm.dashboard.ui import display_path, outputs_root

root = outputs_root()
st.title("Regimes")
found = results(root, "regimes.json")
if not found:
    st.info(f"No ddpm-regimes runs under {display_path(root)} yet: ddpm-regimes writes regimes.json and its plots, e.g.")
    lines = [f"ddpm-regimes dataset=mnist hydra.run.dir={root / 'regimes' / 'mnist'}  # speciation and collapse times of MNIST"]
    if choices := checkpoint_choices(root):
        run = choices[0].path.parent.parent
        lines.append(f"ddpm-regimes regimes=trained ckpt={run} hydra.run.dir={root / 'regimes' / run.name}  # a trained run")
    st.code("\n".join(lines), language="bash", wrap_lines=True)
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
