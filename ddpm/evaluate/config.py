"""Typed schema of ``conf/evaluate.yaml`` and the ``feature_extractor`` group, and its range checks."""

# ruff: noqa: UP045  (OmegaConf structured configs need typing.Optional, not X | None)

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from ddpm.config import MemorisationConfig, PathsConfig, RuntimeConfig, SamplerConfig, _check, check_memorisation, checks_runtime

MAX_GUIDANCE = 100.0  # far beyond useful scales (1-10): a larger one is a typo
METRICS = ("fid", "kid", "isc", "coverage", "denoise", "memorisation")
# What ddpm-evaluate writes into its run dir (an earlier run's are kept unless overwrite=true).
OUTPUTS = ("metrics.json", "samples.png", "samples.npz", "memorisation.png", "tb")


@dataclass
class FeatureExtractorConfig:
    name: str = MISSING  # mnist, inception
    kind: str = MISSING  # domain (the project's classifier) or inception (torch-fidelity's inception-v3-compat)
    dataset: Optional[str] = None  # domain: the dataset the classifier is trained on
    weights_path: Optional[str] = None  # torch-fidelity's feature_extractor_weights_path; null = cache/default place
    train_if_missing: bool = True  # domain: train the classifier on first use (minutes on CPU)
    min_samples: int = 10000  # fewer generated samples than this give a warning: FID is biased upwards


@dataclass
class DenoiseSection:
    steps: list[int] = field(default_factory=lambda: [50, 100, 200, 400])  # schedule steps k to noise to
    num_images: int = 256  # held-out (test split) images


@dataclass
class MemorisationSection(MemorisationConfig):
    grid: int = 16  # most memorised samples shown beside their nearest training image


@dataclass
class EvaluateConfig:
    ckpt: str = MISSING  # checkpoint file (last.pt, step_*.pt), or a training run dir (its checkpoints/last.pt)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    feature_extractor: FeatureExtractorConfig = field(default_factory=FeatureExtractorConfig)
    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    num_samples: int = 1000  # generated images for fid/kid/isc/coverage/memorisation
    num_real: Optional[int] = None  # real images for FID/KID (null = the whole split)
    real_split: str = "train"  # split the generated images are compared with
    batch_size: int = 250
    seed: int = 0  # sample i starts from seed + i
    use_ema: bool = True
    # Conditional checkpoints: sample i is of class i % classes, guided with this scale (1: conditional);
    # metrics.json then holds the per-class accuracy of the samples under the domain classifier.
    guidance_scale: float = 1.0
    kid_subsets: int = 100
    kid_subset_size: int = 1000  # shrunk to the sample counts when they are smaller
    denoise: DenoiseSection = field(default_factory=DenoiseSection)
    memorisation: MemorisationSection = field(default_factory=MemorisationSection)
    paths: PathsConfig = field(default_factory=PathsConfig)
    overwrite: bool = False  # allow replacing the outputs of an earlier run in the same run dir
    progress: bool = True


@checks_runtime
def validate_evaluate(cfg: Any) -> None:
    """Range checks of an evaluate config; raises :class:`ConfigError`.

    Args:
        cfg: the composed ``evaluate`` config.
    """
    bad = [m for m in cfg.metrics if m not in METRICS]
    _check(not bad, f"unknown metric(s) {bad}; choose from {', '.join(METRICS)}")
    _check(len(cfg.metrics) > 0, "metrics is empty; choose from " + ", ".join(METRICS))
    _check(cfg.num_samples >= 2, f"num_samples must be >= 2, got {cfg.num_samples}")
    _check(cfg.num_real is None or cfg.num_real >= 2, f"num_real must be >= 2 or null, got {cfg.num_real}")
    _check(cfg.real_split in ("train", "test"), f"real_split must be train or test, got {cfg.real_split!r}")
    _check(cfg.batch_size > 0, f"batch_size must be > 0, got {cfg.batch_size}")
    _check(
        math.isfinite(cfg.guidance_scale) and 0 <= cfg.guidance_scale <= MAX_GUIDANCE,
        f"guidance_scale must lie in [0, {MAX_GUIDANCE}], got {cfg.guidance_scale}",
    )
    _check(cfg.kid_subsets >= 1, f"kid_subsets must be >= 1, got {cfg.kid_subsets}")
    _check(cfg.kid_subset_size >= 2, f"kid_subset_size must be >= 2, got {cfg.kid_subset_size}")
    fe = cfg.feature_extractor
    _check(fe.kind in ("domain", "inception"), f"feature_extractor.kind must be domain or inception, got {fe.kind!r}")
    _check(fe.min_samples >= 0, f"feature_extractor.min_samples must be >= 0, got {fe.min_samples}")
    _check(cfg.denoise.num_images >= 1, f"denoise.num_images must be >= 1, got {cfg.denoise.num_images}")
    check_memorisation(cfg.memorisation)
    _check(cfg.memorisation.grid >= 0, f"memorisation.grid must be >= 0, got {cfg.memorisation.grid}")
