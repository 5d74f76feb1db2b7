"""Closed forms of the regimes paper: speciation and collapse times, excess entropy, clone probability.

All formulas are in OU time t with Δ_t = 1 - e^{-2t} and α = log(n) / d (natural log).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit

from ddpm.errors import ConfigError


def speciation_time(lam: float) -> float:
    """t_S = ½ log Λ for the largest covariance eigenvalue Λ (0 when Λ <= 1: no speciation after t = 0)."""
    return 0.5 * math.log(lam) if lam > 1 else 0.0


def collapse_time_isotropic(n: int, d: int, sigma2: float) -> float:
    """t_C = ½ log(1 + σ² / (n^{2/d} - 1)) for isotropic Gaussian data of variance σ²."""
    if n < 2:
        return math.inf
    return 0.5 * math.log1p(sigma2 / math.expm1(2.0 * math.log(n) / d))


def collapse_time_spectral(n: int, eigenvalues: np.ndarray) -> float:
    """t_C solving Σ_i log(1 + λ_i / (e^{2t} - 1)) = 2 log n (Gaussian data with covariance eigenvalues λ_i)."""
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    if n < 2:
        return math.inf
    target = 2.0 * math.log(n)

    def g(t: float) -> float:
        return float(np.log1p(lam / math.expm1(2.0 * t)).sum()) - target

    lo, hi = 1e-12, 1.0
    if g(lo) < 0:  # even at t -> 0 the data cannot separate n points (rank too small)
        return 0.0
    while g(hi) > 0:
        hi *= 2.0
        if hi > 1e3:
            raise ConfigError("spectral collapse time did not bracket (eigenvalues too large?)")
    return float(brentq(g, lo, hi, xtol=1e-12, rtol=1e-12))


def excess_entropy(t: np.ndarray, n: int, eigenvalues: np.ndarray) -> np.ndarray:
    """Gaussian excess entropy per dimension s_sep(t) - s(t) = α - (1/2d) Σ_i log(1 + λ_i / (e^{2t} - 1)).

    For t above the collapse time it is the large-n limit of f(t) = -E[log w_{μ0}(x_t)] / d
    (negative below t_C, where the empirical f sticks to 0).
    """
    t = np.asarray(t, dtype=np.float64)
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    d = lam.size
    snr = 1.0 / np.expm1(2.0 * t)
    return math.log(n) / d - 0.5 * np.log1p(np.multiply.outer(snr, lam)).sum(-1) / d


def separation_entropy(t: np.ndarray, alpha: float) -> np.ndarray:
    """s_sep(t) = α + ½ + ½ log(2π Δ_t): entropy per dimension of n separated Gaussians."""
    t = np.asarray(t, dtype=np.float64)
    return alpha + 0.5 + 0.5 * np.log(2 * math.pi * -np.expm1(-2 * t))


def gaussian_entropy(t: np.ndarray, eigenvalues: np.ndarray) -> np.ndarray:
    """s(t) = (1/2d) Σ_i log(2πe (e^{-2t} λ_i + Δ_t)): entropy per dimension of the noised Gaussian."""
    t = np.asarray(t, dtype=np.float64)
    lam = np.asarray(eigenvalues, dtype=np.float64)
    var = np.multiply.outer(np.exp(-2 * t), lam) + (-np.expm1(-2 * t))[..., None]
    return 0.5 * np.log(2 * math.pi * math.e * var).mean(-1)


_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(120)
_GH_W = _GH_W / _GH_W.sum()


def clone_probability_two_class(t: np.ndarray | float, d: int, mu: float = 1.0, sigma: float = 1.0) -> np.ndarray:
    """Probability φ(t) that two clones split at t end in the same class (exact backward process).

    Data ½N(m, σ²I) + ½N(-m, σ²I) with |m|² = d μ̃². At time t the class posterior is
    π_± = sigmoid(±h) with h = 2 e^{-t} m·x_t / Γ_t, Γ_t = σ² e^{-2t} + Δ_t; given the class,
    h = 2q + 2 sqrt(q) g with q = e^{-2t} |m|² / Γ_t and g ~ N(0, 1), and φ = E[π_+² + π_-²].

    Args:
        t: OU time(s).
        d: dimension.
        mu: μ̃, the per-dimension mean amplitude.
        sigma: the class standard deviation.
    """
    t = np.asarray(t, dtype=np.float64)
    e2 = np.exp(-2 * t)
    q = e2 * d * mu**2 / (sigma**2 * e2 + -np.expm1(-2 * t))
    h = 2 * q[..., None] + 2 * np.sqrt(q)[..., None] * _GH_X
    return (_GH_W * (expit(h) ** 2 + expit(-h) ** 2)).sum(-1)


def normalised_clone_probability(phi: np.ndarray, class_probs: np.ndarray) -> np.ndarray:
    """φ̃ = (φ - Σ_c p_c²) / (1 - Σ_c p_c²): 1 when clones always agree, 0 when independent."""
    base = float(np.square(np.asarray(class_probs, dtype=np.float64)).sum())
    if base >= 1.0:
        raise ConfigError("the normalised clone probability needs at least two classes")
    return (np.asarray(phi) - base) / (1.0 - base)
