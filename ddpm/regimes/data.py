"""Training points for the regimes analyses: synthetic Gaussians or flattened images in [-1, 1]."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from ddpm.data import load_dataset, open_split, to_model_range
from ddpm.data.subset import recorded_indices, subset_indices
from ddpm.errors import ConfigError
from ddpm.memorisation import reference_images
from ddpm.regimes.config import SYNTHETIC, SyntheticConfig
from ddpm.regimes.seeds import generator

_SYNTHETIC_DEFAULTS = SyntheticConfig(name="none")  # the law keys an image source carries unused (the records read them)
_DRAWS = ("n", "seed")  # synthetic.n / synthetic.seed: the draws of a law; images take dataset.n / dataset.subset_seed


@dataclass
class Points:
    """n training points in R^d and what is known about their law.

    Args:
        x: float64 points (n, d).
        labels: int64 classes (n,) or None.
        shape: shape of one point as an image (C, H, W), or (d,) for synthetic data.
        scaling: the pixel scaling of the points (recorded in every output).
        population_eigs: exact covariance eigenvalues of the generating law (synthetic data), else None.
        reference: points the data spectrum is estimated from (all images of the split for a subset), or None.
        class_means: mixture class means (C, d), or None.
        source: a description for the records.
    """

    x: torch.Tensor
    labels: torch.Tensor | None
    shape: tuple[int, ...]
    scaling: str
    population_eigs: np.ndarray | None = None
    reference: torch.Tensor | None = None
    class_means: torch.Tensor | None = None
    source: str = ""

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def d(self) -> int:
        return self.x.shape[1]


def data_source(cfg: DictConfig) -> DictConfig:
    """The training points' source as one node: ``name``, ``downsample`` (the ``points`` group), the
    synthetic law's keys (``d``, ``sigma2``, ..., and for a law ``n`` and ``seed``, its draws) and
    ``dataset`` (the image dataset node, whose ``n`` and ``subset_seed`` pick the training subset,
    or None for a synthetic law).

    Args:
        cfg: the composed ``regimes`` config (``synthetic``, when set, replaces ``dataset``).
    """
    points = OmegaConf.to_container(cfg.points, resolve=True)
    if cfg.synthetic is not None:
        return OmegaConf.create({**OmegaConf.to_container(cfg.synthetic, resolve=True), **points, "dataset": None})
    defaults = OmegaConf.to_container(OmegaConf.structured(_SYNTHETIC_DEFAULTS), resolve=True)
    law = {k: v for k, v in defaults.items() if k != "name" and k not in _DRAWS}
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    return OmegaConf.create({**law, **points, "name": str(cfg.dataset.name), "dataset": dataset})


def spectrum_eigs(d: int, sigma2: float, power: float) -> np.ndarray:
    """λ_i ∝ i^-power, i = 1..d, scaled to mean ``sigma2``."""
    lam = np.arange(1, d + 1, dtype=np.float64) ** (-float(power))
    return lam * (sigma2 / lam.mean())


def mixture_means(classes: int, d: int, mu: float, seed: int) -> torch.Tensor:
    """Class means with |m_c|² = d μ̃²: ±(μ̃, ..., μ̃) for two classes, seeded random directions otherwise."""
    if classes == 2:
        m = torch.full((d,), float(mu), dtype=torch.float64)
        return torch.stack([m, -m])
    g = generator(seed, "mixture-means")
    dirs = torch.randn(classes, d, generator=g, dtype=torch.float64)
    return dirs / dirs.norm(dim=1, keepdim=True) * (math.sqrt(d) * mu)


def hierarchical_tree(cfg):
    """The tree of ``synthetic=hierarchical`` (seeded by ``synthetic.seed``; :mod:`ddpm.regimes.hierarchy`)."""
    from ddpm.regimes.hierarchy import synthetic_tree

    return synthetic_tree(int(cfg.depth), int(cfg.branching), [float(s) for s in cfg.separation], int(cfg.d), int(cfg.seed))


def sample_synthetic(cfg, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Draw ``n`` points of the synthetic law described by ``cfg`` (a :func:`data_source` node) with ``seed``."""
    g = generator(seed, "data")
    z = torch.randn(n, int(cfg.d), generator=g, dtype=torch.float64)
    if cfg.name == "gaussian":
        return z * math.sqrt(cfg.sigma2), None
    if cfg.name == "gaussian_spectrum":
        return z * torch.from_numpy(np.sqrt(spectrum_eigs(int(cfg.d), cfg.sigma2, cfg.power))), None
    if cfg.name == "mixture":
        labels = torch.randint(0, int(cfg.classes), (n,), generator=g)
        means = mixture_means(int(cfg.classes), int(cfg.d), cfg.mu, cfg.seed)
        return means[labels] + cfg.sigma * z, labels
    if cfg.name == "hierarchical":
        tree = hierarchical_tree(cfg)
        labels = torch.randint(0, len(tree.leaf_weights), (n,), generator=g)
        return tree.leaf_centres[labels] + math.sqrt(cfg.sigma2) * z, labels
    raise ConfigError(f"unknown synthetic data {cfg.name!r}; choose one of {', '.join(SYNTHETIC)}")


