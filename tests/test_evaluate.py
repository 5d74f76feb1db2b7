"""ddpm-evaluate: the domain classifier, FID/KID in its feature space, coverage, and the whole command."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config, run_console
from omegaconf import OmegaConf

from ddpm.data import load_dataset
from ddpm.errors import CheckpointError, ConfigError
from ddpm.evaluate.classifier import accuracy, get_classifier, load_classifier, packaged_classifier_path, save_classifier, train_classifier
from ddpm.evaluate.coverage import coverage, coverage_from_probabilities
from ddpm.evaluate.fidelity import domain_extractor, fidelity_metrics

MNIST = OmegaConf.create(
    {"name": "mnist", "root": "MNIST", "image_size": 32, "channels": 1, "resize": False, "download": False, "num_classes": 10}
)


@pytest.fixture(scope="module")
def mnist(data_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return load_dataset(MNIST, data_dir, cache, "train"), load_dataset(MNIST, data_dir, cache, "test")


@pytest.fixture(scope="module")
def quick_classifier(mnist, tmp_path_factory):
    """The classifier recipe on a 3,000-image subset for one epoch (seconds), saved like the real one."""
    train, test = mnist
    model = train_classifier(train.images[:3000], train.labels[:3000], 10, epochs=1, batch_size=32)
    acc = accuracy(model, test.images[:2000], test.labels[:2000])
    return save_classifier(model, acc, "mnist", tmp_path_factory.mktemp("clf") / "mnist-v1.pt")


def test_classifier_trained_on_a_subset_already_classifies_the_real_test_split(quick_classifier, mnist):
    _, test = mnist
    assert quick_classifier.test_accuracy > 0.9
    reloaded = load_classifier(quick_classifier.path)
    assert accuracy(reloaded.model, test.images[:2000], test.labels[:2000]) == pytest.approx(quick_classifier.test_accuracy)
    assert reloaded.digest == quick_classifier.digest and len(reloaded.digest) == 12


def test_shipped_classifier_reaches_99_percent_on_the_test_split(mnist):
    """The classifier shipped in the package (trained by scripts/train_classifier.py) keeps its promise."""
    path = packaged_classifier_path("mnist")
    assert path is not None, "ddpm/evaluate/weights/mnist-v1.pt is missing: run scripts/train_classifier.py and copy it there"
    clf = load_classifier(path)
    _, test = mnist
    measured = accuracy(clf.model, test.images, test.labels)
    assert measured > 0.99
    assert measured == pytest.approx(clf.test_accuracy, abs=1e-4)


def test_missing_classifier_without_training_is_a_checkpoint_error(data_dir, tmp_path):
    other = OmegaConf.merge(MNIST, {"name": "cifar10", "root": "cifar10"})  # no classifier ships for it
    with pytest.raises(CheckpointError, match="train_classifier.py"):
        get_classifier(other, data_dir, tmp_path, train_if_missing=False)
    # MNIST's ships with the package: found without a cache and without training.
    assert get_classifier(MNIST, data_dir, tmp_path, train_if_missing=False).path == packaged_classifier_path("mnist")


def test_domain_fid_is_zero_for_a_set_with_itself_and_grows_with_a_shift(quick_classifier, mnist):
    name = domain_extractor()
    _, test = mnist
    a, b = test.images[:500], test.images[500:1000]
    shifted = torch.roll(a, shifts=(4, 4), dims=(2, 3))
    kw = dict(weights_path=str(quick_classifier.path), kid_subsets=20)
    same = fidelity_metrics(a, a, name, ["fid"], **kw)
    other_real = fidelity_metrics(a, b, name, ["fid", "kid"], **kw)
    moved = fidelity_metrics(shifted, b, name, ["fid", "kid"], **kw)
    assert abs(same["fid"]) < 1e-3
    assert other_real["fid"] > 0
    assert moved["fid"] > 5 * other_real["fid"]
    assert moved["kid_mean"] > 10 * abs(other_real["kid_mean"])


def test_coverage_closed_forms():
    uniform = torch.eye(10).repeat(3, 1)  # 3 confident predictions of each of 10 classes
    c = coverage_from_probabilities(uniform)
    assert c["histogram"] == [3] * 10 and c["num_samples"] == 30
    assert c["entropy"] == pytest.approx(np.log(10)) and c["entropy_normalised"] == pytest.approx(1.0)
    assert c["mean_confidence"] == pytest.approx(1.0) and c["classes_seen"] == 10
    collapsed = torch.full((8, 10), 0.05)
    collapsed[:, 3] = 0.55
    c = coverage_from_probabilities(collapsed)
    assert c["histogram"][3] == 8 and c["classes_seen"] == 1
    assert c["entropy"] == 0.0 and np.copysign(1.0, c["entropy"]) == 1.0  # +0.0, not -0.0
    assert c["mean_confidence"] == pytest.approx(0.55)


def test_coverage_of_real_digits_is_nearly_uniform(quick_classifier, mnist):
    _, test = mnist
    c = coverage(quick_classifier.model, test.images[:1000])
    assert sum(c["histogram"]) == 1000 and c["classes_seen"] == 10
    assert c["entropy_normalised"] > 0.98
    ones = test.images[:1000][test.labels[:1000] == 1]
    c1 = coverage(quick_classifier.model, ones)
    assert c1["entropy_normalised"] < 0.3 and np.argmax(c1["histogram"]) == 1


def _evaluate_overrides(tiny_ckpt: Path, data_dir: Path, cache: Path, clf_path: Path, **extra) -> list[str]:
    base = {
        "ckpt": tiny_ckpt,
        "feature_extractor": "mnist",
        "feature_extractor.weights_path": clf_path,
        "sampler": "ddim",
        "sampler.steps": 5,
        "num_samples": 40,
        "num_real": 400,
        "batch_size": 40,
        "kid_subsets": 10,
        "denoise.steps": "[5,60]",
        "denoise.num_images": 8,
        "memorisation.grid": 4,
        "runtime.device": "cpu",
        "progress": "false",
        "paths.data_dir": data_dir,
        "paths.cache_dir": cache,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_ddpm_evaluate_end_to_end_with_the_mnist_extractor(tiny_ckpt, data_dir, quick_classifier, tmp_path):
    from ddpm.evaluate.run import evaluate

    cache = tmp_path / "cache"
    cfg = compose_config("evaluate", _evaluate_overrides(tiny_ckpt, data_dir, cache, quick_classifier.path))
    res = evaluate(cfg, tmp_path / "run1")
    saved = json.loads((tmp_path / "run1" / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(res))
    assert saved["num_samples"] == 40 and saved["feature_extractor"] == "mnist"

    fid = saved["fidelity"]["mnist"]
    assert (fid["num_generated"], fid["num_real"], fid["kid_subset_size"]) == (40, 400, 40)
    assert fid["extractor_id"] == f"mnist-classifier@{quick_classifier.digest}"
    assert fid["classifier_test_accuracy"] == pytest.approx(quick_classifier.test_accuracy)
    assert fid["fid"] > 0 and np.isfinite(fid["kid_mean"]) and 1.0 <= fid["isc_mean"] <= 10.0
    assert len(saved["warnings"]) == 2 and "40 generated samples" in saved["warnings"][0]
    assert saved["warnings"][1] == "kid_subset_size=1000 exceeds the 40 generated or 400 real images: KID uses subsets of 40"

    cov = saved["coverage"]
    assert sum(cov["generated"]["histogram"]) == 40 and sum(cov["real_test_reference"]["histogram"]) == 40
    assert 0.0 <= cov["generated"]["entropy_normalised"] <= 1.0

    den = saved["denoise"]
    assert den["num_images"] == 8 and set(den["steps"]) == {"5", "60"}
    assert den["steps"]["5"]["evaluations"] == 5 and den["steps"]["60"]["evaluations"] == 5
    assert den["steps"]["5"]["mse"] < den["steps"]["60"]["mse"]
    assert den["steps"]["5"]["ssim"] > den["steps"]["60"]["ssim"]

    mem = saved["memorisation"]
    assert (mem["num_samples"], mem["num_train"]) == (40, 60000) and 0.0 <= mem["fraction_memorised"] <= 1.0
    for name in ("samples.png", "memorisation.png", "samples.npz", "config.yaml"):
        assert (tmp_path / "run1" / name).is_file()
    assert np.load(tmp_path / "run1" / "samples.npz")["images"].shape == (40, 1, 32, 32)
    assert list((tmp_path / "run1" / "tb").glob("events.out.tfevents.*"))

    # second evaluation: the real features come from the cache, and sampling is seeded per image
    cached = sorted((cache / "fidelity").iterdir())
    assert cached and all("mnist-32px-train-400-mnist-classifier" in p.name for p in cached)
    mtimes = [p.stat().st_mtime_ns for p in cached]
    run_dir = tiny_ckpt.parent.parent  # ckpt= also takes a training run dir (its checkpoints/last.pt)
    cfg2 = compose_config("evaluate", _evaluate_overrides(run_dir, data_dir, cache, quick_classifier.path, metrics="[fid]"))
    res2 = evaluate(cfg2, tmp_path / "run2")
    assert res2["ckpt"] == str(tiny_ckpt)
    assert res2["fidelity"]["mnist"]["fid"] == pytest.approx(fid["fid"], rel=1e-6)
    assert [p.stat().st_mtime_ns for p in sorted((cache / "fidelity").iterdir())] == mtimes
    assert set(res2) >= {"fidelity"} and "coverage" not in res2 and "memorisation" not in res2

    # an earlier run's outputs are replaced only with overwrite=true
    before = (tmp_path / "run1" / "metrics.json").read_bytes()
    with pytest.raises(ConfigError, match="overwrite=true"):
        evaluate(cfg2, tmp_path / "run1")
    assert (tmp_path / "run1" / "metrics.json").read_bytes() == before
    over = _evaluate_overrides(run_dir, data_dir, cache, quick_classifier.path, metrics="[fid]", overwrite="true")
    res3 = evaluate(compose_config("evaluate", over), tmp_path / "run1")
    assert json.loads((tmp_path / "run1" / "metrics.json").read_text()) == json.loads(json.dumps(res3))
    assert res3["fidelity"]["mnist"]["fid"] == pytest.approx(fid["fid"], rel=1e-6) and "coverage" not in res3


def test_ddpm_evaluate_keeps_an_earlier_run_unless_overwrite(tmp_path):
    """Like ddpm-sample: one error line, exit code 2, before any work, and the earlier outputs untouched."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}\n")
    proc = run_console("ddpm-evaluate", ["ckpt=/nonexistent/last.pt", f"hydra.run.dir={run}"])
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "metrics.json" in lines[0] and "overwrite=true" in lines[0]
    assert (run / "metrics.json").read_text() == "{}\n"


