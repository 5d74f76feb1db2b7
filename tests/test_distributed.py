"""Data-parallel training (torchrun, gloo on CPU) computes what one process computes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import compose_config, tiny_train_overrides

from ddpm.checkpoint import load_checkpoint
from ddpm.train import train

pytestmark = pytest.mark.slow


def test_two_process_ddp_matches_single_process(data_dir, tmp_path):
    common = {"train.max_steps": 4, "train.ckpt_every": 4, "train.log_every": 2, "train.sample_every": 4}
    single = tmp_path / "single"
    train(compose_config("train", tiny_train_overrides(data_dir, tmp_path / "cache", **{**common, "train.batch_size": 16})), single)

    ddp = tmp_path / "ddp"
    overrides = tiny_train_overrides(data_dir, tmp_path / "cache", **{**common, "train.batch_size": 8}) + [f"hydra.run.dir={ddp}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ddpm.train", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    a = load_checkpoint(single / "checkpoints" / "last.pt")
    b = load_checkpoint(ddp / "checkpoints" / "last.pt")
    assert b["step"] == 4
    # The same data, noise and updates give the same losses...
    losses = [json.loads((d / "metrics.json").read_text())["loss"] for d in (single, ddp)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    # ...and weights within a tenth of one Adam step (lr = 1e-3): gradients are summed in another
    # order, and Adam normalises the near-zero gradients behind the zero-initialised output layer.
    for key in ("model", "ema"):
        for name, value in a[key].items():
            torch.testing.assert_close(b[key][name], value, rtol=0, atol=1e-4, msg=f"{key}.{name}")
    log = (ddp / "train.log").read_text()
    assert "global batch 16 = 8 per rank x 2 ranks x 1 accumulation" in log
    # Only rank 0 writes: one TensorBoard file, one checkpoint message per save, one grid.
    assert len(list((ddp / "tb").iterdir())) == 1
    assert log.count("checkpoint ") == 1
    assert [p.name for p in (ddp / "samples").iterdir()] == ["step_0000004.png"]
    assert {p.name for p in tmp_path.iterdir()} <= {"cache", "ddp", "single"}  # no stray run dirs