def _images(cfg, data_dir: str | Path, cache_dir: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, ...], str]:
    data = open_split(cfg.dataset, data_dir, cache_dir, split, load_dataset)  # over the memory budget: decoded as read, no .npy cache
    x = to_model_range(data.images).double()
    f = int(cfg.downsample)
    if f > 1:
        if x.shape[-1] % f:
            raise ConfigError(f"points.downsample={f} does not divide the image size {x.shape[-1]}")
        x = F.avg_pool2d(x, f)
    return x.flatten(1), data.labels, tuple(x.shape[1:]), data.source


def load_points(
    cfg, data_dir: str | Path, cache_dir: str | Path, split: str = "train", subset: dict | None = None, mirrored: bool = False
) -> Points:
    """The training points of a source node.

    Args:
        cfg: the source node of :func:`data_source` (name, downsample, d, sigma2, ..., n and seed
            for a synthetic law, dataset for images).
        data_dir: the data root for image datasets.
        cache_dir: decoded-archive cache for image datasets.
        split: ``train`` or ``test`` (held-out points, all of the split; synthetic data draws a fresh sample).
        subset: a checkpoint's training-subset record: the train split is narrowed to exactly those
            images (else to the class-balanced subset of ``dataset.n``, ``dataset.subset_seed`` and
            ``dataset.subset_part`` when set: the images ``ddpm-train`` trains on,
            :func:`ddpm.data.subset.subset_indices`).
        mirrored: add the horizontal mirror of every training image (a run trained with
            ``dataset.hflip``: 2n points, the originals first; :func:`ddpm.memorisation.reference_images`).
    """
    if cfg.name in SYNTHETIC:
        n = int(cfg.n)
        x, labels = sample_synthetic(cfg, n, cfg.seed if split == "train" else int(cfg.seed) + 1_000_003)
        eigs = None
        means = None
        if cfg.name == "gaussian":
            eigs = np.full(int(cfg.d), float(cfg.sigma2))
        elif cfg.name == "gaussian_spectrum":
            eigs = spectrum_eigs(int(cfg.d), cfg.sigma2, cfg.power)
        else:
            if cfg.name == "hierarchical":  # leaves: Gaussian clusters N(m_leaf, σ² I)
                means, var = hierarchical_tree(cfg).leaf_centres, float(cfg.sigma2)
            else:
                means, var = mixture_means(int(cfg.classes), int(cfg.d), cfg.mu, cfg.seed), float(cfg.sigma) ** 2
            # Equal-weight classes: covariance σ² I + (1/C) Σ m_c m_cᵀ - m̄ m̄ᵀ.
            mbar = means.mean(0)
            cov = var * torch.eye(int(cfg.d), dtype=torch.float64) + (means.T @ means) / len(means) - torch.outer(mbar, mbar)
            eigs = torch.linalg.eigvalsh(cov).flip(0).numpy()
        return Points(x, labels, (int(cfg.d),), "synthetic (no pixel scaling)", eigs, None, means, cfg.name)
    x, labels, shape, source = _images(cfg, data_dir, cache_dir, split)
    full = x
    keep = None
    if split == "train" and subset is not None:
        keep = recorded_indices(len(x), labels, subset, "the checkpoint")
    elif split == "train":  # the images ddpm-train trains on
        d = cfg.dataset
        keep = subset_indices(len(x), labels, d.get("n"), int(d.get("subset_seed", 0) or 0), d.get("subset_part"), cfg.name)
    if keep is not None:
        x = x[keep]
        labels = labels[keep] if labels is not None else None
    if mirrored and split == "train":
        x = reference_images(x.view(len(x), *shape), True).flatten(1)
        labels = None if labels is None else torch.cat([labels, labels])
    return Points(x, labels, shape, "[-1, 1] (uint8 / 127.5 - 1, as in training)", None, full, None, source)
