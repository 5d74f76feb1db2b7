"""Backward sampling while tracking the nearest scaled training point e^{-t} a_μ (= argmax_μ w_μ).

The last step at which the nearest point changes is a per-trajectory collapse time. With the
exact score every sample ends on a training point (a sanity check, not a finding); with a
trained network the same tracking shows whether and when trajectories commit to one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ddpm.regimes.sampling import EpsFnT, backward, visited_steps
from ddpm.regimes.score import ExactScore
from ddpm.regimes.seeds import generator
from ddpm.schedules import NoiseSchedule


def exact_eps_fn(score: ExactScore) -> EpsFnT:
    """ε*(x, t) of the exact empirical score as a sampler ε function."""

    def eps(x: torch.Tensor, k: int, t: float) -> torch.Tensor:
        return score.eps(x, t)

    return eps


def track(
    eps_fn: EpsFnT, score: ExactScore, schedule: NoiseSchedule, samples: int, steps: int, seed: int, batch: int = 256
) -> dict[str, np.ndarray]:
    """Sample ``samples`` trajectories with ``eps_fn`` and record the nearest scaled training point.

    Returns per visited step ``t`` and ``k``, the nearest index ``nearest`` (S, samples), the final
    samples ``x0`` (samples, d), and per trajectory the time ``t_last_change`` (and step
    ``k_last_change``) from which on its nearest point no longer changed (the first visited step
    if it never changed).
    """
    seq = visited_steps(schedule, steps)
    ts = schedule.ou_times.tolist()
    nearest = np.zeros((len(seq), samples), dtype=np.int64)
    finals = []
    pos = {k: i for i, k in enumerate(seq)}
    for s in range(0, samples, batch):
        b = min(batch, samples - s)
        g = generator(seed, f"track-{s}")

        def record(k: int, t: float, x: torch.Tensor, s: int = s, b: int = b) -> None:
            nearest[pos[k], s : s + b] = score.stats(x, t, mean=False).argmax.cpu().numpy()

        x = torch.randn(b, score.d, generator=g, dtype=torch.float64)
        finals.append(backward(eps_fn, schedule, x, seq, g, callback=record))
    x0 = torch.cat(finals)
    # Row i is step seq[i] (increasing t); the last change is the smallest i whose nearest point
    # differs from the one below it, scanning from t = 0 upwards.
    changed = nearest[1:] != nearest[:-1]  # changed[i]: between seq[i] and seq[i+1]
    last = np.zeros(samples, dtype=np.int64)
    for j in range(samples):
        idx = np.nonzero(changed[:, j])[0]
        last[j] = seq[idx[0]] if idx.size else seq[-1]
    return {
        "t": np.array([ts[k] for k in seq]),
        "k": np.array(seq),
        "nearest": nearest,
        "x0": x0.numpy(),
        "k_last_change": last,
        "t_last_change": np.array([ts[k] for k in last]),
    }


def end_statistics(score: ExactScore, x0: torch.Tensor, ratio: float) -> dict[str, Any]:
    """Nearest / second-nearest training distances of final samples: memorised fraction and distances."""
    dist, idx = score.nearest(torch.as_tensor(x0), k=2)
    r = (dist[:, 0] / dist[:, 1].clamp_min(1e-300)).cpu().numpy()
    mem = r < ratio
    return {
        "memorised_fraction": float(mem.mean()),
        "memorised_se": float(mem.std(ddof=1) / math.sqrt(len(mem))) if len(mem) > 1 else 0.0,
        "nn_ratio_median": float(np.median(r)),
        "nn_distance_median": float(dist[:, 0].median()),
        "nn_index": idx[:, 0].cpu().numpy(),
    }


def summarise_tracking(tr: dict[str, np.ndarray], prefix: str) -> dict[str, Any]:
    """Median and quartiles of the last-change times, in t and k."""
    t = tr["t_last_change"]
    q = np.quantile(t, [0.25, 0.5, 0.75])
    return {
        f"{prefix}_t_last_change_median": float(q[1]),
        f"{prefix}_t_last_change_quartiles": [float(q[0]), float(q[2])],
        f"{prefix}_k_last_change_median": int(np.median(tr["k_last_change"])),
        f"{prefix}_samples": int(len(t)),
    }
