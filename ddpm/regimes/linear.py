"""The linear model: the Gaussian surrogate N(μ, Σ) of a dataset and its exact score.

With μ and Σ the mean and covariance of the training points, the noised surrogate is
N(e^{-t} μ, e^{-2t} Σ + Δ_t I), so with Σ = U diag(λ) Uᵀ

    ∇log p_t(x) = -(e^{-2t} Σ + Δ_t I)^{-1} (x - e^{-t} μ),
    ε_G(x) = sqrt(Δ_t) (e^{-2t} Σ + Δ_t I)^{-1} (x - e^{-t} μ),
    E[x_0 | x_t] = μ + e^{-t} Σ (e^{-2t} Σ + Δ_t I)^{-1} (x - e^{-t} μ),

a linear function of x at every t (the best linear denoiser of the data: the Wiener filter). Only
the eigenvectors with λ > 0 are kept (the rank is at most n - 1): the rest of the space has
variance ``rest`` (0 for a dataset, whose surrogate lives in the points' affine span).

``sampler=gaussian_score`` samples with it (:mod:`ddpm.samplers.gaussian_score`), and
``regimes=trained`` sets it beside the network and the exact empirical score (:func:`eps_distances`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ddpm.errors import DataError
from ddpm.regimes.seeds import generator
from ddpm.schedules import eps_from_score
from ddpm.score import _as_times, delta

# Above this dimension the covariance is eigendecomposed through the n x n Gram matrix (n <= this),
# or by a randomised top-k SVD.
FULL_EIG_MAX = 4096


def covariance_eigen(x: torch.Tensor, top: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mean (d,), eigenvalues (r,) and orthonormal eigenvectors (d, r) of the covariance (1/n) of the
    rows of ``x``, descending, with λ > 0 only; and the variance left to the other directions.

    Exact for d <= 4096 (d x d eigendecomposition) or n <= 4096 (through the n x n Gram matrix);
    otherwise the top ``top`` by a randomised SVD, the rest of the total variance spread evenly over
    the other d - top directions.
    """
    x = x.to(torch.float64)
    n, d = x.shape
    if n < 2:
        raise DataError(f"a Gaussian surrogate needs at least 2 points, got {n}")
    mu = x.mean(0)
    xc = x - mu
    rest = 0.0
    if d <= FULL_EIG_MAX:
        lam, vec = torch.linalg.eigh(xc.T @ xc / n)
    elif n <= FULL_EIG_MAX:
        lam, w = torch.linalg.eigh(xc @ xc.T / n)
        keep = lam > lam.max() * 1e-12
        lam, w = lam[keep], w[:, keep]
        vec = xc.T @ w / torch.sqrt(n * lam)[None]  # eigenvectors of xcᵀxc/n from those of xc xcᵀ/n
    else:
        torch.manual_seed(seed)
        k = min(top, d)
        _, s, v = torch.svd_lowrank(xc, q=min(k + 16, d), niter=4)
        lam, vec = (s[:k] ** 2) / n, v[:, :k]
        rest = max(float((xc * xc).sum() / n - lam.sum()), 0.0) / max(d - k, 1)
    order = torch.argsort(lam, descending=True)
    lam, vec = lam[order], vec[:, order]
    keep = lam > max(float(lam[0]), 1e-300) * 1e-12
    return mu, lam[keep].clamp_min(0), vec[:, keep].contiguous(), rest


