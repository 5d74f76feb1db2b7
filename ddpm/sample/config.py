"""Typed schema of ``conf/sample.yaml`` (the ``ddpm-sample`` command), each field with its rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from ddpm.config import PathsConfig, RuntimeConfig, SamplerConfig, rule, validates

# What ddpm-sample writes into its run dir (an earlier run's are kept unless overwrite=true).
OUTPUTS = ("samples.png", "sampling.gif", "noise.gif", "images", "sample.json")
MAX_GUIDANCE = 100.0  # far beyond useful scales (1-10): a larger one is a typo


@dataclass
class GifConfig:
    frames: int = field(default=20, metadata=rule(ge=0, note="(0 writes no GIFs)"))  # frames of sampling.gif and noise.gif
    fps: float = field(default=8.0, metadata=rule(gt=0.0, le=100.0, note="(GIF frame delays are whole hundredths of a second)"))
    num_images: int = field(default=16, metadata=rule(ge=1))  # images in each GIF frame's grid (the first samples)
    scale: int = field(default=2, metadata=rule(ge=1, le=64))  # nearest-neighbour upscaling of the frames
    noise: bool = True  # also write noise.gif (needs the checkpoint's dataset)


@dataclass
class SampleConfig:
    ckpt: str = MISSING  # checkpoint file, or a training run dir (uses checkpoints/last.pt)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    use_ema: bool = True  # EMA weights (false: the raw training weights)
    num_samples: int = field(default=64, metadata=rule(ge=1))
    batch_size: int = field(default=64, metadata=rule(ge=1))  # images per network call
    seed: int = 0  # sample i starts from seed + i, whatever the batch size
    save_images: bool = False  # one PNG per sample in images/ (e.g. for FID)
    grid_images: int = field(default=64, metadata=rule(ge=1))  # samples shown in samples.png
    gif: GifConfig = field(default_factory=GifConfig)
    # Conditional checkpoints: every sample of this class; null = sample i of class i % classes, and
    # samples.png shows one row per class. guidance_scale s: ε_∅ + s (ε_y - ε_∅) (1: conditional, 0: unconditional).
    class_label: int | None = field(default=None, metadata=rule(ge=0, optional=True))
    guidance_scale: float = field(default=1.0, metadata=rule(ge=0.0, le=MAX_GUIDANCE))
    overwrite: bool = False  # allow replacing the outputs of an earlier run in the same run dir
    progress: bool = True


@validates(SampleConfig)
def validate_sample(cfg: Any) -> None:
    """Checks of a ``sample`` config before any work: every field rule of :class:`SampleConfig` (it has
    no rule that spans several fields); raises :class:`ConfigError`.

    Args:
        cfg: the composed ``sample`` config.
    """
