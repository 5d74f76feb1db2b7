"""The work of ``ddpm-train``: :func:`train` runs (or dry-runs) one training job, with the callbacks of
:mod:`ddpm.train.callbacks` on the loop of :mod:`ddpm.train.trainer`."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import ddpm
from ddpm.checkpoint import clean_partial_writes
from ddpm.runlock import RunLock
from ddpm.runtime import teardown_runtime
from ddpm.train.callbacks import build_callbacks
from ddpm.train.trainer import TrainCallback, Trainer

log = logging.getLogger("ddpm.train")


def train(cfg: DictConfig, run_dir: str | Path, callbacks: Sequence[TrainCallback] | None = None) -> dict[str, Any] | None:
    """Run (or dry-run) one training job into ``run_dir``; returns the final summary.

    Args:
        cfg: the composed ``train`` config.
        run_dir: where checkpoints, samples, TensorBoard logs and the config go.
        callbacks: the loop's hooks (default: those the config asks for, :func:`build_callbacks`).
    """
    run_dir = Path(run_dir)
    with RunLock(run_dir) if int(os.environ.get("RANK", "0")) == 0 else nullcontext():
        trainer = Trainer(cfg, run_dir, build_callbacks(cfg) if callbacks is None else callbacks)
        try:
            if trainer.rt.is_main:
                clean_partial_writes(trainer.ckpt_dir)  # safe: the run lock excludes a live writer
            if cfg.dry_run:
                if trainer.rt.is_main:
                    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
                print(OmegaConf.to_yaml(cfg, resolve=True))
                print(trainer.describe())
                return None
            log.info("ddpm %s\n%s", ddpm.__version__, trainer.describe())
            trainer.resume(cfg.resume)
            if trainer.rt.is_main:  # after resume: a config the checkpoints refuse must not replace the run's record
                (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
            return trainer.fit()
        except KeyboardInterrupt:  # a second Ctrl-C: stop at once; checkpoints on disk are complete
            print(
                f"interrupted: stopped at step {trainer.step}; the checkpoints in {trainer.ckpt_dir} are intact",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(128 + signal.SIGINT) from None
        finally:
            teardown_runtime()
