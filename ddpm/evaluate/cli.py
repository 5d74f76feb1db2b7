"""``ddpm-evaluate``'s console script: :func:`ddpm.evaluate.run.evaluate` under Hydra."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ddpm.cli import hydra_main
from ddpm.evaluate.run import evaluate


@hydra_main(config_name="evaluate")
def main(cfg: DictConfig, run_dir: Path) -> None:
    evaluate(cfg, run_dir)


if __name__ == "__main__":
    main()
