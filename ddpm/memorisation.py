"""The copy criterion: does a generated image sit much closer to one training image than to any other?

For each generated sample x we find the Euclidean distances d1 <= d2 (pixel space, [0, 1] scale) to
its nearest and second-nearest training images. A copy of a training image has d1 ≈ 0 while d2
stays large, so the ratio d1 / d2 is small; a novel sample is about as far from its two nearest
neighbours (ratio near 1). Samples with ratio < k (``memorisation.threshold``, 1/3 by default) are
copies (Yoon et al. 2023; Bonnaire et al. 2025), and f_mem is their fraction, with a bootstrap
standard error.

One function and one key serve every command: ``ddpm-evaluate``'s memorisation metric,
``ddpm-regimes regimes=trained``, ``train.regimes_every`` and the memorisation-law collector. The
reference set is what the network saw: a run trained with ``dataset.hflip`` saw each image and its
mirror, so its reference holds 2n images (:func:`reference_images`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddpm.errors import ConfigError

DEFAULT_THRESHOLD = 1.0 / 3.0
BOOTSTRAP_DRAWS = 1000


def bootstrap_se(flags: np.ndarray, draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> float:
    """Bootstrap standard error of the mean of ``flags`` (resampled with replacement, seeded).

    Args:
        flags: per-sample 0/1 (or real) values.
        draws: bootstrap resamples.
        seed: seed of the resampling (the same flags give the same error).
    """
    v = np.asarray(flags, dtype=np.float64)
    if v.size < 2:
        return 0.0
    idx = np.random.default_rng(seed).integers(0, v.size, size=(draws, v.size))
    return float(v[idx].mean(1).std(ddof=1))


def reference_images(images: torch.Tensor, hflip: bool) -> torch.Tensor:
    """The images a run trained on, as the copy criterion and the exact score see them.

    Args:
        images: training images (n, C, H, W) in any range.
        hflip: the run trained with random horizontal flips: its mirrors are training images too,
            so the reference holds 2n images (the originals first).
    """
    return torch.cat([images, images.flip(-1)]) if hflip else images


@dataclass
class Memorisation:
    """Nearest-neighbour statistics of a generated set.

    Args:
        d1: distance of each sample to its nearest training image.
        d2: distance to the second-nearest training image.
        nearest: index of the nearest training image.
        ratio: d1 / d2 (0 where both are 0: an exact copy of a duplicated training image).
        threshold: ratio below which a sample counts as memorised.
    """

    d1: np.ndarray
    d2: np.ndarray
    nearest: np.ndarray
    ratio: np.ndarray
    threshold: float

    @property
    def memorised(self) -> np.ndarray:
        return self.ratio < self.threshold

    @property
    def fraction(self) -> float:
        return float(self.memorised.mean())

    @property
    def fraction_se(self) -> float:
        """Bootstrap standard error of :attr:`fraction`."""
        return bootstrap_se(self.memorised)

    def summary(self, num_train: int) -> dict:
        """JSON-ready numbers, each with the counts it comes from."""
        return {
            "num_samples": int(len(self.ratio)),
            "num_train": int(num_train),
            "threshold": self.threshold,
            "fraction_memorised": self.fraction,
            "fraction_memorised_se": self.fraction_se,
            "num_memorised": int(self.memorised.sum()),
            "ratio_min": float(self.ratio.min()),
            "ratio_median": float(np.median(self.ratio)),
            "nearest_distance_median": float(np.median(self.d1)),
            "distance_space": "pixels in [0, 1], Euclidean",
        }


def _flat(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255.0 if x.dtype == torch.uint8 else x.float()).flatten(1)


@torch.no_grad()
def nearest_two(
    samples: torch.Tensor, train: torch.Tensor, chunk: int = 4096, device: torch.device | str = "cpu", mirrored: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances to, and indices of, the two nearest rows of ``train`` for each of ``samples``.

    Args:
        samples: generated images (N, ...); uint8 images are scaled to [0, 1].
        train: training images (M, ...) with M >= 2, same shape and scaling as ``samples`` (a lazily
            decoded split too: it is read ``chunk`` images at a time).
        chunk: training images compared per matrix product (bounds memory at N x chunk).
        device: where to compute.
        mirrored: compare with the horizontal mirror of every training image too; index M + μ is
            the mirror of μ (the order of :func:`reference_images`).
    """
    if len(train) < 2:
        raise ValueError("memorisation needs at least two training images")
    q = _flat(samples).to(device, torch.float64)
    q2 = (q * q).sum(1, keepdim=True)
    best_d = torch.full((len(q), 2), float("inf"), dtype=torch.float64, device=device)
    best_i = torch.zeros((len(q), 2), dtype=torch.long, device=device)
    for start in range(0, len(train), chunk):
        images = train[start : start + chunk]
        images = images if isinstance(images, torch.Tensor) else images.decode()  # a lazily decoded split: this chunk only
        for offset, part in ((0, images), (len(train), images.flip(-1) if mirrored else None)):
            if part is None:
                continue
            r = _flat(part).to(device, torch.float64)
            # ||q - r||² = ||q||² - 2 q·r + ||r||², in float64 so that exact copies give 0
            d = (q2 - 2 * q @ r.T + (r * r).sum(1)[None]).clamp_min(0)
            cand_d = torch.cat([best_d, d], 1)
            first = offset + start
            cand_i = torch.cat([best_i, torch.arange(first, first + len(r), device=device).expand(len(q), -1)], 1)
            best_d, pos = cand_d.topk(2, dim=1, largest=False)
            best_i = cand_i.gather(1, pos)
    return best_d.sqrt().cpu(), best_i.cpu()


