"""Typed schema of ``conf/export.yaml`` (the ``ddpm-export`` command) and its range checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from ddpm.config import _check
from ddpm.export_format import SUFFIX

FORMATS = ("safetensors",)
# What ddpm-export writes into its run dir, for export name ``name`` (kept unless overwrite=true).
OUTPUTS = ("{name}" + SUFFIX, "{name}.json")


@dataclass
class ExportConfig:
    ckpt: str = MISSING  # checkpoint file, or a training run dir (uses checkpoints/last.pt)
    format: str = "safetensors"  # the weights format (safetensors: tensors only, readable by other tools)
    name: str = "model"  # file stem: <run dir>/<name>.safetensors and <name>.json
    use_ema: bool = True  # export the EMA weights (false: the raw training weights)
    overwrite: bool = False  # allow replacing an earlier export in the same run dir


def validate_export(cfg: Any) -> None:
    """Range checks of an ``export`` config; raises :class:`ConfigError`.

    Args:
        cfg: the composed ``export`` config.
    """
    _check(cfg.format in FORMATS, f"format must be one of {', '.join(FORMATS)}, got {cfg.format!r}")
    name = str(cfg.name)
    _check(
        bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name,
        f"name must be a plain file stem (no folders), got {name!r}",
    )
