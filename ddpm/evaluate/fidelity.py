"""FID, KID and Inception Score through torch-fidelity, with offline-safe feature extractors.

Two kinds of feature extractor:

- ``inception``: torch-fidelity's ``inception-v3-compat`` (the 2015 TensorFlow Inception network
  that published FID/IS numbers use). Its weights file must be on disk or downloadable; without
  either we fail at once with the file name and where to put it instead of letting a download hang.
- ``mnist`` (any labelled dataset): the project's domain classifier (:mod:`ddpm.evaluate.classifier`),
  registered with torch-fidelity as a custom feature extractor. FID/KID are then measured in its
  128-d feature space and IS on its logits. Numbers from different extractors are not comparable.

Real-image features are cached by torch-fidelity under ``cache_root`` with a name that includes the
dataset, split, image count and the extractor (plus the classifier's file digest), so a second
evaluation against the same data does not recompute them.

FID and KID are computed here once, from features, for every caller: :func:`frechet_distance` (of
:func:`feature_statistics`) and :func:`kernel_distance` with its one subset-size rule
(:func:`kid_subset_size`); ``ddpm-evaluate`` (:func:`fidelity_metrics`) and the training-time scorer
(:mod:`ddpm.evaluate.sample_quality`) both call them.
"""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ddpm.data.streaming import SplitImages
from ddpm.errors import ConfigError, DataError

log = logging.getLogger(__name__)

INCEPTION_NAME = "inception-v3-compat"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
DOMAIN_NAME = "ddpm-domain-classifier"  # torch-fidelity registry name of the classifier extractor
FIDELITY_METRICS = ("fid", "kid", "isc")
DOWNLOAD_TIMEOUT_S = 20.0  # socket timeout of the weights download
KID_SUBSETS = 100
KID_MAX_SUBSET = 1000
KID_SEED = 2020  # torch-fidelity's default, so KID subsets are the same in every call


class UInt8Images(Dataset):
    """Images as torch-fidelity wants them: uint8 tensors (3, H, W); grey images are repeated to RGB.

    Args:
        images: uint8 tensor (N, 1 or 3, H, W), or a split that streams
            (:class:`ddpm.data.SplitImages`): each image is then decoded when torch-fidelity reads it,
            so the real statistics of a dataset beyond the memory budget hold one batch at a time.
    """

    def __init__(self, images: torch.Tensor | SplitImages) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected uint8 images (N, 1|3, H, W), got {images.dtype} {tuple(images.shape)}")
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.images[i]
        return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


def _domain_extractor_class():
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    from ddpm.evaluate.classifier import FEATURE_DIM, DomainClassifier, load_classifier

    class DomainClassifierExtractor(FeatureExtractorBase):
        """torch-fidelity extractor over the project's domain classifier.

        Features: ``"128"`` (the embedding, used for FID/KID), ``"logits_unbiased"`` (IS) and
        ``"logits"``. ``feature_extractor_weights_path`` must name a classifier file.
        """

        def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None, **kwargs) -> None:
            super().__init__(name, features_list)
            if not feature_extractor_weights_path:
                raise ConfigError("the domain-classifier feature extractor needs its classifier file (feature_extractor_weights_path)")
            self.net: DomainClassifier = load_classifier(feature_extractor_weights_path).model

        @staticmethod
        def get_provided_features_list() -> tuple[str, ...]:
            return (str(FEATURE_DIM), "logits_unbiased", "logits")

        @staticmethod
        def get_default_feature_layer_for_metric(metric: str) -> str:
            return "logits_unbiased" if metric == "isc" else str(FEATURE_DIM)

        @staticmethod
        def can_be_compiled() -> bool:
            return False

        @staticmethod
        def get_dummy_input_for_compile() -> torch.Tensor:
            return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            # torch-fidelity hands over RGB; a grey classifier reads the first (identical) channel.
            x = x[:, : self.net.channels]
            feats, logits = self.net.features_and_logits(self.net.preprocess(x))
            out = {str(FEATURE_DIM): feats, "logits_unbiased": logits, "logits": logits}
            return tuple(out[f].float() for f in self.features_list)

    return DomainClassifierExtractor


