"""Under a time budget all DDP ranks take the same LR: the cosine schedule reads the clock the
ranks agreed on (the slowest rank's), not each rank's own, and a resumed run continues it exactly.

Two real processes (gloo on CPU) train a tiny network on a folder of 8x8 images; each rank's budget
clock is scripted (rank r spends 1 + r seconds per step), so their own clocks always differ.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

LR, BUDGET_S, MAX_STEPS = 1e-3, 12.0, 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def overrides(folder: Path, run_dir: Path) -> list[str]:
    return [
        "dataset=folder",
        f"dataset.path={folder}",
        "dataset.image_size=8",
        "dataset.resize=true",
        "dataset.hflip=false",
        "dataset.in_memory=true",
        "model=tiny",
        "model.channel_mult=[1]",
        "model.attention_resolutions=[]",
        f"paths.data_dir={folder.parent}",
        f"paths.cache_dir={run_dir.parent / 'cache'}",
        "runtime.device=cpu",
        "runtime.num_threads=1",
        "train.batch_size=4",
        f"train.max_steps={MAX_STEPS}",
        f"train.lr={LR}",
        "train.warmup_steps=0",
        "train.lr_schedule=cosine",
        f"train.time_budget_min={BUDGET_S / 60}",
        "train.log_every=0",
        "train.sample_every=0",
        "train.num_sample_images=0",
        "train.ckpt_every=3",
        "train.keep_checkpoints=10",
        "train.progress=false",
    ]


def worker(rank: int, folder: Path, out: Path, port: int) -> None:
    """One rank: an uninterrupted run, then a run resumed from its step-3 checkpoint; writes the LR after each step."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    from conftest import compose_config

    from ddpm.runtime import teardown_runtime
    from ddpm.train.trainer import BudgetClock, Trainer

    ticks = itertools.count()
    BudgetClock.now = lambda self: float(next(ticks) * (1 + rank))  # type: ignore[method-assign]  # read on entering and leaving each step

    def run(name: str, resume: Path | None) -> list[float]:
        run_dir = out / name
        trainer = Trainer(compose_config("train", overrides(folder, run_dir)), run_dir)
        if resume is not None:
            trainer.resume(str(resume))
        lrs: list[float] = []
        step = trainer.train_step

        def recorded() -> tuple[torch.Tensor, torch.Tensor]:
            result = step()
            lrs.append(trainer.scheduler.get_last_lr()[0])
            return result

        trainer.train_step = recorded  # type: ignore[method-assign]
        trainer.fit()
        return lrs

    try:
        whole = run("whole", None)
        resumed = run("resumed", out / "whole" / "checkpoints" / "step_0000003.pt")
    finally:
        teardown_runtime()
    (out / f"rank{rank}.json").write_text(json.dumps({"whole": whole, "resumed": resumed}))


def expected_lr(step: int) -> float:
    """LR after ``step`` steps: cosine over the larger of step progress and the slowest clock's
    (2 s a step, agreed after each step, so step s reads 2 (s - 1) s)."""
    progress = max(step / MAX_STEPS, 2.0 * (step - 1) / BUDGET_S)
    return LR * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_ranks_with_different_clocks_take_the_same_lr(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    mp.spawn(worker, args=(folder, tmp_path, free_port()), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    whole = [expected_lr(s) for s in range(1, 7)]  # the slowest clock reaches the 12 s budget after step 6
    for r in ranks:
        assert r["whole"] == pytest.approx(whole, rel=1e-12)
        assert r["resumed"] == pytest.approx(whole[3:], rel=1e-12)  # steps 4..6 after resuming at step 3: exactly as before
