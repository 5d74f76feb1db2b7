"""The effective potential V_t(q) = -log p_t along the axis joining two classes' means.

Two classes of points a_μ (μ = 1..n, the training points of the two classes) with means m_0, m_1:
the axis is e = (m_1 - m_0)/|m_1 - m_0| through the midpoint m̄ = (m_0 + m_1)/2, and each point
has its coordinate q_μ = e·(a_μ - m̄) along it and its squared distance r_μ² = |a_μ - m̄|² - q_μ²
from it. The noised empirical law is the mixture of N(e^{-t} a_μ, Δ_t I); along the axis (moved
with the data, through e^{-t} m̄) it gives two potentials:

- ``marginal``: the density of the projection e·(x - e^{-t} m̄), a 1-D mixture of N(e^{-t} q_μ, Δ_t):
  V_t(q) = -log (1/n) Σ_μ N(q; e^{-t} q_μ, Δ_t);
- ``section``: p_t on the line itself, x = e^{-t} m̄ + q e, where each point also weighs
  exp(-e^{-2t} r_μ² / (2Δ_t)) (its distance from the line): V_t(q) = -log p_t(e^{-t} m̄ + q e).

Both have the same curvature formula, V_t''(q) = 1/Δ_t - e^{-2t} Var_w(q_μ) / Δ_t², with w_μ(q) the
posterior weights of the points at q (the two differ in w only). For two Gaussian classes
N(m_c, σ² I) the marginal and the section coincide up to a constant (isotropic classes have no
spread across the line through both means), and with a = |m_1 - m_0|/2 and Γ_t = σ² e^{-2t} + Δ_t:

    V_t(q) = -log [½ N(q; e^{-t} a, Γ_t) + ½ N(q; -e^{-t} a, Γ_t)],   V_t''(0) = 1/Γ_t - e^{-2t} a² / Γ_t²,

which changes sign at e^{2t} = 1 + a² - σ²: t* = ½ log(1 + a² - σ²), against t_S = ½ log Λ with
Λ = a² + σ² (the two-class covariance's largest eigenvalue), so t* - t_S = ½ log(1 + (1 - 2σ²)/Λ).
Above t* the potential has one well at the midpoint, below it two (the classes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.special import logsumexp

from ddpm.errors import ConfigError
from ddpm.regimes.collapse import log_grid


@dataclass
class Axis:
    """Two classes' points seen from the axis through their means.

    Args:
        q: coordinates along the axis (n,).
        r2: squared distances from the axis (n,).
        half: a = |m_1 - m_0| / 2.
        within_var: pooled within-class variance of q (the classes' spread along the axis).
        counts: points of each class.
        d: dimension.
    """

    q: np.ndarray
    r2: np.ndarray
    half: float
    within_var: float
    counts: tuple[int, int]
    d: int


def class_axis(x: torch.Tensor, labels: torch.Tensor | None, classes: list[int], name: str) -> tuple[Axis, torch.Tensor]:
    """The axis of ``classes`` and the points of those two classes (refused in one line when a class is absent)."""
    if labels is None:
        raise ConfigError(f"regimes=potential needs labelled data (two classes); {name} has no labels")
    present = sorted(int(c) for c in torch.unique(labels).tolist())
    missing = [c for c in classes if c not in present]
    if missing:
        raise ConfigError(f"potential.classes {list(classes)}: {name} has no class {missing[0]} (its classes: {present})")
    a, b = x[labels == classes[0]].double(), x[labels == classes[1]].double()
    m0, m1 = a.mean(0), b.mean(0)
    dist = float((m1 - m0).norm())
    if not dist > 0:
        raise ConfigError(f"potential.classes {list(classes)}: the two classes have the same mean, there is no axis")
    e, mid = (m1 - m0) / dist, (m0 + m1) / 2
    pts = torch.cat([a, b]) - mid
    q = pts @ e
    r2 = ((pts * pts).sum(1) - q * q).clamp_min(0)
    qa, qb = (a - mid) @ e, (b - mid) @ e
    within = float((((qa - qa.mean()) ** 2).sum() + ((qb - qb.mean()) ** 2).sum()) / (len(qa) + len(qb)))
    return Axis(q.numpy(), r2.numpy(), dist / 2, within, (len(a), len(b)), x.shape[1]), torch.cat([a, b])


def _logits(axis: Axis, q: np.ndarray, t: float, kind: str) -> tuple[np.ndarray, float]:
    """log of each point's Gaussian at the queries q (Q, n), and Δ_t."""
    et, dt = math.exp(-t), -math.expm1(-2 * t)
    L = -((q[:, None] - et * axis.q[None]) ** 2) / (2 * dt)
    if kind == "section":
        L = L - (et * et * axis.r2 / (2 * dt))[None]
    return L, dt


def potential(axis: Axis, q: np.ndarray, t: float, kind: str = "marginal") -> np.ndarray:
    """V_t(q) = -log of the marginal density of the projection, or of p_t on the line (``section``)."""
    L, dt = _logits(axis, np.asarray(q, dtype=np.float64), t, kind)
    dims = 1 if kind == "marginal" else axis.d
    return -(logsumexp(L, axis=1) - math.log(len(axis.q)) - 0.5 * dims * math.log(2 * math.pi * dt))


def curvature(axis: Axis, q: np.ndarray, t: float, kind: str = "marginal") -> np.ndarray:
    """V_t''(q) = 1/Δ_t - e^{-2t} Var_w(q_μ) / Δ_t² (exact, from the posterior weights at q)."""
    L, dt = _logits(axis, np.atleast_1d(np.asarray(q, dtype=np.float64)), t, kind)
    w = np.exp(L - logsumexp(L, axis=1, keepdims=True))
    m1 = w @ axis.q
    var = np.clip(w @ (axis.q**2) - m1 * m1, 0.0, None)
    return 1.0 / dt - math.exp(-2 * t) * var / dt**2


def mixture_potential(q: np.ndarray, t: float | np.ndarray, half: float, sigma: float) -> np.ndarray:
    """Closed form for two Gaussian classes N(±a e, σ² I) (equal weights), up to the constant of the
    section: V_t(q) = -log [½ N(q; e^{-t} a, Γ_t) + ½ N(q; -e^{-t} a, Γ_t)]."""
    t = np.asarray(t, dtype=np.float64)
    et = np.exp(-t)
    gam = sigma**2 * et * et - np.expm1(-2 * t)
    q = np.asarray(q, dtype=np.float64)
    lp = (
        np.logaddexp(-((q - et * half) ** 2) / (2 * gam), -((q + et * half) ** 2) / (2 * gam))
        - math.log(2)
        - 0.5 * np.log(2 * math.pi * gam)
    )
    return -lp


def mixture_curvature(t: float | np.ndarray, half: float, sigma: float) -> np.ndarray:
    """V_t''(0) = 1/Γ_t - e^{-2t} a² / Γ_t² of the two-Gaussian closed form."""
    t = np.asarray(t, dtype=np.float64)
    gam = sigma**2 * np.exp(-2 * t) - np.expm1(-2 * t)
    return 1.0 / gam - np.exp(-2 * t) * half**2 / gam**2


def mixture_curvature_time(half: float, sigma: float) -> float | None:
    """t* = ½ log(1 + a² - σ²): where V_t''(0) changes sign (None when a² <= σ²: never two wells)."""
    return 0.5 * math.log1p(half**2 - sigma**2) if half**2 > sigma**2 else None


def curvature_sign_change(axis: Axis, t_min: float, t_max: float, kind: str = "marginal", points: int = 200) -> float | None:
    """The largest t in [t_min, t_max] at which V_t''(0) changes sign (negative below it), or None."""
    ts = log_grid(t_min, t_max, points)
    c = np.array([float(curvature(axis, np.zeros(1), t, kind)[0]) for t in ts])
    neg = np.nonzero(c < 0)[0]
    if neg.size == 0 or neg[-1] == len(ts) - 1:
        return None
    i = int(neg[-1])
    return float(brentq(lambda t: float(curvature(axis, np.zeros(1), t, kind)[0]), ts[i], ts[i + 1], xtol=1e-10))


def family_times(centre: float, curves: int, t_min: float, t_max: float) -> np.ndarray:
    """The plotted family: ``curves`` times log-spaced from 0.4 to 2 times ``centre`` (the sign change
    t*, else t_S), within the grid."""
    if curves == 1:
        return np.array([min(max(centre, t_min), t_max)])
    return np.clip(centre * np.geomspace(0.4, 2.0, curves), t_min, t_max)


def measure_potential(
    x: torch.Tensor,
    labels: torch.Tensor | None,
    cfg: Any,
    name: str,
    t_min: float,
    t_max: float,
    closed_form: tuple[float, float] | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The potential family, the midpoint curvature against t and its sign change beside t_S.

    Args:
        x: the points (n, d); labels: their classes.
        cfg: the ``potential`` config node (classes, kind, curves, grid).
        name: the data's name (messages).
        t_min, t_max: the time range searched for the sign change.
        closed_form: for a Gaussian mixture, (a, σ) of its law (half the distance between the two
            class means, the class standard deviation): the closed form is added.
    """
    from ddpm.regimes.theory import speciation_time
    from ddpm.score import covariance_eigenvalues

    classes = [int(c) for c in cfg.classes]
    kind = str(cfg.kind)
    axis, pts = class_axis(x, labels, classes, name)
    lam = float(covariance_eigenvalues(pts)[0])
    t_s = speciation_time(lam)
    t_star = curvature_sign_change(axis, t_min, t_max, kind)
    a, s2 = axis.half, axis.within_var
    rec: dict[str, Any] = {
        "potential_classes": classes,
        "potential_kind": kind,
        "potential_counts": list(axis.counts),
        "potential_half_distance": a,
        "potential_within_variance_along_axis": s2,
        "potential_Lambda_two_class": lam,
        "potential_t_S_two_class": t_s,
        "potential_t_curvature": t_star,
        "potential_t_curvature_gauss_axis": 0.5 * math.log1p(a * a - s2) if a * a > s2 else None,
    }
    if t_star is not None and t_s > 0:
        rec["potential_t_curvature_minus_t_S"] = t_star - t_s
    centre = t_star or (t_s if t_s > 0 else 1.0)  # the family spans the sign change: wells on both sides
    times = family_times(centre, int(cfg.curves), t_min, t_max)
    reach = max(math.exp(-t) * float(np.quantile(np.abs(axis.q), 0.99)) + 2 * math.sqrt(-math.expm1(-2 * t)) for t in times)
    q = np.linspace(-reach, reach, int(cfg.grid))
    V = np.stack([potential(axis, q, t, kind) for t in times])
    ct = log_grid(t_min, t_max, 200)
    curv = np.array([float(curvature(axis, np.zeros(1), t, kind)[0]) for t in ct])
    curves: dict[str, np.ndarray] = {"times": times, "q": q, "V": V, "curv_t": ct, "curv": curv}
    if closed_form is not None:
        a0, sigma = closed_form
        rec["potential_closed_form_half_distance"] = a0
        rec["potential_t_curvature_closed_form"] = mixture_curvature_time(a0, sigma)
        rec["potential_t_S_closed_form"] = speciation_time(a0 * a0 + sigma**2)
        curves["V_closed_form"] = np.stack([mixture_potential(q, t, a0, sigma) for t in times])
        curves["curv_closed_form"] = mixture_curvature(ct, a0, sigma)
    return rec, curves
