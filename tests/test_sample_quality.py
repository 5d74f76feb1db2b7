"""``ddpm.evaluate.sample_quality``: the scorer of generated images and its blob-tile detector, on real MNIST."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from torch_fidelity.metric_kid import kid_features_to_metric

from ddpm.data import load_dataset, to_model_range
from ddpm.errors import ConfigError
from ddpm.evaluate.fidelity import KID_SEED, feature_statistics, frechet_distance, kernel_distance, kid_subset_size
from ddpm.evaluate.sample_quality import SampleScorer, normalised_class_entropy

NUM_REFERENCE = 10_000  # a seeded subset of the training split keeps the one-time reference to ~15 s


@pytest.fixture(scope="module")
def dataset_cfg(data_dir: Path):
    return compose_config("train", [f"paths.data_dir={data_dir}"]).dataset


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sample_quality_cache")


@pytest.fixture(scope="module")
def scorer(dataset_cfg, data_dir: Path, cache_dir: Path) -> SampleScorer:
    return SampleScorer(dataset_cfg, data_dir, cache_dir, num_reference=NUM_REFERENCE)


@pytest.fixture(scope="module")
def test_split(dataset_cfg, data_dir: Path, cache_dir: Path):
    return load_dataset(dataset_cfg, data_dir, cache_dir, "test")


def grey_squares(n: int) -> torch.Tensor:
    """Flat squares of grey levels spread over (-0.8, 0.8) in model range."""
    return torch.linspace(-0.8, 0.8, n).view(n, 1, 1, 1).expand(n, 1, 32, 32).clone()


def failures(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The failure modes of an undertrained model, drawn synthetically (model range)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    radius = torch.linspace(5, 10, n).view(n, 1, 1)
    disks = (((yy - 16) ** 2 + (xx - 16) ** 2)[None] <= radius**2).float() * 2 - 1
    return {
        "grey squares": grey_squares(n),
        "uniform noise": torch.rand(n, 1, 32, 32, generator=g) * 2 - 1,
        "noise on grey": (0.3 * torch.randn(n, 1, 32, 32, generator=g)).clamp(-1, 1),
        "white disks on black": disks[:, None],
        "white blob in grey square": torch.where(disks[:, None] > 0, 1.0, -0.2),
    }


def test_real_test_digits_score_like_the_training_split(scorer: SampleScorer, test_split) -> None:
    s = scorer.score(to_model_range(test_split.images[:1000]))
    assert s["n"] == 1000
    assert 0 < s["fid"] < 20  # measured 12.0 (against all 60,000 training digits: 12.5)
    assert abs(s["kid"]) < 30  # measured 6.7; grey squares: 1,612
    assert s["blob_fraction"] <= 0.005
    assert s["confidence"] > 0.9
    assert s["confident_fraction"] > 0.9
    assert s["class_entropy"] > 0.99  # all ten digits, near-uniformly


def test_blob_detector_passes_nearly_all_real_digits(scorer: SampleScorer, test_split) -> None:
    flagged = scorer.is_blob(to_model_range(test_split.images))
    assert flagged.dtype == torch.bool and flagged.shape == (len(test_split),)
    assert float(flagged.float().mean()) <= 0.005  # measured: 2 of the 10,000


@pytest.mark.parametrize("kind", list(failures(1)))
def test_failure_modes_are_all_blobs_with_a_large_fid(scorer: SampleScorer, test_split, kind: str) -> None:
    images = failures(64)[kind]
    assert bool(scorer.is_blob(images).all()), f"{kind}: {int((~scorer.is_blob(images)).sum())} of 64 not flagged"
    s = scorer.score(images)
    assert s["blob_fraction"] == 1.0
    real_fid = scorer.score(to_model_range(test_split.images[:64]))["fid"]
    assert s["fid"] > 10 * real_fid, (kind, s["fid"], real_fid)


def test_a_set_against_itself_has_zero_fid_and_kid(scorer: SampleScorer, test_split) -> None:
    feats = scorer.features_and_probs(test_split.images[:2000])[0]
    stats = feature_statistics(feats)
    assert frechet_distance(stats, stats) == pytest.approx(0.0, abs=1e-6)
    noise_feats = scorer.features_and_probs(((failures(500)["uniform noise"] + 1) * 127.5).round().to(torch.uint8))[0]
    far = kernel_distance(noise_feats, feats).mean
    # Subsets of 1,000 drawn independently from each side: ~0 on the scale of a failure (shared images bias it slightly negative).
    assert abs(kernel_distance(feats, feats).mean) < 1e-3 * far
    assert kernel_distance(feats[:1000], feats[1000:]).mean < 1e-3 * far


def test_kid_equals_torch_fidelity_and_adapts_its_subset_size(scorer: SampleScorer, test_split) -> None:
    feats = scorer.features_and_probs(test_split.images[:300])[0]
    ref = scorer.train_features
    expected = kid_features_to_metric(feats, ref, kid_subsets=100, kid_subset_size=300, rng_seed=KID_SEED, verbose=False)
    kid = kernel_distance(feats, ref)
    assert kid.mean == pytest.approx(expected["kernel_inception_distance_mean"], rel=1e-4)
    assert kid.std == pytest.approx(expected["kernel_inception_distance_std"], rel=1e-3) and kid.subset_size == 300
    assert kid_subset_size(300, 10_000) == 300 and kid_subset_size(5000, 10_000) == 1000 and kid_subset_size(1, 10) == 2
    two = scorer.score(to_model_range(test_split.images[:2]))
    assert two["n"] == 2 and all(math.isfinite(v) for v in two.values())


def test_class_entropy_golden_values(scorer: SampleScorer, test_split) -> None:
    probs = scorer.features_and_probs(test_split.images[:2000])[1]
    threes = test_split.images[:2000][probs.argmax(1) == 3]
    assert len(threes) > 100
    s = scorer.score(to_model_range(threes))
    assert s["class_entropy"] == 0.0  # one predicted class
    # Three classes predicted equally often out of ten: log 3 / log 10.
    three_way = torch.eye(10)[torch.tensor([0, 1, 2] * 4)]
    assert normalised_class_entropy(three_way) == pytest.approx(math.log(3) / math.log(10), abs=1e-12)
    mixed = torch.cat([threes[:50], test_split.images[:2000][probs.argmax(1) == 7][:50]])
    assert scorer.score(to_model_range(mixed))["class_entropy"] == pytest.approx(math.log(2) / math.log(10), abs=1e-12)


def test_confidence_scores_golden(scorer: SampleScorer, test_split) -> None:
    images = to_model_range(test_split.images[:200])
    top = scorer.features_and_probs(test_split.images[:200])[1].max(1).values
    s = scorer.score(images)
    assert s["confidence"] == pytest.approx(float(top.mean()), rel=1e-6)
    assert s["confident_fraction"] == pytest.approx(float((top > 0.9).float().mean()), abs=1e-9)


def test_reference_is_cached_by_classifier_digest(scorer: SampleScorer, dataset_cfg, data_dir: Path, cache_dir: Path) -> None:
    path = scorer.cache_path
    assert path.is_file() and path.parent == cache_dir / "sample_quality"
    assert scorer.classifier.digest in path.name and scorer.num_train == NUM_REFERENCE
    mtime = path.stat().st_mtime_ns
    again = SampleScorer(dataset_cfg, data_dir, cache_dir, num_reference=NUM_REFERENCE)
    assert path.stat().st_mtime_ns == mtime  # loaded, not recomputed
    assert (again.train_stats["mu"] == scorer.train_stats["mu"]).all()
    assert torch.equal(again.blob_bounds.high, scorer.blob_bounds.high)


def test_bad_inputs_are_one_line_config_errors(scorer: SampleScorer, data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 2 images"):
        scorer.score(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ConfigError, match="expected images of shape"):
        scorer.score(torch.zeros(4, 3, 32, 32))
    with pytest.raises(ConfigError, match="float images"):
        scorer.score(torch.zeros(4, 1, 32, 32, dtype=torch.uint8))
    punks = compose_config("train", ["dataset=cryptopunks"]).dataset
    with pytest.raises(ConfigError, match="no class labels"):
        SampleScorer(punks, data_dir, tmp_path)
    cifar = compose_config("train", ["dataset=cifar10"]).dataset
    with pytest.raises(ConfigError, match="no domain classifier for cifar10"):
        SampleScorer(cifar, data_dir, tmp_path)


def test_native_28px_digits_are_scored_padded_like_the_loader(scorer: SampleScorer, data_dir: Path, cache_dir: Path, test_split) -> None:
    """A network trained on MNIST at its native 28 px is scored by the 32 px classifier on its samples
    centred on black, against the same (32 px) reference: the scores equal those of the padded digits."""
    cfg28 = compose_config("train", [f"paths.data_dir={data_dir}", "dataset.image_size=28"]).dataset
    scorer28 = SampleScorer(cfg28, data_dir, cache_dir, num_reference=NUM_REFERENCE)
    assert scorer28.cache_path == scorer.cache_path  # one reference, at the classifier's size
    padded = to_model_range(test_split.images[:200])
    assert scorer28.score(padded[..., 2:30, 2:30]) == scorer.score(padded)
    with pytest.raises(ConfigError, match=r"expected images of shape \(N, 1, 32, 32\)"):
        scorer28.score(torch.zeros(4, 1, 27, 27))


def test_classifier_pads_native_28px_digits_like_the_loader(scorer: SampleScorer, test_split) -> None:
    """The classifier behind FID/KID/IS and class accuracy reads 28 px digits as the loader's 32 px ones."""
    from ddpm.evaluate.classifier import centre_pad

    x32 = to_model_range(test_split.images[:16])
    feats, logits = scorer.model.features_and_logits(x32)
    feats28, logits28 = scorer.model.features_and_logits(x32[..., 2:30, 2:30])
    assert torch.equal(feats28, feats) and torch.equal(logits28, logits)
    assert centre_pad(torch.zeros(1, 1, 27, 27), 32, -1.0).shape[-1] == 27  # odd margin: left as it is
    assert centre_pad(torch.zeros(1, 1, 28, 30), 32, -1.0).shape[-2:] == (28, 30)  # not square
