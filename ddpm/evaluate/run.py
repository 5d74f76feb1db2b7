"""``ddpm-evaluate ckpt=PATH``: evaluate a trained checkpoint into ``metrics.json``.

Generates ``num_samples`` images with the chosen ``sampler`` and measures, as selected by
``metrics``:

- ``fid``, ``kid``, ``isc``: torch-fidelity metrics in the space of ``feature_extractor``
  (``mnist``: the project's classifier, offline; ``inception``: the standard 2015 Inception);
- ``coverage``: class histogram, entropy and mean confidence under the dataset's classifier;
- ``denoise``: MSE / SSIM of held-out images noised to step k and denoised;
- ``memorisation``: share of samples much closer to one training image than to any other.

Every number in ``metrics.json`` sits next to its sample count and the extractor it comes from.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import ddpm
from ddpm.checkpoint import atomic_write
from ddpm.conditioning import per_class_accuracy, round_robin_labels
from ddpm.data import from_model_range, load_dataset, open_split, to_model_range
from ddpm.errors import ConfigError
from ddpm.evaluate.config import OUTPUTS, validate_evaluate
from ddpm.inference import Inference, open_run, write_bytes, write_json
from ddpm.samplers.base import EpsFn

log = logging.getLogger(__name__)

FIDELITY = ("fid", "kid", "isc")  # the metrics measured in a feature extractor's space


def _warn(warnings: list[str], msg: str) -> None:
    """Log ``msg`` and keep it for metrics.json's ``warnings``."""
    log.warning(msg)
    warnings.append(msg)


def _classifier(cfg: DictConfig, dataset_cfg: DictConfig, device: torch.device, required: bool):
    """The domain classifier of the checkpoint's dataset, or None (with the reason) if it has no labels."""
    from ddpm.evaluate.classifier import get_classifier

    fe = cfg.feature_extractor
    if not dataset_cfg.get("num_classes"):
        if required:
            raise ConfigError(f"feature_extractor={fe.name} needs a labelled dataset, but {dataset_cfg.name} has no classes")
        return None
    path = fe.weights_path if fe.kind == "domain" else None
    return get_classifier(
        dataset_cfg, cfg.paths.data_dir, cfg.paths.cache_dir, path=path, train_if_missing=bool(fe.train_if_missing), device=device
    )


def _fidelity(
    cfg: DictConfig,
    dataset_cfg: DictConfig,
    fake: torch.Tensor,
    clf,
    inception_weights: str | None,
    device: torch.device,
    warnings: list[str],
) -> dict:
    from ddpm.evaluate.fidelity import INCEPTION_NAME, domain_extractor, fidelity_metrics, kid_subset_size

    fe = cfg.feature_extractor
    wanted = [m for m in ("fid", "kid", "isc") if m in cfg.metrics]
    if fe.kind == "inception":
        weights = inception_weights
        extractor, tag = INCEPTION_NAME, f"{INCEPTION_NAME}@{Path(weights).name if weights else 'download'}"
    else:
        weights, extractor = str(clf.path), domain_extractor()
        tag = f"{dataset_cfg.name}-classifier@{clf.digest}"
    real_all = open_split(dataset_cfg, cfg.paths.data_dir, cfg.paths.cache_dir, cfg.split, load_dataset).images
    n_real = len(real_all) if cfg.num_real is None else min(int(cfg.num_real), len(real_all))
    real = real_all[:n_real]
    if cfg.num_real is not None and n_real < cfg.num_real:
        _warn(warnings, f"num_real={cfg.num_real} exceeds the {n_real} images of the {cfg.split} split: FID/KID use {n_real}")
    if len(fake) < fe.min_samples:
        msg = f"FID/KID from {len(fake)} generated samples (< {fe.min_samples} recommended for feature_extractor={fe.name}) are biased upwards and noisy; compare only numbers with the same sample count"
        _warn(warnings, msg)
    subset = kid_subset_size(len(fake), n_real, int(cfg.kid_subset_size))
    if "kid" in wanted and subset < cfg.kid_subset_size:
        _warn(
            warnings,
            f"kid_subset_size={cfg.kid_subset_size} exceeds the {len(fake)} generated or {n_real} real images: KID uses subsets of {subset}",
        )
    cache_root = Path(cfg.paths.cache_dir).expanduser() / "fidelity"
    cache_name = f"{dataset_cfg.name}-{dataset_cfg.image_size}px-{cfg.split}-{n_real}-{tag.replace('@', '-').replace('.', '_')}"
    t0 = time.time()
    res = fidelity_metrics(
        fake,
        real,
        extractor,
        wanted,
        weights_path=weights,
        cache_root=cache_root,
        real_cache_name=cache_name,
        device=device,
        kid_subsets=int(cfg.kid_subsets),
        kid_max_subset_size=int(cfg.kid_subset_size),
        batch_size=int(cfg.batch_size),
    )
    res.update(feature_extractor=fe.name, extractor_id=tag, split=cfg.split, seconds=round(time.time() - t0, 1))
    if fe.kind == "domain":
        res["classifier_test_accuracy"] = clf.test_accuracy
    return res


