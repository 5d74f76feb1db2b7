"""Typed schema of ``conf/visualize.yaml`` (the ``ddpm-visualize`` command) and its range checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from ddpm.config import PathsConfig, RuntimeConfig, SamplerConfig, _check, checks_runtime

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
    times: list[float] = field(
        default_factory=lambda: [0.1, 0.3, 0.6, 1.0, 2.0]
    )  # OU times t = -½ log ᾱ, mapped to the first k with t_k >= t
    num_images: int = 8  # real images noised and denoised
    split: str = "test"  # dataset split the images come from
    seed: int = 0  # picks the images and seeds their noise (forward and reverse from independent streams)
    strip_frames: int = 10  # columns of the x̂_0 strip
    strip_images: int = 4  # images in the x̂_0 strip
    schedules: list[str] = field(default_factory=lambda: ["linear", "cosine", "quadratic"])  # compared in schedules.png
    tensorboard: bool = False  # also log plots and metrics to <run dir>/tb
    overwrite: bool = False
    progress: bool = True


@checks_runtime
def validate_visualize(cfg: Any) -> None:
    """Range checks of a ``visualize`` config; raises :class:`ConfigError`.

    Args:
        cfg: the composed ``visualize`` config.
    """
    _check(len(cfg.steps) + len(cfg.times) > 0, "choose where to noise to: steps=[k,...] (schedule steps) and/or times=[t,...] (OU times)")
    _check(cfg.num_images >= 1, f"num_images must be >= 1, got {cfg.num_images}")
    _check(cfg.split in ("train", "test"), f"split must be train or test, got {cfg.split!r}")
    _check(cfg.strip_frames >= 2, f"strip_frames must be >= 2, got {cfg.strip_frames}")
    _check(cfg.strip_images >= 1, f"strip_images must be >= 1, got {cfg.strip_images}")
    _check(all(t > 0 for t in cfg.times), f"times must be > 0, got {list(cfg.times)}")
