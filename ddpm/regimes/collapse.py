"""Collapse estimators of the exact empirical score along a grid of times.

With x_t = e^{-t} a_{μ0} + sqrt(Δ_t) z (forward-noised training points, common random numbers
over t): f(t) = -E[log w_{μ0}(x_t)] / d is the excess entropy of the noised empirical law,
p_½(t) = P(w_{μ0} > ½) and E[Σ_μ w_μ²] the probability that two clones land on the same point.
The headline collapse time is the largest t where p_½ crosses ½.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ddpm.regimes.seeds import generator
from ddpm.score import ExactScore


def log_grid(t_min: float, t_max: float, points: int) -> np.ndarray:
    """``points`` log-spaced times from ``t_min`` to ``t_max``."""
    return np.exp(np.linspace(math.log(t_min), math.log(t_max), int(points)))


def draw_queries(n: int, d: int, queries: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-point indices (without replacement while possible) and standard normal noise."""
    g = generator(seed, "queries")
    if queries <= n:
        idx = torch.randperm(n, generator=g)[:queries]
    else:
        idx = torch.randint(0, n, (queries,), generator=g)
    return idx, torch.randn(queries, d, generator=g, dtype=torch.float64)


def _mean_se(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = v.shape[-1]
    return v.mean(-1), (v.std(-1, ddof=1) / math.sqrt(q) if q > 1 else np.zeros(v.shape[:-1]))


def estimator_curves(score: ExactScore, times: np.ndarray, index: torch.Tensor, z: torch.Tensor, batch: int) -> dict[str, np.ndarray]:
    """f, p_½ and E[Σ w²] (means and standard errors) at ``times`` for the given queries.

    Args:
        score: the exact-score kernel of the training points.
        times: OU times (T,).
        index: training point of each query (Q,).
        z: noise of each query (Q, d).
        batch: queries per kernel call.
    """
    tt = torch.as_tensor(np.asarray(times), dtype=torch.float64)
    logw, w2 = [], []
    for s in range(0, len(index), batch):
        out = score.forward_stats(index[s : s + batch], z[s : s + batch], tt)
        logw.append(out["log_w0"].cpu().numpy())
        w2.append(out["sum_w2"].cpu().numpy())
    logw, w2 = np.concatenate(logw, 1), np.concatenate(w2, 1)
    f, f_se = _mean_se(-logw / score.d)
    p, p_se = _mean_se((logw > math.log(0.5)).astype(np.float64))
    s2, s2_se = _mean_se(w2)
    return {
        "t": np.asarray(times, dtype=np.float64),
        "f": f,
        "f_se": f_se,
        "p_half": p,
        "p_half_se": p_se,
        "sum_w2": s2,
        "sum_w2_se": s2_se,
    }


def last_crossing(times: np.ndarray, values: np.ndarray, level: float = 0.5) -> tuple[float | None, int | None]:
    """Largest t where ``values`` falls through ``level`` (linear interpolation), and the grid index below it.

    Returns (None, None) when the curve never reaches ``level`` or is still above it at the last time.
    """
    above = np.nonzero(np.asarray(values) >= level)[0]
    if above.size == 0 or above[-1] == len(values) - 1:
        return None, None
    i = int(above[-1])
    v0, v1 = float(values[i]), float(values[i + 1])
    frac = (v0 - level) / (v0 - v1) if v0 != v1 else 0.0
    return float(times[i] + frac * (times[i + 1] - times[i])), i


def first_rise(times: np.ndarray, values: np.ndarray, level: float) -> float | None:
    """Smallest t where ``values`` rises above ``level`` (linear interpolation), or None."""
    above = np.nonzero(np.asarray(values) > level)[0]
    if above.size == 0:
        return None
    i = int(above[0])
    if i == 0:
        return float(times[0])
    v0, v1 = float(values[i - 1]), float(values[i])
    return float(times[i - 1] + (level - v0) / (v1 - v0) * (times[i] - times[i - 1]))


def measure_collapse(
    score: ExactScore, t_min: float, t_max: float, points: int, refine: int, queries: int, batch: int, seed: int, f_threshold: float
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Curves on a log grid, refined between the grid points that bracket the p_½ crossing.

    Returns the summary (``t_C`` from p_½, ``t_C_f_threshold``, the bracket) and the curves
    (coarse and refined points merged, sorted by t).
    """
    index, z = draw_queries(score.n, score.d, queries, seed)
    times = log_grid(t_min, t_max, points)
    curves = estimator_curves(score, times, index, z, batch)
    t_c, i = last_crossing(curves["t"], curves["p_half"])
    if t_c is not None and refine > 0:
        fine = np.linspace(times[i], times[i + 1], refine + 2)[1:-1]
        extra = estimator_curves(score, fine, index, z, batch)
        order = np.argsort(np.concatenate([curves["t"], extra["t"]]))
        curves = {k: np.concatenate([curves[k], extra[k]])[order] for k in curves}
        t_c, _ = last_crossing(curves["t"], curves["p_half"])
    alpha = math.log(score.n) / score.d
    summary = {
        "t_C": t_c,
        "t_C_f_threshold": first_rise(curves["t"], curves["f"] / alpha, f_threshold) if alpha > 0 else None,
        "f_threshold": f_threshold,
        "p_half_range": [float(curves["p_half"][0]), float(curves["p_half"][-1])],
        "collapse_queries": int(queries),
        "collapse_grid": [float(t_min), float(t_max), int(points), int(refine)],
    }
    if t_c is None:
        summary["t_C_note"] = (
            f"p_½ does not cross ½ inside [{t_min}, {t_max}] (p_½ from {curves['p_half'][0]:.3f} to {curves['p_half'][-1]:.3f}); widen collapse.t_min/t_max"
        )
    return summary, curves