def _class_accuracy(
    clf, fake: torch.Tensor, labels: torch.Tensor, classes: int, dataset_cfg: DictConfig, device: torch.device, warnings: list[str]
) -> dict | None:
    """Per-class accuracy of a conditional model's samples under the domain classifier (None, with a warning, without one).

    Args:
        clf: the domain classifier, or None when the dataset has no labels.
        fake: the samples, uint8.
        labels: the class each sample was generated for.
        classes: the model's class count.
        dataset_cfg: the checkpoint's dataset node (for messages).
        device: where the classifier runs.
        warnings: collects the reason when nothing is measured.
    """
    from ddpm.evaluate.coverage import class_probabilities

    if clf is None:
        reason = f"class accuracy skipped: dataset {dataset_cfg.name} has no domain classifier"
    else:
        probs = class_probabilities(clf.model, fake, device=device)
        if probs.shape[1] == classes:
            acc = per_class_accuracy(probs, labels, classes)
            acc["classifier"] = f"{dataset_cfg.name}-classifier@{clf.digest}"
            return acc
        reason = f"class accuracy skipped: the classifier has {probs.shape[1]} classes, the model {classes}"
    _warn(warnings, reason)
    return None


def _scalars(prefix: str, obj: Any, out: dict[str, float]) -> None:
    """Flatten the numeric leaves of ``obj`` into TensorBoard tags."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _scalars(f"{prefix}/{k}" if prefix else str(k), v, out)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and math.isfinite(obj):
        out[prefix] = float(obj)


@dataclass
class Evaluation:
    """What the steps of one evaluation share.

    Args:
        cfg: the ``evaluate`` config.
        run: the loaded checkpoint and runtime.
        run_dir: where the outputs go.
        eps_fn: the network's ε function (with ``guidance_scale``).
        labels: the class of each sample of a conditional checkpoint (None: unconditional).
        clf: the dataset's domain classifier, or None when no metric needs it or the dataset has no labels.
        result: the content of metrics.json, filled step by step.
        warnings: every clamp and skip, for metrics.json's ``warnings``.
    """

    cfg: DictConfig
    run: Inference
    run_dir: Path
    eps_fn: EpsFn
    labels: torch.Tensor | None
    clf: Any
    result: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def dataset_cfg(self) -> DictConfig:
        return self.run.pre.cfg.dataset

    def warn(self, msg: str) -> None:
        _warn(self.warnings, msg)


def _inception_weights(cfg: DictConfig) -> str | None:
    """The Inception weights file when an Inception metric is asked for (None: none needed, or a download)."""
    if cfg.feature_extractor.kind != "inception" or not any(m in cfg.metrics for m in FIDELITY):
        return None
    from ddpm.evaluate.fidelity import resolve_inception_weights

    return resolve_inception_weights(cfg.feature_extractor.weights_path, cfg.paths.cache_dir)


def _start(cfg: DictConfig, run_dir: Path) -> tuple[Evaluation, str | None]:
    """Check, guard and load: everything that can fail fast, before any sampling; returns the
    evaluation's shared state and the Inception weights file."""
    found: dict[str, str | None] = {}

    def preflight() -> None:  # a missing weights file must fail within a second, not after sampling
        found["inception"] = _inception_weights(cfg)

    run = open_run(cfg, run_dir, validate_evaluate, OUTPUTS, preflight=preflight)
    write_bytes(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    pre, fe, metrics = run.pre, cfg.feature_extractor, list(cfg.metrics)
    dataset_cfg = pre.cfg.dataset
    if fe.kind == "domain" and fe.dataset and fe.dataset != dataset_cfg.name:
        raise ConfigError(f"feature_extractor={fe.name} is the {fe.dataset} classifier, but {pre.path} was trained on {dataset_cfg.name}")
    classes = pre.model.num_classes
    if not classes and float(cfg.guidance_scale) != 1.0:
        raise ConfigError(f"guidance_scale needs a class-conditional checkpoint; {pre.path} is unconditional")
    result: dict[str, Any] = {
        "ddpm_version": ddpm.__version__,
        "ckpt": str(pre.path),
        "step": pre.step,
        "dataset": dataset_cfg.name,
        "sampler": OmegaConf.to_container(cfg.sampler),
        "num_samples": int(cfg.num_samples),
        "seed": int(cfg.seed),
        "use_ema": bool(cfg.use_ema),
        "feature_extractor": fe.name,
        "device": str(run.device),
        "precision": run.rt.precision,
        "num_classes": classes,
        "guidance_scale": float(cfg.guidance_scale) if classes else None,
    }
    # conditional: sample i is of class i % classes, whatever num_samples is; denoising uses the null class
    labels = round_robin_labels(int(cfg.num_samples), classes) if classes else None
    domain_fidelity = fe.kind == "domain" and any(m in metrics for m in FIDELITY)
    want_clf = domain_fidelity or "coverage" in metrics or (classes and _needs_samples(cfg))
    clf = _classifier(cfg, dataset_cfg, run.device, required=domain_fidelity) if want_clf else None
    eps_fn = run.eps_fn(float(cfg.guidance_scale))
    return Evaluation(cfg, run, run_dir, eps_fn, labels, clf, result), found.get("inception")


def _needs_samples(cfg: DictConfig) -> bool:
    """Whether a chosen metric measures generated samples."""
    return any(m in cfg.metrics for m in (*FIDELITY, "coverage", "memorisation"))


def _generate(ev: Evaluation) -> torch.Tensor:
    """Generate ``num_samples`` images (uint8) and write samples.png and samples.npz."""
    from torchvision.utils import save_image

    cfg = ev.cfg
    t0 = time.time()
    x = ev.run.generate(
        ev.run.sampler(),
        int(cfg.num_samples),
        int(cfg.seed),
        int(cfg.batch_size),
        float(cfg.guidance_scale),
        progress=bool(cfg.progress),
        labels=ev.labels,
    )
    ev.result["sampling_seconds"] = round(time.time() - t0, 1)
    fake = from_model_range(x)
    atomic_write(ev.run_dir / "samples.png", lambda f: save_image(fake[:64].float() / 255.0, f, nrow=8, format="PNG"))
    atomic_write(ev.run_dir / "samples.npz", lambda f: np.savez_compressed(f, images=fake.numpy()))
    return fake


def _coverage(ev: Evaluation, fake: torch.Tensor) -> None:
    """Class histogram, entropy and confidence of the samples and of as many test images."""
    cfg, dataset_cfg, clf = ev.cfg, ev.dataset_cfg, ev.clf
    if clf is None:
        ev.warn(f"coverage skipped: dataset {dataset_cfg.name} has no class labels")
        return
    from ddpm.evaluate.coverage import coverage

    test = open_split(dataset_cfg, cfg.paths.data_dir, cfg.paths.cache_dir, "test", load_dataset)
    if len(test) < cfg.num_samples:
        ev.warn(f"num_samples={cfg.num_samples} exceeds the {len(test)} test images: coverage's real reference holds {len(test)}")
    ev.result["coverage"] = {
        "classifier": f"{dataset_cfg.name}-classifier@{clf.digest}",
        "classifier_test_accuracy": clf.test_accuracy,
        "generated": coverage(clf.model, fake, ev.run.device),
        "real_test_reference": coverage(clf.model, test.images[: int(cfg.num_samples)], ev.run.device),
    }


def _denoise(ev: Evaluation) -> None:
    """MSE / SSIM of held-out images noised to each ``denoise.steps`` k and denoised back."""
    from ddpm.evaluate.denoising import denoising_quality

    cfg = ev.cfg
    test = open_split(ev.dataset_cfg, cfg.paths.data_dir, cfg.paths.cache_dir, "test", load_dataset)
    x0 = to_model_range(test.images[: int(cfg.denoise.num_images)]).to(ev.run.device)
    if len(x0) < cfg.denoise.num_images:
        ev.warn(f"denoise.num_images={cfg.denoise.num_images} exceeds the {len(x0)} test images: denoising {len(x0)}")
    t0 = time.time()
    res = denoising_quality(
        ev.eps_fn, ev.run.pre.diffusion, cfg.sampler, x0, list(cfg.denoise.steps), int(cfg.seed), int(cfg.batch_size), ev.warnings
    )
    res["seconds"] = round(time.time() - t0, 1)
    ev.result["denoise"] = res


def _memorisation(ev: Evaluation, fake: torch.Tensor) -> None:
    """Share of samples much closer to one training image than to any other, and memorisation.png."""
    from ddpm.memorisation import memorisation, save_memorisation_grid
    from ddpm.pretrained import training_set

    cfg, pre = ev.cfg, ev.run.pre
    train = training_set(cfg, pre).images  # the network's training subset (dataset.n), not the whole split
    mirrored = bool(pre.cfg.dataset.get("hflip", False))  # a run trained with flips saw the mirrors too
    mem = memorisation(fake, train, float(cfg.memorisation.threshold), ev.run.device, mirrored)
    ev.result["memorisation"] = mem.summary(len(train) * (2 if mirrored else 1))
    if cfg.memorisation.grid > len(fake):
        ev.warn(f"memorisation.grid={cfg.memorisation.grid} exceeds num_samples={len(fake)}: the grid shows {len(fake)} pairs")
    if cfg.memorisation.grid > 0:
        grid = save_memorisation_grid(fake, train, mem, ev.run_dir / "memorisation.png", int(cfg.memorisation.grid))
        ev.result["memorisation"]["grid"] = grid.name


def _write_results(ev: Evaluation) -> None:
    """metrics.json and its numbers as TensorBoard scalars at the checkpoint's step."""
    from torch.utils.tensorboard import SummaryWriter

    ev.result["warnings"] = ev.warnings
    write_json(ev.run_dir / "metrics.json", ev.result)
    scalars: dict[str, float] = {}
    for key in ("fidelity", "coverage", "class_accuracy", "denoise", "memorisation"):
        if key in ev.result:
            _scalars(f"eval/{key}", ev.result[key], scalars)
    with SummaryWriter(str(ev.run_dir / "tb")) as writer:
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, ev.run.pre.step)
    log.info("metrics written to %s", ev.run_dir / "metrics.json")


