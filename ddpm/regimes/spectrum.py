"""Covariance spectrum: Λ and t_S = ½ log Λ, top eigenvalues, Gaussian-surrogate collapse times."""

from __future__ import annotations

import math
from typing import Any

from ddpm.regimes import theory
from ddpm.regimes.data import Points
from ddpm.score import covariance_eigenvalues


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
