"""Fast scores of generated images against a dataset's training split, for use inside a training loop.

:class:`SampleScorer` measures a batch of generated images (a few hundred, in about a second on a
CPU) in the feature space of the dataset's domain classifier (:mod:`ddpm.evaluate.classifier`):

- ``fid``: Fréchet distance of the samples' 128-d classifier features to the training split's;
- ``kid``: mean kernel distance to the training features, with the subset size shrunk to the
  sample count.

  Both are computed by the functions ``ddpm-evaluate`` uses (:func:`ddpm.evaluate.fidelity.frechet_distance`,
  :func:`~ddpm.evaluate.fidelity.kernel_distance`), so they equal what ``ddpm-evaluate
  feature_extractor=mnist split=train`` reports for the same images;
- ``class_entropy``, ``confidence``, ``confident_fraction``: the classifier's view of the samples
  (normalised entropy of the predicted-class histogram, 1 = every class equally often; mean top-class
  probability; share of samples above :data:`CONFIDENT`);
- ``blob_fraction``: share of *blob tiles* (:class:`BlobBounds`), the failure mode of an undertrained
  model: a white or grey blob, or noise on a grey square, instead of a clean drawing.

The training-split reference (feature mean/covariance, the KID subset and the blob bounds) is
computed once and cached under ``<cache_dir>/sample_quality/``, in a file named by the classifier's
digest, so a retrained classifier never meets stale statistics.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from ddpm.errors import ConfigError
from ddpm.evaluate.classifier import centre_pad
from ddpm.evaluate.fidelity import feature_statistics, frechet_distance, kernel_distance

log = logging.getLogger(__name__)

SCORER_VERSION = 2  # bump when the cached reference changes meaning: old caches are recomputed
CONFIDENT = 0.9  # a sample whose top class has more probability than this counts as confident

# Blob tiles. Each image is summarised by a few statistics of its pixels (intensities in [0, 1]);
# a training image lies inside [q0.1%, q99.9%] of each by construction, and an image outside any
# widened range is a blob. The margin (absolute + relative to the range) keeps real images inside:
# with the whole MNIST training split as reference it flags 2 of the 10,000 test digits and 18 of
# the 60,000 training digits, and on the README's grid of the 90-minute mnist_cpu model the 5 tiles
# a reader counts as blobs.
BLOB_QUANTILES = (0.001, 0.999)
BLOB_ABS_MARGIN = 0.02
BLOB_REL_MARGIN = 0.1
INK_THRESHOLD = 0.25  # a pixel this far from the image's background level is ink
BLOB_STATISTICS = ("mean", "border_mean", "border_std", "mid_fraction", "roughness", "compactness")
BLOB_BATCH = 10_000  # images per blob-statistics call (a statistic's last bits depend on the batch)
REFERENCE_KEYS = {"mu", "sigma", "train_features", "blob_low", "blob_high", "num_train"}


def _as_float_unit(images_u8: torch.Tensor) -> torch.Tensor:
    return images_u8.float() / 255.0


def blob_statistics(images_u8: torch.Tensor) -> torch.Tensor:
    """Per-image statistics that separate clean images from blobs, as an (N, 6) float tensor.

    Columns (:data:`BLOB_STATISTICS`), on intensities in [0, 1]:

    - ``mean``: mean intensity (a white or grey square is far brighter than any digit);
    - ``border_mean``, ``border_std``: level and spread of the outer ring of width H/8, the
      background (black and flat for MNIST; grey or noisy for a failed sample);
    - ``mid_fraction``: share of mid-grey pixels (0.15 < v < 0.85);
    - ``roughness``: mean absolute difference of neighbouring pixels (high for noise);
    - ``compactness``: thickness² / ink area, where ink is every pixel further than
      :data:`INK_THRESHOLD` from the median border colour and thickness is the number of 4-neighbour
      erosions the ink survives. A stroke is thin and long (MNIST q99.9% = 0.15); a disk is about
      1/π (0.32) whatever its radius.

    Args:
        images_u8: uint8 images (N, C, H, W).
    """
    x = _as_float_unit(images_u8)
    n, _, h, w = x.shape
    b = max(1, min(h, w) // 8)
    ring = torch.ones(h, w, dtype=torch.bool)
    ring[b:-b, b:-b] = False
    border = x[..., ring]  # (N, C, ring pixels)
    background = border.median(dim=2).values
    ink = ((x - background[..., None, None]).abs() > INK_THRESHOLD).any(1, keepdim=True).float()
    area = ink.sum((1, 2, 3))
    thickness = torch.zeros(n)
    core = ink
    for _ in range(min(h, w) // 2):
        p = F.pad(core, (1, 1, 1, 1))
        core = core * p[..., :-2, 1:-1] * p[..., 2:, 1:-1] * p[..., 1:-1, :-2] * p[..., 1:-1, 2:]
        alive = core.flatten(1).amax(1) > 0
        if not alive.any():
            break
        thickness += alive.float()
    roughness = (x[..., 1:, :] - x[..., :-1, :]).abs().mean((1, 2, 3)) + (x[..., :, 1:] - x[..., :, :-1]).abs().mean((1, 2, 3))
    return torch.stack(
        [
            x.mean((1, 2, 3)),
            border.mean((1, 2)),
            border.std(2).mean(1),
            ((x > 0.15) & (x < 0.85)).float().mean((1, 2, 3)),
            roughness,
            thickness**2 / area.clamp(min=1),
        ],
        dim=1,
    )


@dataclass
class BlobBounds:
    """The range of each blob statistic that clean images stay in, fitted on a dataset's training split.

    Args:
        low: lower bound of each statistic of :func:`blob_statistics` (6,).
        high: upper bound of each statistic (6,).
    """

    low: torch.Tensor
    high: torch.Tensor

    @classmethod
    def fit(cls, train_u8: torch.Tensor, batch_size: int = BLOB_BATCH) -> BlobBounds:
        """[q0.1%, q99.9%] of each statistic over ``train_u8``, widened by the margins.

        Args:
            train_u8: the training images, uint8 (N, C, H, W): a tensor, or a streamed split
                (:class:`ddpm.data.SplitImages`, decoded batch by batch).
            batch_size: images per statistics call (bounds the memory).
        """
        from ddpm.data.streaming import batches

        return cls.from_statistics(torch.cat([blob_statistics(b) for b in batches(train_u8, batch_size)]))

    @classmethod
    def from_statistics(cls, stats: torch.Tensor) -> BlobBounds:
        """The bounds from the :func:`blob_statistics` (N, 6) of the training images."""
        q = torch.quantile(stats.double(), torch.tensor(BLOB_QUANTILES, dtype=torch.float64), dim=0).float()
        margin = BLOB_ABS_MARGIN + BLOB_REL_MARGIN * (q[1] - q[0])
        return cls(low=q[0] - margin, high=q[1] + margin)

    def is_blob(self, images_u8: torch.Tensor) -> torch.Tensor:
        """Boolean (N,): which uint8 images (N, C, H, W) fall outside the bounds of any statistic."""
        s = blob_statistics(images_u8)
        return ((s < self.low) | (s > self.high)).any(1)

    def as_dict(self) -> dict[str, dict[str, float]]:
        """The bounds by statistic name (for records)."""
        return {k: {"low": float(lo), "high": float(hi)} for k, lo, hi in zip(BLOB_STATISTICS, self.low, self.high, strict=True)}


def normalised_class_entropy(probs: torch.Tensor) -> float:
    """Entropy of the predicted-class histogram of class probabilities (N, K), divided by log K."""
    from ddpm.evaluate.coverage import coverage_from_probabilities

    return float(coverage_from_probabilities(probs)["entropy_normalised"])


class SampleScorer:
    """Scores generated images against a dataset's training split in the domain classifier's feature space.

    Args:
        dataset_cfg: the ``dataset`` config node (a labelled dataset with a domain classifier).
        data_dir: the data root (``paths.data_dir``), read for the training split on first use.
        cache_dir: ``paths.cache_dir``: the classifier is looked up there (then the copy shipped
            with the package) and the training-split reference is cached under ``sample_quality/``.
        device: where the classifier runs.
        train_if_missing: train the classifier when neither a cached nor a shipped one exists
            (minutes on a CPU); otherwise that is a :class:`ConfigError`.
        num_reference: use a seeded random subset of this many training images as the reference
            (None: the whole split; MNIST's 60,000 take about a minute once on one CPU core).
    """

    def __init__(
        self,
        dataset_cfg,
        data_dir: str | Path,
        cache_dir: str | Path,
        device: str | torch.device = "cpu",
        train_if_missing: bool = False,
        num_reference: int | None = None,
    ) -> None:
        from ddpm.evaluate.classifier import default_classifier_path, get_classifier, packaged_classifier_path

        name = dataset_cfg.name
        if num_reference is not None and num_reference < 2:
            raise ConfigError(f"the reference needs at least 2 training images, got num_reference={num_reference}")
        if not dataset_cfg.get("num_classes"):
            raise ConfigError(f"dataset {name} has no class labels, so it has no domain classifier to score samples with")
        if not train_if_missing and not default_classifier_path(cache_dir, name).is_file() and packaged_classifier_path(name) is None:
            raise ConfigError(
                f"no domain classifier for {name} (looked in {default_classifier_path(cache_dir, name).parent} and the package); "
                "train one with scripts/train_classifier.py"
            )
        self.device = torch.device(device)
        self.dataset_cfg = dataset_cfg
        self.classifier = get_classifier(dataset_cfg, data_dir, cache_dir, train_if_missing=train_if_missing, device=self.device)
        self.model = self.classifier.model
        self.shape = (self.model.channels, self.model.image_size, self.model.image_size)
        # A network trained below the classifier's size (MNIST at its native 28 px) is scored as
        # the loader pads MNIST: centred on black. The reference is taken at the classifier's size.
        margin = self.model.image_size - int(dataset_cfg.image_size)
        self.pad = margin // 2
        if margin > 0 and margin % 2 == 0 and not dataset_cfg.get("resize"):
            self.dataset_cfg = dataset_cfg = OmegaConf.merge(dataset_cfg, {"image_size": self.model.image_size})
        else:
            self.pad = 0
        self.cache_path = (
            Path(cache_dir).expanduser()
            / "sample_quality"
            / f"{name}-{int(dataset_cfg.image_size)}px-train{num_reference or ''}-{self.classifier.digest}-v{SCORER_VERSION}.pt"
        )
        ref = self._load_reference() or self._compute_reference(data_dir, cache_dir, num_reference)
        self.train_stats = {"mu": ref["mu"].numpy(), "sigma": ref["sigma"].numpy()}
        self.train_features: torch.Tensor = ref["train_features"]
        self.blob_bounds = BlobBounds(ref["blob_low"], ref["blob_high"])
        self.num_train = int(ref["num_train"])

    # ------------------------------------------------------------------ the reference
    def _load_reference(self) -> dict | None:
        if not self.cache_path.is_file():
            return None
        try:
            ref = torch.load(self.cache_path, map_location="cpu", weights_only=True)
            if not set(ref) >= REFERENCE_KEYS:
                raise KeyError(f"missing {sorted(REFERENCE_KEYS - set(ref))}")
            return ref
        except Exception as exc:  # a damaged cache is recomputed, not fatal
            log.warning("recomputing the sample-quality reference: cannot read %s (%s)", self.cache_path, exc)
            return None

    @torch.no_grad()
    def _compute_reference(self, data_dir: str | Path, cache_dir: str | Path, num_reference: int | None) -> dict:
        from ddpm.data import load_dataset, open_split
        from ddpm.data.streaming import batches

        t0 = time.perf_counter()
        # A training split that streams (dataset.in_memory) is read 2,000 images at a time, never whole.
        d = self.dataset_cfg
        train = open_split(d, data_dir, cache_dir, "train", load_dataset).images
        if num_reference is not None and num_reference < len(train):
            train = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:num_reference].sort().values]
        feats, stats = [], []
        for chunk in batches(train, BLOB_BATCH):  # the batches of BlobBounds.fit, features 2,000 at a time: its numbers
            stats.append(blob_statistics(chunk))
            feats += [self.features_and_probs(chunk[i : i + 2000])[0] for i in range(0, len(chunk), 2000)]
        feats = torch.cat(feats)
        fid_stats = feature_statistics(feats)
        bounds = BlobBounds.from_statistics(torch.cat(stats))
        ref = {
            "mu": torch.from_numpy(fid_stats["mu"]),
            "sigma": torch.from_numpy(fid_stats["sigma"]),
            "train_features": feats,  # all of them, in split order: KID subsets drawn as ddpm-evaluate draws them
            "blob_low": bounds.low,
            "blob_high": bounds.high,
            "num_train": len(train),
            "version": SCORER_VERSION,
        }
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_path.with_suffix(f".pt.{os.getpid()}.tmp")
        torch.save(ref, tmp)
        tmp.replace(self.cache_path)  # atomic: a concurrent reader sees the old file or the whole new one
        log.info(
            "sample-quality reference of %d training images in %.1f s (cached at %s)", len(train), time.perf_counter() - t0, self.cache_path
        )
        return ref

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def features_and_probs(self, images_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Classifier features (N, 128) and class probabilities (N, K) of uint8 images, on the CPU."""
        x = self.model.preprocess(images_u8[:, : self.model.channels].to(self.device))
        feats, logits = self.model.features_and_logits(x)
        return feats.float().cpu(), logits.float().softmax(1).cpu()

    def _to_uint8(self, images: torch.Tensor) -> torch.Tensor:
        from ddpm.data import from_model_range

        if self.pad and images.dim() == 4:
            images = centre_pad(images, self.shape[-1], -1.0)  # black in the model's range
        if images.dim() != 4 or tuple(images.shape[1:]) != self.shape:
            raise ConfigError(f"expected images of shape (N, {', '.join(map(str, self.shape))}), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ConfigError(f"expected float images in [-1, 1], got {images.dtype}")
        # Quantised like every saved sample (and like ddpm-evaluate scores them).
        return from_model_range(images.detach().cpu())

    def is_blob(self, images: torch.Tensor) -> torch.Tensor:
        """Boolean (N,): which images (float in [-1, 1], NCHW) are blob tiles (see :class:`BlobBounds`)."""
        return self.blob_bounds.is_blob(self._to_uint8(images))

    def score(self, images: torch.Tensor) -> dict[str, float]:
        """Scores of generated images (float in [-1, 1], NCHW, at least 2).

        Returns ``fid``, ``kid``, ``class_entropy`` (normalised, 1 = uniform over classes),
        ``confidence`` (mean top-class probability), ``confident_fraction`` (share above
        :data:`CONFIDENT`), ``blob_fraction`` and ``n``.
        """
        u8 = self._to_uint8(images)
        if len(u8) < 2:
            raise ConfigError(f"scoring needs at least 2 images, got {len(u8)}")
        feats, probs = [], []
        for i in range(0, len(u8), 1000):
            f, p = self.features_and_probs(u8[i : i + 1000])
            feats.append(f)
            probs.append(p)
        feats_t, probs_t = torch.cat(feats), torch.cat(probs)
        top = probs_t.max(1).values
        return {
            "fid": frechet_distance(feature_statistics(feats_t), self.train_stats),
            "kid": kernel_distance(feats_t, self.train_features).mean,
            "class_entropy": normalised_class_entropy(probs_t),
            "confidence": float(top.mean()),
            "confident_fraction": float((top > CONFIDENT).float().mean()),
            "blob_fraction": float(self.blob_bounds.is_blob(u8).float().mean()),
            "n": len(u8),
        }
