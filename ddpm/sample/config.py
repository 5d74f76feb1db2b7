"""Typed schemas of ``conf/sample.yaml`` and ``conf/visualize.yaml`` and their range checks."""

# ruff: noqa: UP045  (OmegaConf structured configs need typing.Optional, not X | None)

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from ddpm.config import SamplerConfig
from ddpm.errors import ConfigError


@dataclass
class GifConfig:
    frames: int = 20  # frames of sampling.gif and noise.gif
    fps: float = 8.0
    num_images: int = 16  # images in each GIF frame's grid (the first samples)
    scale: int = 2  # nearest-neighbour upscaling of the frames
    noise: bool = True  # also write noise.gif (needs the checkpoint's dataset)


@dataclass
class DataPaths:
    data_dir: Optional[str] = None  # null: the data root stored in the checkpoint
    cache_dir: str = "~/.cache/ddpm"


@dataclass
class SampleConfig:
    ckpt: str = MISSING  # checkpoint file, or a training run dir (uses checkpoints/last.pt)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    use_ema: bool = True  # EMA weights (false: the raw training weights)
    num_samples: int = 64
    batch_size: int = 64  # images per network call
    seed: int = 0  # sample i starts from seed + i, whatever the batch size
    save_images: bool = False  # one PNG per sample in images/ (e.g. for FID)
    grid_images: int = 64  # samples shown in samples.png
    gif: GifConfig = field(default_factory=GifConfig)
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    precision: str = "fp32"  # fp32, bf16, fp16 (autocast of the network call only)
    overwrite: bool = False  # allow replacing the outputs of an earlier run in the same run dir
    progress: bool = True
    paths: DataPaths = field(default_factory=DataPaths)


@dataclass
class VisualizeConfig:
    ckpt: str = MISSING  # checkpoint file, or a training run dir
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    use_ema: bool = True
    steps: list[int] = field(default_factory=list)  # schedule steps k to noise to
    times: list[float] = field(default_factory=list)  # OU times t = -½ log ᾱ, mapped to the first k with t_k >= t
    num_images: int = 8  # real images noised and denoised
    split: str = "test"  # dataset split the images come from
    seed: int = 0  # picks the images and seeds their noise (image i: seed + i)
    strip_frames: int = 10  # columns of the x̂_0 strip
    strip_images: int = 4  # images in the x̂_0 strip
    schedules: list[str] = field(default_factory=lambda: ["linear", "cosine", "quadratic"])  # compared in schedules.png
    tensorboard: bool = False  # also log plots and metrics to <run dir>/tb
    device: str = "auto"
    precision: str = "fp32"
    overwrite: bool = False
    progress: bool = True
    paths: DataPaths = field(default_factory=DataPaths)


def register_sample_configs(cs: ConfigStore) -> None:
    """Register the schemas (called from :func:`ddpm.config.register_configs`)."""
    cs.store(name="sample_schema", node=SampleConfig)
    cs.store(name="visualize_schema", node=VisualizeConfig)


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def _check_common(cfg: Any) -> None:
    _check(
        not OmegaConf.is_missing(cfg, "ckpt") and bool(cfg.ckpt), "pass the checkpoint to use: ckpt=PATH (a .pt file or a training run dir)"
    )
    _check(cfg.precision in ("fp32", "fp16", "bf16"), f"precision must be fp32, fp16 or bf16, got {cfg.precision!r}")


def validate_sample(cfg: Any) -> None:
    """Range checks of a ``sample`` config; raises :class:`ConfigError`."""
    _check_common(cfg)
    _check(cfg.num_samples >= 1, f"num_samples must be >= 1, got {cfg.num_samples}")
    _check(cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}")
    _check(cfg.grid_images >= 1, f"grid_images must be >= 1, got {cfg.grid_images}")
    g = cfg.gif
    _check(g.frames >= 0, f"gif.frames must be >= 0 (0 writes no GIFs), got {g.frames}")
    _check(g.fps > 0, f"gif.fps must be > 0, got {g.fps}")
    _check(g.num_images >= 1, f"gif.num_images must be >= 1, got {g.num_images}")
    _check(g.scale >= 1, f"gif.scale must be >= 1, got {g.scale}")


def validate_visualize(cfg: Any) -> None:
    """Range checks of a ``visualize`` config; raises :class:`ConfigError`."""
    _check_common(cfg)
    _check(len(cfg.steps) + len(cfg.times) > 0, "choose where to noise to: steps=[k,...] (schedule steps) and/or times=[t,...] (OU times)")
    _check(cfg.num_images >= 1, f"num_images must be >= 1, got {cfg.num_images}")
    _check(cfg.split in ("train", "test"), f"split must be train or test, got {cfg.split!r}")
    _check(cfg.strip_frames >= 2, f"strip_frames must be >= 2, got {cfg.strip_frames}")
    _check(cfg.strip_images >= 1, f"strip_images must be >= 1, got {cfg.strip_images}")
    _check(all(t > 0 for t in cfg.times), f"times must be > 0, got {list(cfg.times)}")
