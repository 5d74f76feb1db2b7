"""The collapse study end to end at a tiny size: ``scripts/collapse_study.py`` trains on two
subsets of MNIST at 8x8, measures every checkpoint with ``ddpm-regimes regimes=trained`` and
merges the records into ``collapse.csv`` and plots (``ddpm.regimes.study``)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from ddpm.regimes import theory
from ddpm.regimes.study import last_checkpoints


def test_collapse_study_end_to_end(data_dir: Path, tmp_path: Path) -> None:
    train = ["model.channels=8", "model.channel_mult=[1]", "schedule.T=100", "train.max_steps=4", "train.ckpt_every=2"]
    train += ["train.batch_size=8", "train.sample_every=0", "train.num_sample_images=0", f"paths.data_dir={data_dir}"]
    regimes = ["trained.samples=8", "trained.steps=10", "trained.gap_points=2", "trained.gap_queries=8"]
    regimes += ["collapse.queries=64", "collapse.points=8", "collapse.refine=2", "eigenvalues=2", f"paths.data_dir={data_dir}"]
    cmd = [sys.executable, str(REPO / "scripts" / "collapse_study.py"), str(tmp_path / "study"), "--n", "16,32", "--all-checkpoints"]
    cmd += ["--train", *train, "--regimes", *regimes]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    sweep = tmp_path / "study" / "train"
    with (sweep / "collapse.csv").open() as f:
        rows = list(csv.DictReader(f))
    # two jobs x two checkpoints (steps 2 and 4), each measured against its own 16 or 32 images at d = 64
    assert [(r["n"], r["d"], r["ckpt_step"]) for r in rows] == [("16", "64", "2"), ("16", "64", "4"), ("32", "64", "2"), ("32", "64", "4")]
    for r in rows:
        rec = json.loads((sweep / r["record"]).read_text())
        assert float(r["memorised_fraction"]) == rec["memorised_fraction"] and 0.0 <= rec["memorised_fraction"] <= 1.0
        assert float(r["t_C_network"]) == rec["network_t_last_change_median"]
        assert float(r["t_C_exact"]) == rec["t_C"]
        # the theory column is ½ log(1 + σ²/(n^{2/d} - 1)) with σ² the data's mean eigenvalue
        assert float(r["t_C_theory"]) == pytest.approx(theory.collapse_time_isotropic(int(r["n"]), 64, rec["mean_eigenvalue"]), rel=1e-9)
        assert float(r["t_C_spectral"]) == rec["t_C_gauss_spectral"]
    # fewer points collapse later (theory and exact score alike)
    t16, t32 = (float(r["t_C_theory"]) for r in rows[1::2])
    assert t16 > t32
    for name in ("collapse_memorised_vs_n.png", "collapse_memorised_vs_steps.png", "collapse_times_vs_n.png"):
        assert (sweep / name).stat().st_size > 5000, name
    parsed = [{**r, "n": int(r["n"]), "d": int(r["d"]), "ckpt_step": int(r["ckpt_step"])} for r in rows]
    assert [(r["n"], r["ckpt_step"]) for r in last_checkpoints(parsed)] == [(16, 4), (32, 4)]
