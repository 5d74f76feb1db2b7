"""The linear model of ``regimes=trained``: the network and the exact empirical score against the
Gaussian surrogate N(μ, Σ) of the same points (:class:`ddpm.score.GaussianScore`, the best linear
denoiser of the data: the Wiener filter).

``sampler=gaussian_score`` samples with the same surrogate (:mod:`ddpm.samplers.gaussian_score`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ddpm.regimes.seeds import generator
from ddpm.score import GaussianScore, covariance_eigen


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


__all__ = ["GaussianScore", "covariance_eigen", "eps_distances", "summarise_distances"]
