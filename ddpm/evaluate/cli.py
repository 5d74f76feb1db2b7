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

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import ddpm
from ddpm.checkpoint import atomic_write
from ddpm.cli import hydra_main
from ddpm.conditioning import per_class_accuracy, round_robin_labels
from ddpm.data import from_model_range, load_dataset, open_split, to_model_range
from ddpm.errors import ConfigError
from ddpm.evaluate.config import validate_evaluate
from ddpm.generate import generate
from ddpm.pretrained import load_for_inference, network
from ddpm.samplers import build_sampler, make_eps_fn

log = logging.getLogger(__name__)


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
    from ddpm.evaluate.fidelity import INCEPTION_NAME, fidelity_metrics, kid_subset_size, register_domain_extractor

    fe = cfg.feature_extractor
    wanted = [m for m in ("fid", "kid", "isc") if m in cfg.metrics]
    if fe.kind == "inception":
        weights = inception_weights
        extractor, tag = INCEPTION_NAME, f"{INCEPTION_NAME}@{Path(weights).name if weights else 'download'}"
    else:
        weights, extractor = str(clf.path), register_domain_extractor()
        tag = f"{dataset_cfg.name}-classifier@{clf.digest}"
    real_all = open_split(dataset_cfg, cfg.paths.data_dir, cfg.paths.cache_dir, cfg.real_split, load_dataset).images
    n_real = len(real_all) if cfg.num_real is None else min(int(cfg.num_real), len(real_all))
    real = real_all[:n_real]
    if cfg.num_real is not None and n_real < cfg.num_real:
        _warn(warnings, f"num_real={cfg.num_real} exceeds the {n_real} images of the {cfg.real_split} split: FID/KID use {n_real}")
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
    cache_name = f"{dataset_cfg.name}-{dataset_cfg.image_size}px-{cfg.real_split}-{n_real}-{tag.replace('@', '-').replace('.', '_')}"
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
    res.update(feature_extractor=fe.name, extractor_id=tag, real_split=cfg.real_split, seconds=round(time.time() - t0, 1))
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


def _write(path: Path, data: bytes | str) -> None:
    """Write one output through a temp file and a rename: a failed write (a full disk) leaves no torn
    file, and the file of an earlier run under that name stays as it was."""
    atomic_write(path, lambda f: f.write(data.encode() if isinstance(data, str) else data))


def _write_json(path: Path, obj: Any) -> None:
    _write(path, json.dumps(obj, indent=2) + "\n")


