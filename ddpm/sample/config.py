"""Typed schema of ``conf/sample.yaml`` (the ``ddpm-sample`` command) and its range checks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from ddpm.config import PathsConfig, RuntimeConfig, SamplerConfig, _check, checks_runtime

# What ddpm-sample writes into its run dir (an earlier run's are kept unless overwrite=true).
OUTPUTS = ("samples.png", "sampling.gif", "noise.gif", "images", "sample.json")
MAX_GUIDANCE = 100.0  # far beyond useful scales (1-10): a larger one is a typo


@dataclass
class GifConfig:
    frames: int = 20  # frames of sampling.gif and noise.gif
    fps: float = 8.0
    num_images: int = 16  # images in each GIF frame's grid (the first samples)
    scale: int = 2  # nearest-neighbour upscaling of the frames
    noise: bool = True  # also write noise.gif (needs the checkpoint's dataset)


@dataclass
class SampleConfig:
    ckpt: str = MISSING  # checkpoint file, or a training run dir (uses checkpoints/last.pt)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    use_ema: bool = True  # EMA weights (false: the raw training weights)
    num_samples: int = 64
    batch_size: int = 64  # images per network call
    seed: int = 0  # sample i starts from seed + i, whatever the batch size
    save_images: bool = False  # one PNG per sample in images/ (e.g. for FID)
    grid_images: int = 64  # samples shown in samples.png
    gif: GifConfig = field(default_factory=GifConfig)
    # Conditional checkpoints: every sample of this class; null = sample i of class i % classes, and
    # samples.png shows one row per class. guidance_scale s: ε_∅ + s (ε_y - ε_∅) (1: conditional, 0: unconditional).
    class_label: int | None = None
    guidance_scale: float = 1.0
    overwrite: bool = False  # allow replacing the outputs of an earlier run in the same run dir
    progress: bool = True


@checks_runtime
def validate_sample(cfg: Any) -> None:
    """Range checks of a ``sample`` config; raises :class:`ConfigError`.

    Args:
        cfg: the composed ``sample`` config.
    """
    _check(cfg.num_samples >= 1, f"num_samples must be >= 1, got {cfg.num_samples}")
    _check(cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}")
    _check(cfg.grid_images >= 1, f"grid_images must be >= 1, got {cfg.grid_images}")
    g = cfg.gif
    _check(g.frames >= 0, f"gif.frames must be >= 0 (0 writes no GIFs), got {g.frames}")
    _check(0 < g.fps <= 100, f"gif.fps must lie in (0, 100] (GIF frame delays are whole hundredths of a second), got {g.fps}")
    _check(g.num_images >= 1, f"gif.num_images must be >= 1, got {g.num_images}")
    _check(1 <= g.scale <= 64, f"gif.scale must lie in 1..64, got {g.scale}")
    _check(cfg.class_label is None or cfg.class_label >= 0, f"class_label must be >= 0 or null, got {cfg.class_label}")
    _check(
        math.isfinite(cfg.guidance_scale) and 0 <= cfg.guidance_scale <= MAX_GUIDANCE,
        f"guidance_scale must lie in [0, {MAX_GUIDANCE}], got {cfg.guidance_scale}",
    )
