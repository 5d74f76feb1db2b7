"""``ddpm-export ckpt=PATH format=safetensors``: a checkpoint's weights in a format other tools read.

Writes into the run dir ``<name>.safetensors`` (the EMA weights, unless ``use_ema=false``) and
``<name>.json`` (the training config that rebuilds the network, the step, and the SHA-256 of the
weights file). ``ddpm-sample ckpt=<run dir>/model.safetensors`` (and
:func:`ddpm.pretrained.load_pretrained`) load the pair back.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ddpm.cli import hydra_main
from ddpm.errors import ConfigError
from ddpm.export.config import OUTPUTS, validate_export
from ddpm.export_format import SUFFIX, write_export
from ddpm.pretrained import load_pretrained
from ddpm.runlock import check_outputs

log = logging.getLogger("ddpm.export")


def export(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Export ``cfg.ckpt`` into ``run_dir``; returns the paths written and the step.

    Args:
        cfg: the composed ``export`` config.
        run_dir: where the pair is written.
    """
    validate_export(cfg)
    if OmegaConf.is_missing(cfg, "ckpt") or not cfg.ckpt:
        raise ConfigError("pass the checkpoint to export: ckpt=PATH (a .pt file or a training run dir)")
    run_dir = Path(run_dir)
    name = str(cfg.name)
    check_outputs(run_dir, tuple(o.format(name=name) for o in OUTPUTS), bool(cfg.overwrite))
    # Loading through load_pretrained checks the weights against the model the config builds.
    pre = load_pretrained(cfg.ckpt, "cpu", use_ema=bool(cfg.use_ema), channels_last=False)
    weights_path = run_dir / (name + SUFFIX)
    cfg_path = write_export(
        pre.model.state_dict(),
        OmegaConf.to_container(pre.cfg, resolve=True),
        pre.step,
        "ema" if cfg.use_ema else "model",
        weights_path,
        str(pre.path),
        pre.data_subset,
    )
    log.info("exported %s (step %d) -> %s and %s", pre.path, pre.step, weights_path, cfg_path)
    return {"weights": str(weights_path), "config": str(cfg_path), "step": pre.step}


@hydra_main(config_name="export")
def main(cfg: DictConfig, run_dir: Path) -> None:
    export(cfg, run_dir)


if __name__ == "__main__":
    main()
