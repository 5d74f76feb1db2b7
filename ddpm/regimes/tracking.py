"""Backward sampling that keeps each trajectory's states, and the collapse time of the ones that copy.

A trajectory that ends as a copy of training point μ* (:mod:`ddpm.memorisation`) is *committed* to
it at time t when the exact posterior weight w_μ*(x_t, t), evaluated along the trajectory's own
states, is at least ½. Two readings of it are reported, both on the copying trajectories only:

- per trajectory, the largest time at which w_μ* >= ½ (interpolated between the visited times):
  its median and quartiles. w_μ* fluctuates around ½ before it settles, so this last excursion
  lies a little above the collapse time (2–13% with the exact score, docs/regimes.md);
- the collapse time ``t_C``: the largest time at which at least half of the copying trajectories
  are committed (the ½-crossing of that fraction, interpolated). With the exact score it is the
  exact t_C (the ½-crossing of p_½ over forward-noised training points) within the resolution of
  the visited grid, so a network's value sits on the same scale.

A trajectory that ends as no copy has no collapse time, and a network that copies nothing has none
at all (null, not 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ddpm.memorisation import Memorisation, memorisation
from ddpm.regimes.collapse import last_crossing
from ddpm.regimes.sampling import EpsFnT, backward, visited_steps
from ddpm.regimes.seeds import generator
from ddpm.schedules import NoiseSchedule
from ddpm.score import ExactScore


def exact_eps_fn(score: ExactScore) -> EpsFnT:
    """ε*(x, t) of the exact empirical score as a sampler ε function."""

    def eps(x: torch.Tensor, k: int, t: float) -> torch.Tensor:
        return score.eps(x, t)

    return eps


def track(
    eps_fn: EpsFnT, schedule: NoiseSchedule, d: int, samples: int, steps: int, seed: int, clip: bool = False, batch: int = 256
) -> dict[str, np.ndarray]:
    """Sample ``samples`` trajectories with ``eps_fn``, keeping the state at every visited step.

    Args:
        eps_fn: the ε function (network or exact score) in the flattened space.
        schedule: the discrete schedule.
        d: dimension of the flattened state.
        samples: trajectories.
        steps: visited steps over the whole schedule (evenly spaced from 0 to T-1).
        seed: seed of the initial noise and the ancestral noise (one stream per batch).
        clip: clamp x̂_0 to [-1, 1] at every step (images; see :func:`ddpm.regimes.sampling.backward`).
        batch: trajectories per call.

    Returns:
        ``t`` and ``k`` of the visited steps (increasing), ``states`` (S, samples, d) float32 (the
        state at each visited step, before the move out of it) and the final samples ``x0``
        (samples, d) float64.
    """
    seq = visited_steps(schedule, steps)
    ts = schedule.ou_times.tolist()
    pos = {k: i for i, k in enumerate(seq)}
    states = torch.zeros(len(seq), samples, d, dtype=torch.float32)
    finals = []
    for s in range(0, samples, batch):
        b = min(batch, samples - s)
        g = generator(seed, f"track-{s}")

        def record(k: int, t: float, x: torch.Tensor, s: int = s, b: int = b) -> None:
            states[pos[k], s : s + b] = x.float().cpu()

        x = torch.randn(b, d, generator=g, dtype=torch.float64)
        finals.append(backward(eps_fn, schedule, x, seq, g, callback=record, clip=clip))
    return {"t": np.array([ts[k] for k in seq]), "k": np.array(seq), "states": states.numpy(), "x0": torch.cat(finals).cpu().numpy()}


def final_weights(score: ExactScore, tr: dict[str, np.ndarray], index: np.ndarray) -> np.ndarray:
    """w_{index[j]}(x_t, t) along trajectory j at every visited time: (S, samples) float64.

    Args:
        score: the exact score of the training (reference) points.
        tr: the :func:`track` record.
        index: the training point each trajectory is measured against (its nearest at the end).
    """
    idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
    out = np.zeros((len(tr["t"]), len(idx)))
    for i, t in enumerate(tr["t"]):
        out[i] = score.log_weight(torch.from_numpy(tr["states"][i]).double(), float(t), idx).exp().cpu().numpy()
    return out


def collapse_times(score: ExactScore, tr: dict[str, np.ndarray], copies: Memorisation) -> tuple[np.ndarray, np.ndarray]:
    """Per trajectory, the largest time at which the exact weight of its final training point is >= ½
    (interpolated between visited times; NaN for a trajectory that ends as no copy), and per visited
    time the fraction of the copying trajectories with that weight >= ½ (NaN without copies).

    Args:
        score: the exact score of the reference points (the indices of ``copies`` index into them).
        tr: the :func:`track` record.
        copies: the copy criterion applied to ``tr["x0"]`` against the same points.
    """
    times = np.full(len(copies.memorised), np.nan)
    which = np.nonzero(copies.memorised)[0]
    if which.size == 0:
        return times, np.full(len(tr["t"]), np.nan)
    w = final_weights(score, {**tr, "states": tr["states"][:, which]}, copies.nearest[which])
    for col, j in enumerate(which):
        t_c, _ = last_crossing(tr["t"], w[:, col])
        # still >= ½ at the top of the grid: committed from the start
        times[j] = float(tr["t"][-1]) if t_c is None and w[-1, col] >= 0.5 else (np.nan if t_c is None else t_c)
    return times, (w >= 0.5).mean(1)


def summarise_collapse(t: np.ndarray, times: np.ndarray, committed: np.ndarray, copies: Memorisation, prefix: str) -> dict[str, Any]:
    """f_mem (± bootstrap s.e.), the collapse time t_C and the per-trajectory times (median, quartiles) of the copies.

    Args:
        t: the visited times (increasing).
        times: per-trajectory collapse times (NaN for non-copies).
        committed: per visited time, the committed fraction of the copies.
        copies: the copy criterion's result.
        prefix: key prefix (``exact`` or ``network``).
    """
    valid = times[np.isfinite(times)]
    q = np.quantile(valid, [0.25, 0.5, 0.75]).tolist() if valid.size else [None, None, None]
    t_c = None
    if valid.size:
        t_c, _ = last_crossing(t, committed)
        if t_c is None and committed[-1] >= 0.5:
            t_c = float(t[-1])
    return {
        f"{prefix}_memorised_fraction": copies.fraction,
        f"{prefix}_memorised_se": copies.fraction_se,
        f"{prefix}_copies": int(copies.memorised.sum()),
        f"{prefix}_samples": int(len(times)),
        f"{prefix}_t_C": t_c,
        f"{prefix}_t_C_trajectory_median": q[1],
        f"{prefix}_t_C_trajectory_quartiles": [q[0], q[2]],
        f"{prefix}_nn_ratio_median": float(np.median(copies.ratio)),
        f"{prefix}_nn_distance_median": float(np.median(copies.d1)),
    }


def measure_trajectories(
    eps_fn: EpsFnT,
    score: ExactScore,
    reference: torch.Tensor,
    schedule: NoiseSchedule,
    samples: int,
    steps: int,
    seed: int,
    threshold: float,
    prefix: str,
    clip: bool = False,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Track, apply the copy criterion against ``reference`` and time the collapse of the copies.

    Args:
        eps_fn: the ε function to sample with.
        score: the exact score of ``reference``.
        reference: the reference points (n, d), as the network saw them (with mirrors if it trained with flips).
        schedule: the discrete schedule.
        samples: trajectories.
        steps: visited steps.
        seed: sampling seed.
        threshold: k of the copy criterion.
        prefix: key prefix of the summary (``exact`` or ``network``).
        clip: clamp x̂_0 to [-1, 1] (images).

    Returns:
        the summary and the curves: ``t``, per trajectory ``collapse_t`` (NaN for non-copies) and
        ``ratio``, per time ``committed``, and the final samples ``x0``.
    """
    tr = track(eps_fn, schedule, score.d, samples, steps, seed, clip)
    copies = memorisation(torch.from_numpy(tr["x0"]), reference, threshold)
    times, committed = collapse_times(score, tr, copies)
    curves = {"t": tr["t"], "collapse_t": times, "committed": committed, "ratio": copies.ratio, "x0": tr["x0"]}
    return summarise_collapse(tr["t"], times, committed, copies, prefix), curves
