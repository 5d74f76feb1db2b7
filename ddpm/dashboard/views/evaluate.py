"""Evaluate: the metrics.json of ddpm-evaluate runs and the sweep tables of the collector."""

import streamlit as st

from ddpm.dashboard.paths import relative
from ddpm.dashboard.runs import checkpoint_choices, files, read_csv, results
from ddpm.dashboard.ui import display_path, outputs_root

root = outputs_root()
st.title("Evaluate")
evals = results(root, "metrics.json")
if evals:
    st.dataframe([{"run": name} | scalars for name, scalars in evals], hide_index=True)
else:
    st.info(f"No evaluations under {display_path(root)} yet: ddpm-evaluate writes metrics.json. For the most trained checkpoint here:")
    choices = checkpoint_choices(root)
    ckpt = choices[0].path if choices else root / "train" / "<run>" / "checkpoints" / "last.pt"
    run = ckpt.parent.parent.name
    st.code(f"ddpm-evaluate ckpt={ckpt} hydra.run.dir={root / 'evaluate' / run}", language="bash", wrap_lines=True)

st.header("Sweeps")
tables = files(root, "*.csv")
if not tables:
    st.caption("No sweep tables yet (scripts/collect_sweep.py writes a CSV into the sweep folder).")
for table in tables:
    st.subheader(relative(root, table))
    st.dataframe(read_csv(table), hide_index=True)
    plot = table.with_suffix(".png")
    if plot.is_file() and not plot.is_symlink():
        st.image(str(plot))
