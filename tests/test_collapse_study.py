"""The collapse study end to end at a tiny size: ``experiment=collapse_mnist`` on two subsets of
MNIST at 8x8, ``ddpm-regimes regimes=trained`` on every checkpoint, merged by
``scripts/collect_sweep.py --collapse`` into ``collapse.csv`` and plots (``ddpm.regimes.study``).
The same through ``scripts/collapse_study.py`` (a multirun and one process per command) is marked slow."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, compose_config

from ddpm.regimes import theory
from ddpm.regimes.study import collapse_rows, last_checkpoints

TRAIN = ["model.channels=8", "model.channel_mult=[1]", "schedule.T=100", "train.max_steps=4", "train.ckpt_every=2"]
TRAIN += ["train.batch_size=8", "train.sample_every=0", "train.num_sample_images=0", "train.progress=false"]
REGIMES = ["trained.samples=8", "trained.steps=10", "trained.gap_points=2", "trained.gap_queries=8", "runtime.num_threads=1"]
REGIMES += ["collapse.queries=64", "collapse.points=8", "collapse.refine=2", "eigenvalues=2", "plots=false"]


def check_table(sweep: Path) -> None:
    """collapse.csv: two jobs x two checkpoints, each row the record of its checkpoint; the plots exist."""
    with (sweep / "collapse.csv").open() as f:
        rows = list(csv.DictReader(f))
    # each checkpoint measured against its own 16 or 32 images at d = 64
    assert [(r["n"], r["d"], r["ckpt_step"]) for r in rows] == [("16", "64", "2"), ("16", "64", "4"), ("32", "64", "2"), ("32", "64", "4")]
    for r in rows:
        rec = json.loads((sweep / r["record"]).read_text())
        assert float(r["memorised_fraction"]) == rec["network_memorised_fraction"] and 0.0 <= rec["network_memorised_fraction"] <= 1.0
        # a tiny network after 4 steps copies nothing: no collapse time (an empty cell, not a number)
        assert rec["network_copies"] == 0 and rec["network_t_C"] is None and r["t_C_network"] == ""
        assert float(r["t_C_exact"]) == rec["t_C"]
        # the theory column is ½ log(1 + σ²/(n^{2/d} - 1)) with σ² the data's mean eigenvalue
        assert float(r["t_C_theory"]) == pytest.approx(theory.collapse_time_isotropic(int(r["n"]), 64, rec["mean_eigenvalue"]), rel=1e-9)
        assert float(r["t_C_spectral"]) == rec["t_C_gauss_spectral"]
    t16, t32 = (float(r["t_C_theory"]) for r in rows[1::2])
    assert t16 > t32  # fewer points collapse later
    for name in ("collapse_memorised_vs_n.png", "collapse_memorised_vs_steps.png", "collapse_times_vs_n.png"):
        assert (sweep / name).stat().st_size > 5000, name
    parsed, _ = collapse_rows(sweep)
    assert [(r["n"], r["ckpt_step"]) for r in last_checkpoints(parsed)] == [(16, 4), (32, 4)]


def test_collapse_study_in_process(data_dir: Path, tmp_path: Path) -> None:
    from ddpm.regimes.cli import run_regimes
    from ddpm.train import train

    sweep = tmp_path / "train"
    data = [f"paths.data_dir={data_dir}", f"paths.cache_dir={tmp_path / 'cache'}"]
    for job, n in enumerate((16, 32)):
        train(compose_config("train", ["experiment=collapse_mnist", f"dataset.n={n}", *TRAIN, *data]), sweep / str(job))
    for ckpt in sorted(sweep.glob("*/checkpoints/step_*.pt")):
        run_regimes(
            compose_config("regimes", ["regimes=trained", f"ckpt={ckpt}", *REGIMES, *data]), ckpt.parent.parent / "regimes" / ckpt.stem
        )
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "collect_sweep.py"), str(sweep), "--collapse"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    check_table(sweep)


@pytest.mark.slow
def test_collapse_study_script(data_dir: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, str(REPO / "scripts" / "collapse_study.py"), str(tmp_path / "study"), "--n", "16,32", "--all-checkpoints"]
    cmd += ["--train", *TRAIN, f"paths.data_dir={data_dir}", "--regimes", *REGIMES, f"paths.data_dir={data_dir}"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1200, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    check_table(tmp_path / "study" / "train")
