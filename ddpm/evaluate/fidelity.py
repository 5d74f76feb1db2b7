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
"""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path

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


def register_domain_extractor() -> str:
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


def kid_subset_size(n_fake: int, n_real: int, requested: int = 1000) -> int:
    """KID subset size: the requested one, shrunk to the smaller sample count."""
    return max(2, min(requested, n_fake, n_real))


def fidelity_metrics(
    fake: torch.Tensor,
    real: torch.Tensor | SplitImages,
    extractor: str,
    metrics: list[str] | tuple[str, ...] = FIDELITY_METRICS,
    weights_path: str | None = None,
    cache_root: str | Path | None = None,
    real_cache_name: str | None = None,
    device: torch.device | str = "cpu",
    kid_subsets: int = 100,
    kid_max_subset_size: int = 1000,
    batch_size: int = 256,
) -> dict:
    """FID / KID / IS of ``fake`` against ``real`` in the feature space of one extractor.

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
    import torch_fidelity

    unknown = set(metrics) - set(FIDELITY_METRICS)
    if unknown:
        raise ConfigError(f"unknown fidelity metric(s) {sorted(unknown)}; choose from {', '.join(FIDELITY_METRICS)}")
    if len(fake) < 2 or len(real) < 2:
        raise ConfigError(f"FID/KID need at least 2 images on each side, got {len(fake)} generated and {len(real)} real")
    want = {m: m in metrics for m in FIDELITY_METRICS}
    subset = kid_subset_size(len(fake), len(real), kid_max_subset_size)
    cache = cache_root is not None and real_cache_name is not None
    kwargs = dict(
        input1=UInt8Images(fake),
        input2=UInt8Images(real) if (want["fid"] or want["kid"]) else None,
        cuda=torch.device(device).type == "cuda",
        batch_size=batch_size,
        feature_extractor=extractor,
        feature_extractor_weights_path=weights_path,
        kid_subsets=kid_subsets,
        kid_subset_size=subset,
        isc_splits=isc_splits(len(fake)),
        cache=cache,
        cache_root=str(cache_root) if cache else None,
        input2_cache_name=real_cache_name if cache else None,
        save_cpu_ram=True,  # in-memory tensors: no loader worker processes
        verbose=False,
        **want,
    )
    downloading = extractor == INCEPTION_NAME and not weights_path
    if not downloading:
        out = torch_fidelity.calculate_metrics(**kwargs)
    else:  # torch-fidelity fetches the Inception weights into torch hub's folder on first use
        old_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # a network that drops packets must not hang the download
        try:
            out = torch_fidelity.calculate_metrics(**kwargs)
        except OSError as exc:  # URLError, HTTPError, timeouts, a full disk under torch hub's folder
            where = inception_candidates(cache_root or ".")[1]
            raise DataError(
                f"could not download the Inception weights (tried {INCEPTION_URL}: {' '.join(str(exc).split()) or type(exc).__name__}); "
                f"put that file at {where} or set feature_extractor.weights_path=FILE, or use feature_extractor=mnist"
            ) from exc
        finally:
            socket.setdefaulttimeout(old_timeout)
    result: dict = {"num_generated": int(len(fake)), "num_real": int(len(real))}
    if want["fid"]:
        result["fid"] = float(out["frechet_inception_distance"])
    if want["kid"]:
        result.update(
            kid_mean=float(out["kernel_inception_distance_mean"]),
            kid_std=float(out["kernel_inception_distance_std"]),
            kid_subset_size=subset,
            kid_subsets=kid_subsets,
        )
    if want["isc"]:
        result.update(
            isc_mean=float(out["inception_score_mean"]), isc_std=float(out["inception_score_std"]), isc_splits=isc_splits(len(fake))
        )
    return result
