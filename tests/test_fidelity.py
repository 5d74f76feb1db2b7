"""torch-fidelity glue: FID/KID against hand-computed values, KID subset sizes, grey->RGB, offline errors."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from ddpm.errors import ConfigError
from ddpm.evaluate.fidelity import (
    INCEPTION_FILE,
    UInt8Images,
    fidelity_metrics,
    kid_subset_size,
    network_reachable,
    resolve_inception_weights,
)

REPO = Path(__file__).resolve().parents[1]


class PixelFeatures(FeatureExtractorBase):
    """Test extractor whose features are the image's pixel values: lets us feed chosen features through torch-fidelity."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)

    @staticmethod
    def get_provided_features_list():
        return ("pixels",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "pixels"

    @staticmethod
    def can_be_compiled():
        return False

    def forward(self, x):
        return (x.flatten(1).double(),)


if "test-pixels" not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor("test-pixels", PixelFeatures)


def gaussian_images(n: int, mean: np.ndarray, cov: np.ndarray, seed: int) -> torch.Tensor:
    """uint8 images (n, 3, 2, 2) whose 12 pixel values are rounded Gaussian features."""
    rng = np.random.default_rng(seed)
    f = rng.multivariate_normal(mean, cov, size=n).round().clip(0, 255)
    return torch.from_numpy(f.astype(np.uint8)).reshape(n, 3, 2, 2)


def frechet(f1: np.ndarray, f2: np.ndarray) -> float:
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def mmd_poly_unbiased(f1: np.ndarray, f2: np.ndarray) -> float:
    """Unbiased MMD² with the cubic polynomial kernel (x·y/d + 1)³ of KID."""
    d = f1.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(f1, f1), k(f2, f2), k(f1, f2)
    m = len(f1)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())


@pytest.fixture(scope="module")
def gaussian_sets() -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(12, 12))
    cov1 = 60 * (a @ a.T) / 12 + 20 * np.eye(12)
    b = rng.normal(size=(12, 12))
    cov2 = 40 * (b @ b.T) / 12 + 30 * np.eye(12)
    return gaussian_images(600, np.full(12, 120.0), cov1, 1), gaussian_images(500, np.full(12, 110.0) + np.arange(12), cov2, 2)


def test_fid_matches_scipy_frechet_distance(gaussian_sets):
    x, y = gaussian_sets
    got = fidelity_metrics(x, y, "test-pixels", ["fid"], kid_subsets=1)
    want = frechet(x.flatten(1).double().numpy(), y.flatten(1).double().numpy())
    assert want > 100  # the two Gaussians differ clearly
    assert got["fid"] == pytest.approx(want, rel=1e-6)
    assert (got["num_generated"], got["num_real"]) == (600, 500)


def test_kid_matches_hand_computed_mmd(gaussian_sets):
    x, y = gaussian_sets
    # one subset of all 500 images of each side: the subset is then the whole set (in some order),
    # and the unbiased MMD² does not depend on the order
    got = fidelity_metrics(x[:500], y, "test-pixels", ["kid"], kid_subsets=1)
    want = mmd_poly_unbiased(x[:500].flatten(1).double().numpy(), y.flatten(1).double().numpy())
    assert got["kid_subset_size"] == 500
    assert got["kid_mean"] == pytest.approx(want, rel=1e-6)


def test_fid_and_kid_of_a_set_with_itself_are_zero(gaussian_sets):
    x, _ = gaussian_sets
    got = fidelity_metrics(x, x, "test-pixels", ["fid", "kid"], kid_subsets=5)
    assert abs(got["fid"]) < 1e-6
    assert abs(got["kid_mean"]) < 1e-2 * mmd_poly_unbiased(
        x[:300].double().flatten(1).numpy(), gaussian_sets[1][:300].double().flatten(1).numpy()
    )