def test_evaluate_clamps_print_a_warning(tiny_ckpt, data_dir, tmp_path, caplog, monkeypatch):
    """Each count ddpm-evaluate clamps says so in one warning line (log and metrics.json), and the numbers
    are those of the clamped counts."""
    import ddpm.evaluate.run as run

    def six_test_images(*args, **kwargs):  # a test split of 6 images
        data = load_dataset(*args, **kwargs)
        return dataclasses.replace(data, images=data.images[:6], labels=data.labels[:6]) if args[3] == "test" else data

    monkeypatch.setattr(run, "load_dataset", six_test_images)
    over = {"metrics": "[kid,coverage,denoise,memorisation]", "num_samples": 8, "num_real": 20, "split": "test", "batch_size": 8}
    over.update({"denoise.steps": "[2]", "denoise.num_images": 256, "memorisation.grid": 16, "feature_extractor.min_samples": 0})
    cfg = compose_config("evaluate", _evaluate_overrides(tiny_ckpt, data_dir, tmp_path / "cache", "null", **over))
    with caplog.at_level(logging.WARNING, logger="ddpm.evaluate"):
        res = run.evaluate(cfg, tmp_path / "run")
    expected = [
        "num_real=20 exceeds the 6 images of the test split: FID/KID use 6",
        "kid_subset_size=1000 exceeds the 8 generated or 6 real images: KID uses subsets of 6",
        "num_samples=8 exceeds the 6 test images: coverage's real reference holds 6",
        "denoise.num_images=256 exceeds the 6 test images: denoising 6",
        "sampler.steps=5 exceeds the 3 steps from k=2 down to 0: denoise.steps k=2 uses 3 evaluations",
        "memorisation.grid=16 exceeds num_samples=8: the grid shows 8 pairs",
    ]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == expected
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["warnings"] == expected
    kid = res["fidelity"]["mnist"]
    assert (kid["num_generated"], kid["num_real"], kid["kid_subset_size"]) == (8, 6, 6)
    assert res["coverage"]["real_test_reference"]["num_samples"] == 6 and res["coverage"]["generated"]["num_samples"] == 8
    assert res["denoise"]["num_images"] == 6 and res["denoise"]["steps"]["2"]["evaluations"] == 3
    # 8 pairs of 32-px images with 2-px padding: (8 x 34 + 2) x (2 x 34 + 2)
    from PIL import Image

    assert Image.open(tmp_path / "run" / "memorisation.png").size == (8 * 34 + 2, 2 * 34 + 2)