def memorisation(
    samples: torch.Tensor,
    train: torch.Tensor,
    threshold: float = DEFAULT_THRESHOLD,
    device: torch.device | str = "cpu",
    mirrored: bool = False,
) -> Memorisation:
    """Nearest-neighbour ratio test of ``samples`` against ``train`` (see the module docstring).

    Args:
        samples: generated images (N, C, H, W), uint8 or float.
        train: the training images, same format.
        threshold: ratio d1/d2 below which a sample is memorised (1/3 by default), in (0, 1).
        device: where to compute the distances.
        mirrored: the run trained with flips: the mirrors of ``train`` are reference images too
            (indices from ``len(train)`` on), without building the 2n-image tensor.
    """
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"memorisation.threshold must lie in (0, 1), got {threshold}")
    d, idx = nearest_two(samples, train, device=device, mirrored=mirrored)
    d1, d2 = d[:, 0].numpy(), d[:, 1].numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(d2 > 0, d1 / np.where(d2 > 0, d2, 1.0), 0.0)
    return Memorisation(d1, d2, idx[:, 0].numpy(), ratio, float(threshold))


def save_memorisation_grid(samples: torch.Tensor, train: torch.Tensor, result: Memorisation, path: str | Path, count: int = 16) -> Path:
    """Save a two-row grid: the ``count`` most memorised samples (top) over their nearest training images (bottom).

    Args:
        samples: generated uint8 images (N, C, H, W).
        train: training uint8 images.
        result: the :func:`memorisation` result for these samples.
        path: PNG file to write.
        count: how many pairs (the lowest ratios first).
    """
    from torchvision.utils import save_image

    from ddpm.checkpoint import atomic_write

    order = np.argsort(result.ratio, kind="stable")[: min(count, len(result.ratio))]
    top = samples[torch.as_tensor(order)].float() / 255.0
    nearest = torch.as_tensor(result.nearest[order])
    # an index from len(train) on is a mirror (``mirrored``): one read of the originals, then the flips
    mirror = nearest >= len(train)
    bottom = train[nearest % len(train)].float() / 255.0
    bottom[mirror] = bottom[mirror].flip(-1)
    path = Path(path)
    grid = torch.cat([top, bottom])
    atomic_write(path, lambda f: save_image(grid, f, nrow=len(order), padding=2, pad_value=0.5, format="PNG"))  # no torn file
    return path
