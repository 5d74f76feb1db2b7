"""``ddpm-regimes``: speciation and collapse times of diffusion, measured and against theory.

The console script; the work is :func:`ddpm.regimes.run.run_regimes` (see docs/regimes.md).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ddpm.cli import hydra_main
from ddpm.regimes.config import SYNTHETIC
from ddpm.regimes.run import run_regimes


@hydra_main(config_name="regimes")
def main(cfg: DictConfig, run_dir: Path) -> None:
    """Measure speciation and collapse times (see docs/regimes.md)."""
    run_regimes(cfg, run_dir)


if __name__ == "__main__":
    main()


__all__ = ["run_regimes", "main", "SYNTHETIC"]
