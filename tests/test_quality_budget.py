"""``scripts/quality_budget.py``: the plumbing of the budgeted side-by-side run, at a budget of seconds."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCRIPT = "scripts/quality_budget.py"  # relative to REPO, the working directory of the runs
MINUTES = 0.05  # 3 s of training per recipe


def run_script(args: list[str], data_dir: Path, cache_dir: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "DDPM_DATA_DIR": str(data_dir), "DDPM_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)


@pytest.mark.slow
def test_budget_run_of_ours_and_diffusers_writes_scored_rows(data_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    out, work = tmp_path / "qb.json", tmp_path / "work"
    tiny = ["model=tiny", "schedule.T=100", "train.batch_size=16", "train.warmup_steps=0", "train.sample_every=0"]
    tiny += ["train.ckpt_every=0", "train.num_sample_images=4", "train.log_every=5"]
    args = ["--minutes", str(MINUTES), "--compare", "diffusers", "--diffusers-channels", "16,32,32", "--num-samples", "16"]
    args += ["--num-reference", "2000", "--threads", "1", "--out", str(out), "--workdir", str(work)]
    args += [a for o in tiny for a in ("--override", o)]
    proc = run_script(args, data_dir, tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [r["name"] for r in result["rows"]] == ["ours", "diffusers"]
    assert result["minutes"] == MINUTES and result["clock"] == "wall" and result["threads"] == 1 and result["torch"]
    assert result["command"].startswith("python scripts/quality_budget.py --minutes 0.05")
    budget = 60 * MINUTES
    for row in result["rows"]:
        assert row["steps"] > 0 and row["images"] == row["steps"] * row["batch"]
        # The budget is checked after each step: it is spent, and overshot by less than the last step
        # (at most twice the mean step: the first steps are the slow ones).
        overshoot = row["train_seconds"] - budget
        assert 0 <= overshoot <= 2 * row["train_seconds"] / row["steps"], (row["name"], row["train_seconds"], row["steps"])
        assert row["sampling_seconds"] > 0
        s = row["scores"]
        assert s["n"] == 16
        assert all(math.isfinite(s[k]) for k in ("fid", "kid", "class_entropy", "confidence", "confident_fraction", "blob_fraction"))
        assert 0 <= s["class_entropy"] <= 1 and 0 <= s["blob_fraction"] <= 1 and 0.1 <= s["confidence"] <= 1
        assert row["grid_images"] == 16 and 0 <= row["blobs_in_grid"] <= 16
        grid = Path(row["grid"])
        assert grid.is_file() and Image.open(grid).size == (8 * 30 + 2, 2 * 30 + 2)  # 16 tiles of 28 px (mnist_cpu), 8 per row
    ours, theirs = result["rows"]
    assert ours["recipe"]["model"] == "tiny" and ours["recipe"]["train"]["batch_size"] == 16 and ours["batch"] == 16
    assert ours["recipe"]["train"]["time_budget_min"] == MINUTES and ours["recipe"]["schedule"]["T"] == 100
    assert ours["sampler"]["name"] == "sde_dpm_solver" and ours["evaluations"] == 20  # ddpm-sample's default
    assert Path(ours["ckpt"]).is_file()
    assert theirs["batch"] == 64 and theirs["recipe"]["block_out_channels"] == [16, 32, 32] and theirs["evaluations"] == 20
    assert (work / "diffusers" / "ema.pt").is_file()
    real = result["real_test_reference"]
    assert real["scores"]["n"] == 16 and real["blobs_in_grid"] == 0 and real["scores"]["confidence"] > 0.9
    assert real["scores"]["fid"] < min(ours["scores"]["fid"], theirs["scores"]["fid"])  # seconds of training are far from real digits
    assert (work / "real_test.png").is_file()
    table = proc.stdout[proc.stdout.index("| recipe |") :]
    assert f"| ours | {ours['steps']:,} | {ours['images']:,} |" in table and "| diffusers |" in table
    assert "| real test images (16) | - | - | - |" in table
    assert result["table"] in proc.stdout


def test_bad_arguments_are_one_line_errors(data_dir: Path, tmp_path: Path) -> None:
    cases = {
        ("--minutes", "0"): "--minutes must be a positive number",
        ("--minutes", "1", "--num-samples", "1"): "--num-samples must be at least 2",
        ("--minutes", "1", "--diffusers-channels", "16,32"): "three positive widths",
        ("--minutes", "1", "--override", "model"): "--override takes KEY=VAL",
        ("--minutes", "1", "--preset", "no_such_preset"): "cannot compose experiment=no_such_preset",
    }
    for args, message in cases.items():
        proc = run_script([*args, "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "o.json")], data_dir, tmp_path / "cache")
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, proc.stderr[-2000:])
    assert not (tmp_path / "w").exists() and not (tmp_path / "o.json").exists()


def test_an_earlier_run_is_kept_unless_overwrite(data_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "w" / "ours").mkdir(parents=True)
    (tmp_path / "w" / "ours" / "train.log").write_text("earlier run\n")
    args = ["--minutes", "0.01", "--num-samples", "2", "--num-reference", "100", "--workdir", str(tmp_path / "w")]
    proc = run_script([*args, "--out", str(tmp_path / "o.json")], data_dir, tmp_path / "cache")
    assert proc.returncode == 2 and "pass --overwrite" in proc.stderr, proc.stderr[-2000:]
    assert (tmp_path / "w" / "ours" / "train.log").read_text() == "earlier run\n"
