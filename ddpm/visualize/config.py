"""Typed schema of ``conf/visualize.yaml`` (the ``ddpm-visualize`` command), each field's rule beside it, and the rule that spans two fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from ddpm.config import PathsConfig, RuntimeConfig, SamplerConfig, _check, rule, validates

# What ddpm-visualize writes into its run dir (an earlier run's are kept unless overwrite=true).
OUTPUTS = (
    "metrics.csv",
    "metrics.json",
    "final_vs_start.png",
    "trajectory.png",
    "x0_strip.png",
    "schedules.png",
    "denoise_overview.png",
    "tb",
)


@dataclass
class VisualizeConfig:
    ckpt: str = MISSING  # checkpoint file, or a training run dir
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    use_ema: bool = True
    steps: list[int] = field(default_factory=list)  # schedule steps k to noise to
    # OU times t = -½ log ᾱ, mapped to the first k with t_k >= t
    times: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.6, 1.0, 2.0], metadata=rule(gt=0.0))
    num_images: int = field(default=8, metadata=rule(ge=1))  # real images noised and denoised
    split: str = field(default="test", metadata=rule(choices=("train", "test")))  # dataset split the images come from
    seed: int = 0  # picks the images and seeds their noise (forward and reverse from independent streams)
    strip_frames: int = field(default=10, metadata=rule(ge=2))  # columns of the x̂_0 strip
    strip_images: int = field(default=4, metadata=rule(ge=1))  # images in the x̂_0 strip
    schedules: list[str] = field(default_factory=lambda: ["linear", "cosine", "quadratic"])  # compared in schedules.png
    tensorboard: bool = False  # also log plots and metrics to <run dir>/tb
    overwrite: bool = False
    progress: bool = True


@validates(VisualizeConfig)
def validate_visualize(cfg: Any) -> None:
    """Checks of a ``visualize`` config before any work: every field rule of :class:`VisualizeConfig`,
    then the rule that spans two fields; raises :class:`ConfigError`.

    Args:
        cfg: the composed ``visualize`` config.
    """
    _check(len(cfg.steps) + len(cfg.times) > 0, "choose where to noise to: steps=[k,...] (schedule steps) and/or times=[t,...] (OU times)")
