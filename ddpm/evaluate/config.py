"""Typed schema of ``conf/evaluate.yaml`` and the ``feature_extractor`` group, with each field's rule beside it."""

# ruff: noqa: UP045  (OmegaConf structured configs need typing.Optional, not X | None)

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from ddpm.config import MemorisationConfig, PathsConfig, RuntimeConfig, SamplerConfig, rule, validates

MAX_GUIDANCE = 100.0  # far beyond useful scales (1-10): a larger one is a typo
METRICS = ("fid", "kid", "isc", "coverage", "denoise", "memorisation")
# What ddpm-evaluate writes into its run dir (an earlier run's are kept unless overwrite=true).
OUTPUTS = ("metrics.json", "samples.png", "samples.npz", "memorisation.png", "tb")


@dataclass
class FeatureExtractorConfig:
    name: str = MISSING  # mnist, inception
    # domain (the project's classifier) or inception (torch-fidelity's inception-v3-compat)
    kind: str = field(default=MISSING, metadata=rule(choices=("domain", "inception")))
    dataset: Optional[str] = None  # domain: the dataset the classifier is trained on
    weights_path: Optional[str] = None  # torch-fidelity's feature_extractor_weights_path; null = cache/default place
    train_if_missing: bool = True  # domain: train the classifier on first use (minutes on CPU)
    # fewer generated samples than this give a warning: FID is biased upwards
    min_samples: int = field(default=10000, metadata=rule(ge=0))


@dataclass
class DenoiseSection:
    steps: list[int] = field(default_factory=lambda: [50, 100, 200, 400])  # schedule steps k to noise to
    num_images: int = field(default=256, metadata=rule(ge=1))  # held-out (test split) images


@dataclass
class MemorisationSection(MemorisationConfig):
    grid: int = field(default=16, metadata=rule(ge=0))  # most memorised samples shown beside their nearest training image


@dataclass
class EvaluateConfig:
    ckpt: str = MISSING  # checkpoint file (last.pt, step_*.pt), or a training run dir (its checkpoints/last.pt)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    feature_extractor: FeatureExtractorConfig = field(default_factory=FeatureExtractorConfig)
    metrics: list[str] = field(default_factory=lambda: list(METRICS), metadata=rule(choices=METRICS, min_len=1, item="metric"))
    num_samples: int = field(default=1000, metadata=rule(ge=2))  # generated images for fid/kid/isc/coverage/memorisation
    num_real: Optional[int] = field(default=None, metadata=rule(ge=2, optional=True))  # real images for FID/KID (null = the whole split)
    split: str = field(default="train", metadata=rule(choices=("train", "test")))  # dataset split the generated images are compared with
    batch_size: int = field(default=250, metadata=rule(gt=0))
    seed: int = 0  # sample i starts from seed + i
    use_ema: bool = True
    # Conditional checkpoints: sample i is of class i % classes, guided with this scale (1: conditional);
    # metrics.json then holds the per-class accuracy of the samples under the domain classifier.
    guidance_scale: float = field(default=1.0, metadata=rule(ge=0.0, le=MAX_GUIDANCE))
    kid_subsets: int = field(default=100, metadata=rule(ge=1))
    kid_subset_size: int = field(default=1000, metadata=rule(ge=2))  # shrunk to the sample counts when they are smaller
    denoise: DenoiseSection = field(default_factory=DenoiseSection)
    memorisation: MemorisationSection = field(default_factory=MemorisationSection)
    paths: PathsConfig = field(default_factory=PathsConfig)
    overwrite: bool = False  # allow replacing the outputs of an earlier run in the same run dir
    progress: bool = True


@validates(EvaluateConfig)
def validate_evaluate(cfg: Any) -> None:
    """Checks of an ``evaluate`` config before any work: every field rule of :class:`EvaluateConfig` (it
    has no rule that spans several fields); raises :class:`ConfigError`.

    Args:
        cfg: the composed ``evaluate`` config.
    """
