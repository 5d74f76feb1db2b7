"""``ddpm-train``: train a U-Net denoiser (DDPM) on an image dataset.

Single process by default; ``torchrun --nproc_per_node=N -m ddpm.train ...`` runs the same code
with DistributedDataParallel (see :mod:`ddpm.train.trainer`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig

from ddpm.cli import hydra_main
from ddpm.runlock import RunDirLocked
from ddpm.train.run import train
from ddpm.train.trainer import TrainingDiverged


@hydra_main(config_name="train", extra_errors=(TrainingDiverged, RunDirLocked))
def main(cfg: DictConfig, run_dir: Path) -> None:
    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger().setLevel(logging.WARNING)
    train(cfg, run_dir)
