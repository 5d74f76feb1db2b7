"""``ddpm-sample``'s console script: :func:`ddpm.sample.run.sample` under Hydra."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ddpm.cli import hydra_main
from ddpm.sample.run import sample


@hydra_main(config_name="sample")
def main(cfg: DictConfig, run_dir: Path) -> None:
    sample(cfg, run_dir)


if __name__ == "__main__":
    main()
