"""The built wheel carries the configs, and ddpm-train runs from any working directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def test_wheel_ships_configs_and_runs_outside_the_repo(data_dir, tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(wheels)], check=True, timeout=300)
    target = tmp_path / "site"
    wheel = next(wheels.glob("ddpm-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], check=True, timeout=300
    )
    assert (target / "ddpm" / "conf" / "train.yaml").is_file()
    assert (target / "ddpm" / "conf" / "hydra" / "launcher" / "slurm.yaml").is_file()
    code = (
        "import sys, ddpm; from ddpm.train import main; print('FROM', ddpm.__file__); "
        f"sys.argv = ['ddpm-train', 'dry_run=true', 'dataset=cryptopunks', 'paths.data_dir={data_dir}', "
        f"'paths.cache_dir={tmp_path / 'cache'}', 'hydra.run.dir={tmp_path / 'run'}']; main()"
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=work,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"FROM {target}" in proc.stdout  # the wheel's copy, not the source tree
    assert "9000 images (3, 24, 24)" in proc.stdout
    assert (tmp_path / "run" / "config.yaml").is_file() and not any(work.iterdir())


def test_console_script_from_another_directory(data_dir, tmp_path):
    exe = Path(sys.executable).with_name("ddpm-train")
    proc = subprocess.run(
        [str(exe), "dry_run=true", f"paths.data_dir={data_dir}", "model=tiny", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "model tiny:" in proc.stdout and "60000 images (1, 32, 32)" in proc.stdout