def test_ddpm_evaluate_rejects_an_unknown_metric_before_any_work(tmp_path):
    from ddpm.errors import ConfigError
    from ddpm.evaluate.run import evaluate

    cfg = compose_config("evaluate", ["ckpt=/nonexistent/last.pt", "metrics=[fid,sharpness]"])
    with pytest.raises(ConfigError, match="sharpness"):
        evaluate(cfg, tmp_path / "run")


def test_denoising_quality_with_the_default_sampler(tiny_ckpt, data_dir, tmp_path):
    """The default sampler (sde_dpm_solver) of ddpm-evaluate: each k is the start, at most k + 1 evaluations,
    and the numbers equal a reconstruction from the public pieces (reverse noise independent of ε)."""
    from ddpm.evaluate.denoising import denoising_quality
    from ddpm.generate import denoise_from, noise_to_step
    from ddpm.pretrained import load_pretrained
    from ddpm.quality import mse_per_image
    from ddpm.samplers import build_sampler, make_eps_fn

    cfg = compose_config("evaluate", [f"ckpt={tiny_ckpt}"])
    assert cfg.sampler.name == "sde_dpm_solver"
    pre = load_pretrained(tiny_ckpt)
    test = load_dataset(pre.cfg.dataset, data_dir, tmp_path / "cache", "test")
    x0 = test.images[:4].float() / 127.5 - 1
    eps_fn = make_eps_fn(pre.model, pre.diffusion)
    out = denoising_quality(eps_fn, pre.diffusion, cfg.sampler, x0, [2, 60], seed=3, batch_size=3)
    assert out["sampler"] == "sde_dpm_solver" and out["steps"]["2"]["evaluations"] == 3 and out["steps"]["60"]["evaluations"] == 20
    smp = build_sampler(OmegaConf.merge(cfg.sampler, {"spacing": "trailing", "steps": 20}), pre.diffusion, max_step=60)
    rec = torch.cat([denoise_from(eps_fn, smp, noise_to_step(pre.diffusion, x0[i : i + 3], 60, 3 + i), 3 + i) for i in (0, 3)])
    assert out["steps"]["60"]["mse"] == pytest.approx(float(mse_per_image(rec, x0).mean()), rel=1e-5)
    assert out["steps"]["2"]["mse"] < out["steps"]["60"]["mse"]