def domain_extractor() -> str:
    """Register the classifier extractor with torch-fidelity (once); returns its registry name."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if DOMAIN_NAME not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(DOMAIN_NAME, _domain_extractor_class())
    return DOMAIN_NAME


def network_reachable(host: str = "github.com", port: int = 443, timeout: float = 0.5) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds.

    Name resolution can block far longer than a socket timeout, so the whole attempt runs in a
    daemon thread that is abandoned after ``timeout``.
    """
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def inception_candidates(cache_dir: str | Path) -> list[Path]:
    """Places searched for the Inception weights file, in order."""
    hub = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE  # where torch-fidelity downloads it
    return [Path(cache_dir).expanduser() / INCEPTION_FILE, hub]


def resolve_inception_weights(weights_path: str | None, cache_dir: str | Path, reachable=network_reachable) -> str | None:
    """Path of the Inception weights, ``None`` to let torch-fidelity download them, or a one-line error.

    Args:
        weights_path: ``feature_extractor.weights_path`` (an explicit file), or None to search.
        cache_dir: ``paths.cache_dir``, searched first.
        reachable: the connectivity check (returns within a second).
    """
    if weights_path:
        p = Path(weights_path).expanduser()
        if not p.is_file():
            raise ConfigError(f"Inception weights file {p} does not exist: download {INCEPTION_URL} there, or use feature_extractor=mnist")
        return str(p)
    for cand in inception_candidates(cache_dir):
        if cand.is_file():
            return str(cand)
    if reachable():
        return None
    where = inception_candidates(cache_dir)[0]
    raise ConfigError(
        f"Inception weights {INCEPTION_FILE} not found and no network to download them: put the file from {INCEPTION_URL} at {where} "
        f"(or set feature_extractor.weights_path=FILE), or use feature_extractor=mnist"
    )