class GaussianScore:
    """The exact score of N(μ, U diag(λ) Uᵀ + rest (I - U Uᵀ)), noised by the OU process.

    Args:
        mean: μ (d,).
        eigenvalues: λ (r,), the covariance's eigenvalues along ``eigenvectors``.
        eigenvectors: U (d, r), orthonormal columns.
        rest: the variance of every direction orthogonal to U (0: the surrogate of a dataset).
        device: where it computes.
    """

    def __init__(
        self, mean: torch.Tensor, eigenvalues: torch.Tensor, eigenvectors: torch.Tensor, rest: float = 0.0, device: Any = "cpu"
    ) -> None:
        self.device = torch.device(device)
        self.mean = mean.to(self.device, torch.float64)
        self.lam = eigenvalues.to(self.device, torch.float64)
        self.U = eigenvectors.to(self.device, torch.float64)
        self.rest = float(rest)
        self.d = self.mean.numel()

    @classmethod
    def from_points(cls, x: torch.Tensor, device: Any = "cpu", top: int = 512) -> GaussianScore:
        """The surrogate of points ``x`` (n, d): their mean and covariance (1/n)."""
        mu, lam, vec, rest = covariance_eigen(x.flatten(1), top)
        return cls(mu, lam, vec, rest, device)

    def _apply(self, r: torch.Tensor, t: torch.Tensor, power: float = -1.0) -> torch.Tensor:
        """(e^{-2t} Σ + Δ_t I)^{power} r for rows r (B, d) and times t (B,)."""
        e2, dt = torch.exp(-2 * t)[:, None], delta(t)[:, None]
        base = (e2 * self.rest + dt) ** power  # (B, 1): every direction outside U
        coef = (e2 * self.lam[None] + dt) ** power - base  # (B, r)
        return base * r + ((r @ self.U) * coef) @ self.U.T

    def score(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """∇log p_t(x) = -(e^{-2t} Σ + Δ_t I)^{-1} (x - e^{-t} μ) (float64)."""
        x = x.to(self.device, torch.float64)
        tt = _as_times(t, x.shape[0]).to(self.device)
        return -self._apply(x - torch.exp(-tt)[:, None] * self.mean[None], tt)

    def eps(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """ε_G(x) = -sqrt(Δ_t) ∇log p_t(x) (float64)."""
        x = x.to(self.device, torch.float64)
        tt = _as_times(t, x.shape[0]).to(self.device)
        return eps_from_score(self.score(x, tt), delta(tt).sqrt()[:, None])

    def denoised(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """E[x_0 | x_t] = e^{t} (x + Δ_t ∇log p_t(x)) (Tweedie), linear in x."""
        x = x.to(self.device, torch.float64)
        tt = _as_times(t, x.shape[0]).to(self.device)
        return torch.exp(tt)[:, None] * (x + delta(tt)[:, None] * self.score(x, tt))

    def log_density(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """log p_t(x) (float64; needs rest > 0 or t > 0 in every direction)."""
        x = x.to(self.device, torch.float64)
        tt = _as_times(t, x.shape[0]).to(self.device)
        r = x - torch.exp(-tt)[:, None] * self.mean[None]
        e2, dt = torch.exp(-2 * tt), delta(tt)
        logdet = torch.log(e2[:, None] * self.lam[None] + dt[:, None]).sum(1) + (self.d - self.lam.numel()) * torch.log(e2 * self.rest + dt)
        quad = (r * self._apply(r, tt)).sum(1)
        return -0.5 * (quad + logdet + self.d * math.log(2 * math.pi))


def eps_distances(
    eps_net: Any,
    exact: Any,
    gauss: GaussianScore,
    schedule: Any,
    data: torch.Tensor,
    steps: list[int],
    queries: int,
    seed: int,
    batch: int = 64,
) -> dict[str, np.ndarray]:
    """Three ε-distances against t at noised points of ``data`` (the points and noise of
    :func:`ddpm.regimes.trained.eps_gap`, the same at every step):

    - ``net_exact`` = E|ε_θ - ε*|² / E|ε*|² (network to the exact empirical score),
    - ``net_gauss`` = E|ε_θ - ε_G|² / E|ε_G|² (network to the Gaussian surrogate),
    - ``exact_gauss`` = E|ε* - ε_G|² / E|ε_G|² (exact score to the Gaussian surrogate).

    Args:
        eps_net: the network's ε(x, k, t) on flattened float64 states, or None (then only exact_gauss).
        exact: the :class:`ddpm.score.ExactScore` of the training points.
        gauss: the Gaussian surrogate of the same points.
        schedule: the discrete schedule (ᾱ and t of every step).
        data: points to noise (n, d).
        steps: schedule steps.
        queries: points per step.
        seed: seed of the choice of points and noise.
        batch: queries per call.
    """
    g = generator(seed, "gap")
    idx = torch.randperm(len(data), generator=g)[:queries]
    z = torch.randn(len(idx), data.shape[1], generator=g, dtype=torch.float64)
    a0 = data[idx].to(torch.float64)
    abar, ts = schedule.alphas_cumprod, schedule.ou_times
    names = ("net_exact", "net_gauss", "exact_gauss") if eps_net is not None else ("exact_gauss",)
    out: dict[str, list[float]] = {k: [] for k in names}
    for k in steps:
        x = abar[k].sqrt() * a0 + (1 - abar[k]).sqrt() * z
        t = float(ts[k])
        parts: dict[str, list[torch.Tensor]] = {"net": [], "exact": [], "gauss": []}
        for s in range(0, len(x), batch):
            xb = x[s : s + batch]
            parts["exact"].append(exact.eps(xb, t).cpu())
            parts["gauss"].append(gauss.eps(xb, t).cpu())
            if eps_net is not None:
                parts["net"].append(eps_net(xb, k, t).cpu().to(torch.float64))
        e = {name: torch.cat(v) for name, v in parts.items() if v}
        for name in names:
            a, b = name.split("_")
            out[name].append(float(((e[a] - e[b]) ** 2).sum(1).mean() / (e[b] ** 2).sum(1).mean()))
    res = {"k": np.array(steps), "t": ts[steps].numpy()}
    res.update({k: np.array(v) for k, v in out.items()})
    return res


def summarise_distances(dist: dict[str, np.ndarray], t_s: float | None) -> dict[str, Any]:
    """The distances at the smallest time and at the grid time nearest t_S, for the records."""
    out: dict[str, Any] = {"eps_distance_t": dist["t"].tolist()}
    j = int(np.argmin(np.abs(np.log(dist["t"]) - math.log(t_s)))) if t_s else None
    for name in ("net_exact", "net_gauss", "exact_gauss"):
        if name in dist:
            out[f"eps_{name}"] = dist[name].tolist()
            out[f"eps_{name}_small_t"] = float(dist[name][0])
            out[f"eps_{name}_t_S"] = float(dist[name][j]) if j is not None else None
    if j is not None:
        out["eps_distance_t_near_t_S"] = float(dist["t"][j])
    return out
