"""The disjoint-halves test (Kadkhodaie, Guth, Simoncelli & Mallat, ICLR 2024).

Two networks trained on disjoint, class-balanced subsets of N images (``dataset.n=N
dataset.subset_part=0|1``) are sampled from the same seeds (sample i from the generator seeded
``seed + i`` for both). For small N each copies its own set and the two samples differ; for large N
both have learned the same density and draw nearly the same image, far from every training image.

Per N: the mean cosine similarity of paired samples (images in [-1, 1] centred on the mean training
image, so the shared background does not count as agreement), their normalised L2 distance
‖a − b‖ / √(‖a‖ ‖b‖) on the same centred images, each network's f_mem against its own set (the copy
criterion, :mod:`ddpm.memorisation`) and each sample's distance to its nearest training image (RMS
per pixel on the [0, 1] scale).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpm.data import to_model_range
from ddpm.memorisation import memorisation, reference_images

COLUMNS = (
    "n",
    "cosine_mean",
    "cosine_se",
    "l2_normalised_mean",
    "f_mem_0",
    "f_mem_0_se",
    "f_mem_1",
    "f_mem_1_se",
    "nn_rms_0",
    "nn_rms_1",
    "cross_nn_rms_0",
    "samples",
)


def pair_statistics(a: torch.Tensor, b: torch.Tensor, train_a: torch.Tensor, train_b: torch.Tensor, threshold: float) -> dict[str, Any]:
    """Statistics of paired samples ``a[i]``, ``b[i]`` of two networks and their training sets.

    Args:
        a: samples of network 0 (S, C, H, W) in [-1, 1].
        b: samples of network 1 from the same seeds.
        train_a: network 0's training images (n, C, H, W) in [-1, 1] (with mirrors if it trained with flips).
        train_b: network 1's.
        threshold: k of the copy criterion.
    """
    mean = torch.cat([train_a, train_b]).double().mean(0)
    ca, cb = (a.double() - mean).flatten(1), (b.double() - mean).flatten(1)
    na, nb = ca.norm(dim=1), cb.norm(dim=1)
    cos = ((ca * cb).sum(1) / (na * nb).clamp_min(1e-12)).numpy()
    l2 = ((ca - cb).norm(dim=1) / (na * nb).sqrt().clamp_min(1e-12)).numpy()
    d = a[0].numel()
    # distances on the [0, 1] pixel scale, as RMS per pixel: (x + 1) / 2
    m0 = memorisation((a + 1) / 2, (train_a + 1) / 2, threshold)
    m1 = memorisation((b + 1) / 2, (train_b + 1) / 2, threshold)
    cross = memorisation((a + 1) / 2, (train_b + 1) / 2, threshold)
    return {
        "cosine": cos,
        "l2_normalised": l2,
        "cosine_mean": float(cos.mean()),
        "cosine_se": float(cos.std(ddof=1) / np.sqrt(len(cos))) if len(cos) > 1 else 0.0,
        "l2_normalised_mean": float(l2.mean()),
        "f_mem_0": m0.fraction,
        "f_mem_0_se": m0.fraction_se,
        "f_mem_1": m1.fraction,
        "f_mem_1_se": m1.fraction_se,
        "nn_rms_0": float(np.median(m0.d1) / np.sqrt(d)),
        "nn_rms_1": float(np.median(m1.d1) / np.sqrt(d)),
        "cross_nn_rms_0": float(np.median(cross.d1) / np.sqrt(d)),  # network 0's samples against the set it never saw
        "samples": len(cos),
    }


def sample_pair(ckpts: tuple[Path, Path], cfg: Any, samples: int, seed: int, device: str = "cpu") -> dict[str, Any]:
    """Load both networks, sample each from the same seeds and compare (see :func:`pair_statistics`).

    Args:
        ckpts: the checkpoints of parts 0 and 1.
        cfg: a config with ``paths`` and ``sampler`` nodes (the sampler both networks use) and ``memorisation.threshold``.
        samples: paired samples.
        seed: seed of sample 0.
        device: where to run.
    """
    from ddpm.generate import generate
    from ddpm.pretrained import load_pretrained, training_set
    from ddpm.samplers import build_sampler, make_eps_fn

    out: dict[str, Any] = {}
    for part, ckpt in enumerate(ckpts):
        pre = load_pretrained(ckpt, device)
        images = training_set(cfg, pre).images
        out[f"train_{part}"] = reference_images(to_model_range(images), bool(pre.cfg.dataset.get("hflip", False)))
        out[f"samples_{part}"] = generate(
            make_eps_fn(pre.model, pre.diffusion), build_sampler(cfg.sampler, pre.diffusion), pre.shape, samples, seed, 256, device
        )
        out["n"] = len(images)
    stats = pair_statistics(out["samples_0"], out["samples_1"], out["train_0"], out["train_1"], float(cfg.memorisation.threshold))
    return {**out, **stats}


def write_results(results: list[dict[str, Any]], out_dir: Path, pairs: int = 8, command: str | None = None) -> list[Path]:
    """``halves.csv``, ``halves.json`` and the figures (statistics against N; example pairs, small N on top).

    Args:
        results: one :func:`sample_pair` record per N.
        out_dir: where to write.
        pairs: example pairs per row of the pairs figure.
        command: the command line that made the test, kept in ``halves.json``.
    """
    from ddpm.regimes.plots import halves_plots

    results = sorted(results, key=lambda r: r["n"])
    rows = [{k: r[k] for k in COLUMNS} for r in results]
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "halves.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    (out_dir / "halves.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2))
    return halves_plots(results, out_dir, pairs)