def _scalars(prefix: str, obj: Any, out: dict[str, float]) -> None:
    """Flatten the numeric leaves of ``obj`` into TensorBoard tags."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _scalars(f"{prefix}/{k}" if prefix else str(k), v, out)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and math.isfinite(obj):
        out[prefix] = float(obj)


def evaluate(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Evaluate ``cfg.ckpt`` into ``run_dir`` (metrics.json, tb/, samples.png, memorisation.png); returns the metrics."""
    from torchvision.utils import save_image

    validate_evaluate(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    fe = cfg.feature_extractor
    metrics = list(cfg.metrics)
    inception_weights = None
    if fe.kind == "inception" and any(m in metrics for m in ("fid", "kid", "isc")):
        from ddpm.evaluate.fidelity import resolve_inception_weights

        # Before any other work: a missing weights file must fail within a second, not after sampling.
        inception_weights = resolve_inception_weights(fe.weights_path, cfg.paths.cache_dir)
    pre, rt = load_for_inference(cfg)
    device = rt.device
    dataset_cfg = pre.cfg.dataset
    if fe.kind == "domain" and fe.dataset and fe.dataset != dataset_cfg.name:
        raise ConfigError(f"feature_extractor={fe.name} is the {fe.dataset} classifier, but {pre.path} was trained on {dataset_cfg.name}")
    warnings: list[str] = []
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
        "device": str(device),
        "precision": rt.precision,
    }
    classes = pre.model.num_classes
    if not classes and float(cfg.guidance_scale) != 1.0:
        raise ConfigError(f"guidance_scale needs a class-conditional checkpoint; {pre.path} is unconditional")
    # conditional: sample i is of class i % classes, whatever num_samples is; denoising uses the null class
    labels = round_robin_labels(int(cfg.num_samples), classes) if classes else None
    result.update(num_classes=classes, guidance_scale=float(cfg.guidance_scale) if classes else None)
    eps_fn = make_eps_fn(network(pre, cfg.runtime), pre.diffusion, rt.autocast, guidance_scale=float(cfg.guidance_scale))

    need_samples = any(m in metrics for m in ("fid", "kid", "isc", "coverage", "memorisation"))
    domain_fidelity = fe.kind == "domain" and any(m in metrics for m in ("fid", "kid", "isc"))
    want_clf = domain_fidelity or "coverage" in metrics or (classes and need_samples)
    clf = _classifier(cfg, dataset_cfg, device, required=domain_fidelity) if want_clf else None

    fake = None
    if need_samples:
        sampler = build_sampler(cfg.sampler, pre.diffusion)
        t0 = time.time()
        x = generate(
            eps_fn,
            sampler,
            pre.shape,
            int(cfg.num_samples),
            int(cfg.seed),
            int(cfg.batch_size),
            device,
            progress=bool(cfg.progress),
            labels=labels,
        )
        result["sampling_seconds"] = round(time.time() - t0, 1)
        fake = from_model_range(x)
        atomic_write(run_dir / "samples.png", lambda f: save_image(fake[:64].float() / 255.0, f, nrow=8, format="PNG"))
        atomic_write(run_dir / "samples.npz", lambda f: np.savez_compressed(f, images=fake.numpy()))

    if any(m in metrics for m in ("fid", "kid", "isc")):
        result["fidelity"] = {fe.name: _fidelity(cfg, dataset_cfg, fake, clf, inception_weights, device, warnings)}

    if "coverage" in metrics:
        if clf is None:
            _warn(warnings, f"coverage skipped: dataset {dataset_cfg.name} has no class labels")
        else:
            from ddpm.evaluate.coverage import coverage

            test = open_split(dataset_cfg, cfg.paths.data_dir, cfg.paths.cache_dir, "test", load_dataset)
            if len(test) < cfg.num_samples:
                _warn(
                    warnings,
                    f"num_samples={cfg.num_samples} exceeds the {len(test)} test images: coverage's real reference holds {len(test)}",
                )
            result["coverage"] = {
                "classifier": f"{dataset_cfg.name}-classifier@{clf.digest}",
                "classifier_test_accuracy": clf.test_accuracy,
                "generated": coverage(clf.model, fake, device),
                "real_test_reference": coverage(clf.model, test.images[: int(cfg.num_samples)], device),
            }

    if labels is not None and fake is not None:
        result["class_accuracy"] = _class_accuracy(clf, fake, labels, classes, dataset_cfg, device, warnings)

    if "denoise" in metrics:
        from ddpm.evaluate.denoising import denoising_quality

        test = open_split(dataset_cfg, cfg.paths.data_dir, cfg.paths.cache_dir, "test", load_dataset)
        x0 = to_model_range(test.images[: int(cfg.denoise.num_images)]).to(device)
        if len(x0) < cfg.denoise.num_images:
            _warn(warnings, f"denoise.num_images={cfg.denoise.num_images} exceeds the {len(x0)} test images: denoising {len(x0)}")
        t0 = time.time()
        result["denoise"] = denoising_quality(
            eps_fn, pre.diffusion, cfg.sampler, x0, list(cfg.denoise.steps), int(cfg.seed), int(cfg.batch_size), warnings
        )
        result["denoise"]["seconds"] = round(time.time() - t0, 1)

    if "memorisation" in metrics:
        from ddpm.memorisation import memorisation, save_memorisation_grid
        from ddpm.pretrained import training_set

        train = training_set(cfg, pre).images  # the network's training subset (dataset.n), not the whole split
        mirrored = bool(pre.cfg.dataset.get("hflip", False))  # a run trained with flips saw the mirrors too
        mem = memorisation(fake, train, float(cfg.memorisation.threshold), device, mirrored)
        result["memorisation"] = mem.summary(len(train) * (2 if mirrored else 1))
        if cfg.memorisation.grid > len(fake):
            _warn(
                warnings,
                f"memorisation.grid={cfg.memorisation.grid} exceeds num_samples={len(fake)}: the grid shows {len(fake)} pairs",
            )
        if cfg.memorisation.grid > 0:
            grid = save_memorisation_grid(fake, train, mem, run_dir / "memorisation.png", int(cfg.memorisation.grid))
            result["memorisation"]["grid"] = grid.name

    result["warnings"] = warnings
    _write_json(run_dir / "metrics.json", result)
    scalars: dict[str, float] = {}
    for key in ("fidelity", "coverage", "class_accuracy", "denoise", "memorisation"):
        if key in result:
            _scalars(f"eval/{key}", result[key], scalars)
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run_dir / "tb")) as writer:
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, pre.step)
    log.info("metrics written to %s", run_dir / "metrics.json")
    print(summary_lines(result))
    return result


def summary_lines(result: dict) -> str:
    """A short human-readable report of ``metrics.json``."""
    lines = [f"{result['ckpt']} (step {result['step']}), sampler {result['sampler']['name']}"]
    for name, r in result.get("fidelity", {}).items():
        parts = [f"{k} {r[k]:.4g}" for k in ("fid", "kid_mean", "isc_mean") if k in r]
        lines.append(f"  [{name} features, {r['num_generated']} generated vs {r['num_real']} real {r['real_split']}] " + ", ".join(parts))
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


main = hydra_main(config_name="evaluate")(evaluate)

if __name__ == "__main__":
    main()