def test_real_features_are_cached_and_reused(gaussian_sets, tmp_path):
    x, y = gaussian_sets
    first = fidelity_metrics(x, y, "test-pixels", ["fid"], cache_root=tmp_path, real_cache_name="gauss-y")
    cached = sorted(p.name for p in tmp_path.iterdir())
    assert cached and all(name.startswith("gauss-y-test-pixels") for name in cached)
    # a different "real" set under the same cache name: the cached statistics are used instead
    second = fidelity_metrics(x, x, "test-pixels", ["fid"], cache_root=tmp_path, real_cache_name="gauss-y")
    assert second["fid"] == pytest.approx(first["fid"], rel=1e-9)


def test_kid_subset_size_adapts_to_sample_count():
    assert kid_subset_size(50, 60000) == 50
    assert kid_subset_size(5000, 800) == 800
    assert kid_subset_size(5000, 60000) == 1000
    assert kid_subset_size(5000, 60000, requested=2000) == 2000


def test_grey_images_become_three_identical_uint8_channels():
    grey = torch.arange(2 * 16, dtype=torch.uint8).reshape(2, 1, 4, 4)
    ds = UInt8Images(grey)
    item = ds[1]
    assert item.shape == (3, 4, 4) and item.dtype == torch.uint8
    assert torch.equal(item[0], grey[1, 0]) and torch.equal(item[2], grey[1, 0])
    with pytest.raises(ValueError):
        UInt8Images(grey.float())


def test_unknown_fidelity_metric_is_a_config_error(gaussian_sets):
    with pytest.raises(ConfigError, match="prc"):
        fidelity_metrics(gaussian_sets[0], gaussian_sets[1], "test-pixels", ["prc"])


def test_missing_inception_weights_without_network_fail_fast_in_one_line(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        resolve_inception_weights(None, tmp_path / "cache", reachable=lambda: False)
    assert time.perf_counter() - t0 < 1.0
    msg = str(info.value)
    assert "\n" not in msg
    assert INCEPTION_FILE in msg and str(tmp_path / "cache" / INCEPTION_FILE) in msg


def test_inception_weights_found_in_cache_dir(tmp_path):
    (tmp_path / INCEPTION_FILE).write_bytes(b"x")
    assert resolve_inception_weights(None, tmp_path, reachable=lambda: False) == str(tmp_path / INCEPTION_FILE)


def test_explicit_missing_inception_weights_path_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_inception_weights(str(tmp_path / "nope.pth"), tmp_path, reachable=lambda: True)


def test_connectivity_check_gives_up_within_its_timeout():
    t0 = time.perf_counter()
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never routed, so the connection can only fail or hang
    assert network_reachable("192.0.2.1", 443, timeout=0.3) is False
    assert time.perf_counter() - t0 < 1.0


def test_ddpm_evaluate_inception_without_weights_is_one_error_line(tmp_path):
    """The command fails before loading anything, with exit code 2 and one line naming the file."""
    missing = tmp_path / INCEPTION_FILE
    cmd = [
        sys.executable,
        "-m",
        "ddpm.evaluate.cli",
        "ckpt=/nonexistent/last.pt",
        "feature_extractor=inception",
        f"feature_extractor.weights_path={missing}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(missing) in lines[0]


@pytest.mark.slow
def test_inception_path_runs_from_a_local_weights_file(tmp_path, monkeypatch):
    """The standard extractor runs end to end from ``weights_path`` (a randomly initialised file of
    the right architecture stands in for the real 2015 weights, which cannot be fetched offline)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with monkeypatch.context() as m:
        m.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        m.setattr(torch, "load", lambda *a, **k: {})
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path="unused")
    weights = tmp_path / INCEPTION_FILE
    torch.save(net.state_dict(), weights)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (6, 1, 32, 32), dtype=np.uint8))
    out = fidelity_metrics(images, images.clone(), "inception-v3-compat", ["fid", "isc"], weights_path=str(weights), batch_size=6)
    assert out["fid"] == pytest.approx(0.0, abs=1e-2)  # a set against itself
    assert out["isc_mean"] >= 1.0 - 1e-6  # IS is at least 1 by construction
    assert out["num_generated"] == 6
