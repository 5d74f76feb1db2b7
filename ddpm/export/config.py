"""Typed schema of ``conf/export.yaml`` (the ``ddpm-export`` command), each field's rule beside it, and the check of its file stem."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from ddpm.config import PathsConfig, _check, rule, validates
from ddpm.export_format import SUFFIX

FORMATS = ("safetensors",)
# What ddpm-export writes into its run dir, for export name ``name`` (kept unless overwrite=true).
OUTPUTS = ("{name}" + SUFFIX, "{name}.json")


@dataclass
class ExportConfig:
    ckpt: str = MISSING  # checkpoint file, or a training run dir (uses checkpoints/last.pt)
    # the weights format (safetensors: tensors only, readable by other tools)
    format: str = field(default="safetensors", metadata=rule(choices=FORMATS))
    name: str = "model"  # file stem: <run dir>/<name>.safetensors and <name>.json
    use_ema: bool = True  # export the EMA weights (false: the raw training weights)
    overwrite: bool = False  # allow replacing an earlier export in the same run dir
    paths: PathsConfig = field(default_factory=PathsConfig)  # output_dir: where the run dir goes


@validates(ExportConfig)
def validate_export(cfg: Any) -> None:
    """Checks of an ``export`` config before any work: every field rule of :class:`ExportConfig`, then
    the file stem (a predicate on its text, not a range); raises :class:`ConfigError`.

    Args:
        cfg: the composed ``export`` config.
    """
    name = str(cfg.name)
    _check(
        bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name,
        f"name must be a plain file stem (no folders), got {name!r}",
    )