def isc_splits(n_fake: int, standard: int = 10) -> int:
    """IS splits: the standard 10, fewer for tiny sample counts (at least 2 images per split; a split
    of one image would make the score NaN)."""
    return max(1, min(standard, n_fake // 2))


def kid_subset_size(n_fake: int, n_real: int, requested: int = KID_MAX_SUBSET) -> int:
    """KID subset size: the requested one, shrunk to the smaller sample count (at least 2).

    Args:
        n_fake: generated images.
        n_real: reference images.
        requested: the subset size asked for (``kid_subset_size``).
    """
    return max(2, min(requested, n_fake, n_real))


def feature_statistics(features: torch.Tensor) -> dict[str, np.ndarray]:
    """FID statistics (float64 mean and covariance) of features (N, D), as torch-fidelity computes them."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    return fid_features_to_statistics(features.double().cpu())


def frechet_distance(stats_1: dict[str, np.ndarray], stats_2: dict[str, np.ndarray]) -> float:
    """Fréchet distance of two Gaussians given as ``{"mu", "sigma"}`` (torch-fidelity's eigenvalue formula)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    return float(fid_statistics_to_metric(stats_1, stats_2, verbose=False)[KEY_METRIC_FID])


class KernelDistance(NamedTuple):
    """KID over random subset pairs: the mean and standard deviation of their MMD², and the subset size."""

    mean: float
    std: float
    subset_size: int


def _poly_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """KID's cubic polynomial kernel (x·y / d + 1)³."""
    k = x @ y.T / x.shape[1] + 1.0
    return k * k * k


def kernel_distance(
    features_1: torch.Tensor,
    features_2: torch.Tensor,
    subsets: int = KID_SUBSETS,
    max_subset_size: int = KID_MAX_SUBSET,
    seed: int = KID_SEED,
) -> KernelDistance:
    """KID of two feature sets (N, D) and (M, D) over ``subsets`` random subset pairs of size
    :func:`kid_subset_size`.

    The estimator, kernel and subset draws of torch-fidelity's ``kid_features_to_metric`` (same
    numbers), computed with torch in the features' precision (at least float32): its NumPy cube of
    each kernel matrix made KID of 1,000 samples take 7-16 s on one busy core.

    Args:
        features_1: features of the first set (the generated images).
        features_2: features of the second set (the reference).
        subsets: number of random subset pairs.
        max_subset_size: the subset size before shrinking to the sample counts.
        seed: seed of the subset draws.
    """
    n1, n2 = len(features_1), len(features_2)
    m = kid_subset_size(n1, n2, max_subset_size)
    dtype = torch.promote_types(torch.promote_types(features_1.dtype, features_2.dtype), torch.float32)
    f1, f2 = features_1.to(dtype).cpu(), features_2.to(dtype).cpu()
    rng = np.random.RandomState(seed)
    # The first set is the small one (generated samples): its kernel matrix is computed once.
    k_11 = _poly_kernel(f1, f1) if n1 <= 4096 else None
    mmds = []
    for _ in range(subsets):
        i = torch.from_numpy(rng.choice(n1, m, replace=False))
        x, y = f1[i], f2[torch.from_numpy(rng.choice(n2, m, replace=False))]
        k_xx = k_11[i][:, i] if k_11 is not None else _poly_kernel(x, x)
        k_yy, k_xy = _poly_kernel(y, y), _poly_kernel(x, y)
        off_xx = k_xx.sum(dtype=torch.float64) - k_xx.diagonal().sum(dtype=torch.float64)
        off_yy = k_yy.sum(dtype=torch.float64) - k_yy.diagonal().sum(dtype=torch.float64)
        # torch-fidelity's "unbiased" estimator: diagonals dropped within sets, kept across them.
        mmds.append(float((off_xx + off_yy) / (m * (m - 1)) - 2 * k_xy.sum(dtype=torch.float64) / (m * m)))
    return KernelDistance(float(np.mean(mmds)), float(np.std(mmds)), m)


def _extract_features(kwargs: dict, layers: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """torch-fidelity's features of ``input1`` and (when given) ``input2`` in ``layers``; the second
    set is read from and written to its cache when ``input2_cache_name`` is set.

    Args:
        kwargs: torch-fidelity's keyword arguments (inputs, extractor, cache, batch size, device).
        layers: the extractor's feature layers needed.
    """
    from torch_fidelity.utils import create_feature_extractor, extract_featuresdict_from_input_id_cached

    feat_extractor = create_feature_extractor(kwargs["feature_extractor"], layers, **kwargs)
    fake = extract_featuresdict_from_input_id_cached(1, feat_extractor, **kwargs)
    real = extract_featuresdict_from_input_id_cached(2, feat_extractor, **kwargs) if kwargs["input2"] is not None else None
    return fake, real


def _features_downloading(kwargs: dict, layers: list[str], cache_root: str | Path | None):
    """:func:`_extract_features` while torch-fidelity fetches the Inception weights into torch hub's
    folder on first use: with a socket timeout, and a failed download as one :class:`DataError`."""
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # a network that drops packets must not hang the download
    try:
        return _extract_features(kwargs, layers)
    except OSError as exc:  # URLError, HTTPError, timeouts, a full disk under torch hub's folder
        where = inception_candidates(cache_root or ".")[1]
        raise DataError(
            f"could not download the Inception weights (tried {INCEPTION_URL}: {' '.join(str(exc).split()) or type(exc).__name__}); "
            f"put that file at {where} or set feature_extractor.weights_path=FILE, or use feature_extractor=mnist"
        ) from exc
    finally:
        socket.setdefaulttimeout(old_timeout)


def fidelity_metrics(
    fake: torch.Tensor,
    real: torch.Tensor | SplitImages,
    extractor: str,
    metrics: list[str] | tuple[str, ...] = FIDELITY_METRICS,
    weights_path: str | None = None,
    cache_root: str | Path | None = None,
    real_cache_name: str | None = None,
    device: torch.device | str = "cpu",
    kid_subsets: int = KID_SUBSETS,
    kid_max_subset_size: int = KID_MAX_SUBSET,
    batch_size: int = 256,
) -> dict:
    """FID / KID / IS of ``fake`` against ``real`` in the feature space of one extractor.

    torch-fidelity extracts (and caches) the features and scores IS; FID and KID are
    :func:`frechet_distance` and :func:`kernel_distance` of those features.

    Args:
        fake: generated uint8 images (N, 1|3, H, W).
        real: real uint8 images (M, 1|3, H, W): a tensor, or a :class:`ddpm.data.SplitImages` read image by image.
        extractor: a torch-fidelity feature-extractor name (e.g. ``inception-v3-compat`` or :data:`DOMAIN_NAME`).
        metrics: any of ``fid``, ``kid``, ``isc`` (IS is computed on ``fake`` only).
        weights_path: ``feature_extractor_weights_path`` passed to the extractor.
        cache_root: folder for torch-fidelity's cache of the real features; None disables caching.
        real_cache_name: cache name of the real set (must change whenever the real set or the
            extractor's weights change); None disables caching.
        device: where the extractor runs.
        kid_subsets: KID subsets.
        kid_max_subset_size: KID subset size before shrinking to the sample counts.
        batch_size: images per extractor call.

    Returns ``{"fid": .., "kid_mean": .., "kid_std": .., "kid_subset_size": .., "isc_mean": .., "isc_std": ..}``
    (the requested ones) plus the sample counts.
    """
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_featuresdict_to_metric
    from torch_fidelity.utils import resolve_feature_layer_for_metric

    unknown = set(metrics) - set(FIDELITY_METRICS)
    if unknown:
        raise ConfigError(f"unknown fidelity metric(s) {sorted(unknown)}; choose from {', '.join(FIDELITY_METRICS)}")
    if len(fake) < 2 or len(real) < 2:
        raise ConfigError(f"FID/KID need at least 2 images on each side, got {len(fake)} generated and {len(real)} real")
    want = {m: m in metrics for m in FIDELITY_METRICS}
    cache = cache_root is not None and real_cache_name is not None
    kwargs = dict(
        input1=UInt8Images(fake),
        input2=UInt8Images(real) if (want["fid"] or want["kid"]) else None,
        cuda=torch.device(device).type == "cuda",
        batch_size=batch_size,
        feature_extractor=extractor,
        feature_extractor_weights_path=weights_path,
        isc_splits=isc_splits(len(fake)),
        cache=cache,
        cache_root=str(cache_root) if cache else None,
        input2_cache_name=real_cache_name if cache else None,
        save_cpu_ram=True,  # in-memory tensors: no loader worker processes
        verbose=False,
        **want,
    )
    layer = {m: resolve_feature_layer_for_metric(m, **kwargs) for m in FIDELITY_METRICS if want[m]}
    layers = sorted(set(layer.values()))
    downloading = extractor == INCEPTION_NAME and not weights_path
    feats_fake, feats_real = _features_downloading(kwargs, layers, cache_root) if downloading else _extract_features(kwargs, layers)
    result: dict = {"num_generated": int(len(fake)), "num_real": int(len(real))}
    if want["fid"]:
        l_fid = layer["fid"]
        result["fid"] = frechet_distance(feature_statistics(feats_fake[l_fid]), feature_statistics(feats_real[l_fid]))
    if want["kid"]:
        kid = kernel_distance(feats_fake[layer["kid"]], feats_real[layer["kid"]], kid_subsets, kid_max_subset_size)
        result.update(kid_mean=kid.mean, kid_std=kid.std, kid_subset_size=kid.subset_size, kid_subsets=kid_subsets)
    if want["isc"]:
        isc = isc_featuresdict_to_metric(feats_fake, layer["isc"], **kwargs)
        result.update(isc_mean=float(isc[KEY_METRIC_ISC_MEAN]), isc_std=float(isc[KEY_METRIC_ISC_STD]), isc_splits=isc_splits(len(fake)))
    return result
