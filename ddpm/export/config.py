"""Typed schema of ``conf/export.yaml`` (the ``ddpm-export`` command) and its range checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from ddpm.config import register_configs
from ddpm.errors import ConfigError

FORMATS = ("safetensors",)


@dataclass
class ExportConfig:
    ckpt: str = MISSING  # checkpoint file, or a training run dir (uses checkpoints/last.pt)
    format: str = "safetensors"  # the weights format (safetensors: tensors only, readable by other tools)
    name: str = "model"  # file stem: <run dir>/<name>.safetensors and <name>.json
    use_ema: bool = True  # export the EMA weights (false: the raw training weights)
    overwrite: bool = False  # allow replacing an earlier export in the same run dir


def register() -> None:
    """Store the shared group schemas and ``export_schema`` in Hydra's ConfigStore."""
    register_configs()
    ConfigStore.instance().store(name="export_schema", node=ExportConfig)


def validate_export(cfg: Any) -> None:
    """Range checks of an ``export`` config; raises :class:`ConfigError`.

    Args:
        cfg: the composed ``export`` config.
    """
    if cfg.format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {cfg.format!r}")
    name = str(cfg.name)
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ConfigError(f"name must be a plain file stem (no folders), got {name!r}")
