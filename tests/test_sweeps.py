"""Hydra multirun of ddpm-train with the basic and joblib launchers, merged by the collector."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def sweep(tmp_path: Path, data_dir: Path, *extra: str) -> Path:
    sweep_dir = tmp_path / "sweep"
    cmd = [
        str(Path(sys.executable).with_name("ddpm-train")),
        "-m",
        "model=tiny",
        "schedule=linear,cosine",
        "schedule.T=50",
        "train.max_steps=3",
        "train.batch_size=8",
        "train.log_every=3",
        "train.sample_every=0",
        "train.num_sample_images=0",
        "train.progress=false",
        f"paths.data_dir={data_dir}",
        f"hydra.sweep.dir={sweep_dir}",
        *extra,
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep_dir


def collect(sweep_dir: Path) -> list[dict[str, str]]:
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "collect_sweep.py"),
        str(sweep_dir),
        "--result",
        "metrics.json",
        "--config-keys",
        "schedule.T,train.lr",
        "--plot",
        "loss",
        "--x",
        "schedule.T",
        "--hue",
        "schedule",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (sweep_dir / "sweep.png").stat().st_size > 1000
    with (sweep_dir / "sweep.csv").open() as f:
        return list(csv.DictReader(f))


LAUNCHERS = {
    "basic": [],
    "joblib": ["hydra/launcher=joblib_1thread", "hydra.launcher.n_jobs=2"],
    "submitit": ["hydra/launcher=local"],  # the SLURM launcher's code path, on local processes
}


@pytest.mark.parametrize("launcher", LAUNCHERS.values(), ids=LAUNCHERS.keys())
def test_multirun_jobs_are_collected_into_one_table(data_dir, tmp_path, launcher):
    rows = collect(sweep(tmp_path, data_dir, *launcher))
    assert [(r["job"], r["schedule"], r["schedule.T"]) for r in rows] == [("0", "linear", "50"), ("1", "cosine", "50")]
    assert all(r["step"] == "3" and float(r["loss"]) > 0 for r in rows)
    for job in ("0", "1"):
        assert (tmp_path / "sweep" / job / "checkpoints" / "last.pt").is_file()
