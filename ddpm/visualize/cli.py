"""``ddpm-visualize``'s console script: :func:`ddpm.visualize.run.visualize` under Hydra."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ddpm.cli import hydra_main
from ddpm.visualize.run import visualize


@hydra_main(config_name="visualize")
def main(cfg: DictConfig, run_dir: Path) -> None:
    visualize(cfg, run_dir)


if __name__ == "__main__":
    main()
