"""Covariance spectrum: Λ and t_S = ½ log Λ, top eigenvalues, Gaussian-surrogate collapse times."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ddpm.regimes import theory
from ddpm.regimes.data import Points

# Above this dimension the d x d eigendecomposition is replaced by a randomised top-k estimate.
FULL_EIG_MAX_D = 4096


def covariance_eigenvalues(x: torch.Tensor, top: int = 256, seed: int = 0) -> np.ndarray:
    """Eigenvalues (descending, length d) of the covariance (1/n normalisation) of the rows of ``x``.

    Exact (symmetric eigensolver, float64) for d <= 4096 or n <= 4096; otherwise the ``top``
    largest come from a randomised SVD and the remaining variance is spread evenly over the
    other d - top directions (the sum, hence the mean eigenvalue, stays exact).

    Args:
        x: points (n, d).
        top: eigenvalues estimated exactly in the large-d case.
        seed: seed of the randomised SVD.
    """
    xc = x.to(torch.float64)
    xc = xc - xc.mean(0)
    n, d = xc.shape
    if d <= FULL_EIG_MAX_D:
        eig = torch.linalg.eigvalsh(xc.T @ xc / n)
    elif n <= FULL_EIG_MAX_D:
        eig = torch.cat([torch.linalg.eigvalsh(xc @ xc.T / n), torch.zeros(d - n, dtype=torch.float64)])
    else:
        torch.manual_seed(seed)
        k = min(top, d)
        _, s, _ = torch.svd_lowrank(xc, q=min(k + 16, d), niter=4)
        head = (s[:k] ** 2) / n
        rest = max(float((xc * xc).sum() / n - head.sum()), 0.0) / max(d - k, 1)
        eig = torch.cat([head, torch.full((d - k,), rest, dtype=torch.float64)])
    return np.sort(eig.clamp_min(0).numpy())[::-1].copy()


def analyse_spectrum(points: Points, top_k: int = 8) -> dict[str, Any]:
    """Λ, t_S and the Gaussian-surrogate collapse times of ``points``.

    Λ is measured on the training points, or on all images of the split when the points are a
    subset (a subset covariance of rank < d would understate the spectrum). Where the law is
    known (synthetic data) its exact spectrum gives the theory values.
    """
    sample = covariance_eigenvalues(points.x)
    ref = covariance_eigenvalues(points.reference) if points.reference is not None and len(points.reference) > points.n else sample
    lam = float(ref[0])
    theory_eigs = points.population_eigs if points.population_eigs is not None else ref
    n, d = points.n, points.d
    mean_eig = float(theory_eigs.mean())
    top = [float(v) for v in ref[:top_k]]
    out: dict[str, Any] = {
        "Lambda": lam,
        "t_S": theory.speciation_time(lam),
        "Lambda_training_points": float(sample[0]),
        "spectrum_source": "all images of the split" if ref is not sample else "training points",
        "top_eigenvalues": top,
        "top_eigenvalue_times": [theory.speciation_time(v) for v in top],
        "mean_eigenvalue": mean_eig,
        "alpha": math.log(n) / d,
        "t_C_gauss_iso": theory.collapse_time_isotropic(n, d, mean_eig),
        "t_C_gauss_spectral": theory.collapse_time_spectral(n, theory_eigs),
    }
    if points.population_eigs is not None:
        out["Lambda_population"] = float(points.population_eigs.max())
        out["t_S_theory"] = theory.speciation_time(out["Lambda_population"])
    return out, ref, theory_eigs