def evaluate(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Evaluate ``cfg.ckpt`` into ``run_dir`` (metrics.json, tb/, samples.png, samples.npz,
    memorisation.png); returns the metrics.

    Args:
        cfg: the ``evaluate`` config.
        run_dir: the run dir; an earlier run's outputs there are replaced only with ``overwrite=true``.
    """
    ev, inception_weights = _start(cfg, Path(run_dir))
    metrics, fe = list(cfg.metrics), cfg.feature_extractor
    fake = _generate(ev) if _needs_samples(cfg) else None
    if any(m in metrics for m in FIDELITY):
        res = _fidelity(cfg, ev.dataset_cfg, fake, ev.clf, inception_weights, ev.run.device, ev.warnings)
        ev.result["fidelity"] = {fe.name: res}
    if "coverage" in metrics:
        _coverage(ev, fake)
    if ev.labels is not None and fake is not None:
        ev.result["class_accuracy"] = _class_accuracy(
            ev.clf, fake, ev.labels, ev.run.pre.model.num_classes, ev.dataset_cfg, ev.run.device, ev.warnings
        )
    if "denoise" in metrics:
        _denoise(ev)
    if "memorisation" in metrics:
        _memorisation(ev, fake)
    _write_results(ev)
    print(summary_lines(ev.result))
    return ev.result


def summary_lines(result: dict) -> str:
    """A short human-readable report of ``metrics.json``."""
    lines = [f"{result['ckpt']} (step {result['step']}), sampler {result['sampler']['name']}"]
    for name, r in result.get("fidelity", {}).items():
        parts = [f"{k} {r[k]:.4g}" for k in ("fid", "kid_mean", "isc_mean") if k in r]
        lines.append(f"  [{name} features, {r['num_generated']} generated vs {r['num_real']} real {r['split']}] " + ", ".join(parts))
    if "coverage" in result:
        g = result["coverage"]["generated"]
        lines.append(
            f"  [coverage, {g['num_samples']} samples] entropy {g['entropy_normalised']:.3f} of max, confidence {g['mean_confidence']:.3f}, histogram {g['histogram']}"
        )
    if "denoise" in result:
        d = result["denoise"]
        lines.append(
            f"  [denoise, {d['num_images']} test images] "
            + ", ".join(f"k={k}: mse {v['mse']:.4f} ssim {v['ssim']:.3f}" for k, v in d["steps"].items())
        )
    if "memorisation" in result:
        m = result["memorisation"]
        lines.append(
            f"  [memorisation, {m['num_samples']} samples vs {m['num_train']} train] {m['fraction_memorised']:.1%} below ratio {m['threshold']:.3f}"
        )
    if result.get("class_accuracy"):
        a = result["class_accuracy"]
        per = " ".join(f"{c}:{v['accuracy']:.2f}" for c, v in a["per_class"].items() if v["accuracy"] is not None)
        lines.append(
            f"  [class accuracy, {a['num_samples']} samples, guidance {result['guidance_scale']}] {a['accuracy']:.3f} (chance {a['chance']:.3f}); {per}"
        )
    lines += [f"  warning: {w}" for w in result.get("warnings", [])]
    return "\n".join(lines)
