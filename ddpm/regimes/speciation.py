"""Speciation: the probability φ(t) that two clones of a trajectory split at t end in the same class.

Two measurements: the cloning experiment (run a backward trajectory to t, copy it, finish both
copies with independent noise, compare their classes) and, for an exact score, the identity
φ(t) = E[Σ_c π_c(x_t)²] with the class posterior weights π_c, evaluated on forward-noised
points. φ̃ = (φ - Σ_c p_c²) / (1 - Σ_c p_c²) normalises away the chance agreement; its ½-crossing
is the measured speciation time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ddpm.regimes.collapse import draw_queries, last_crossing, log_grid
from ddpm.regimes.sampling import EpsFnT, backward, nearest_visited, visited_steps
from ddpm.regimes.seeds import generator
from ddpm.regimes.theory import normalised_clone_probability
from ddpm.schedules import NoiseSchedule, eps_from_score
from ddpm.score import ExactScore, delta


def mixture_posterior(means: torch.Tensor, sigma: float) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Exact class posterior and ε of an equal-weight mixture of N(m_c, σ² I), as functions of (x, t).

    At time t the classes are N(e^{-t} m_c, Γ_t I) with Γ_t = σ² e^{-2t} + Δ_t.
    """
    means = means.to(torch.float64)

    def post(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        et = torch.exp(-t)[:, None]
        gam = sigma**2 * et * et + delta(t)[:, None]
        centres = et[:, :, None] * means.T[None]  # (B, d, C)
        logits = -((x[:, :, None] - centres) ** 2).sum(1) / (2 * gam)
        pi = torch.softmax(logits, 1)
        # Per class: E[x_0 | x_t, c] = m_c + σ² e^{-t} (x - e^{-t} m_c) / Γ; score = -(x - e^{-t} m_c) / Γ.
        score = -(pi[:, None, :] * (x[:, :, None] - centres)).sum(2) / gam
        eps = eps_from_score(score, delta(t).sqrt()[:, None])
        return pi, eps

    return post


def posterior_clone_curve(score: ExactScore, times: np.ndarray, queries: int, batch: int, seed: int) -> dict[str, np.ndarray]:
    """φ(t) = E[Σ_c π_c²] at forward-noised training points, with its standard error, and φ̃."""
    index, z = draw_queries(score.n, score.d, queries, seed)
    tt = torch.as_tensor(np.asarray(times), dtype=torch.float64)
    vals = []
    for s in range(0, queries, batch):
        cw = score.forward_stats(index[s : s + batch], z[s : s + batch], tt, classes=True)["class_w"]
        vals.append((cw * cw).sum(-1).cpu().numpy())
    v = np.concatenate(vals, 1)
    p = np.bincount(score.labels.cpu().numpy(), minlength=score.num_classes) / score.n
    phi, se = v.mean(1), v.std(1, ddof=1) / math.sqrt(v.shape[1])
    base = float((p * p).sum())
    return {
        "t": np.asarray(times, dtype=np.float64),
        "phi": phi,
        "phi_se": se,
        "phi_tilde": normalised_clone_probability(phi, p),
        "phi_tilde_se": se / (1 - base),
    }


def clone_pairs(
    eps_fn: EpsFnT,
    classify: Callable[[torch.Tensor], torch.Tensor],
    schedule: NoiseSchedule,
    d: int,
    branch_times: np.ndarray,
    trajectories: int,
    steps: int,
    seed: int,
    purpose: str = "clone",
    batch: int = 256,
) -> tuple[list[int], np.ndarray, torch.Tensor, torch.Tensor]:
    """The cloning experiment's raw outcome: at each branch time t, the state x_t of a backward
    trajectory is copied and both copies are finished with independent noise.

    Args:
        eps_fn: noise prediction ε(x, k, t) in the flattened space.
        classify: class (or leaf) of each final sample (B, d) -> (B,).
        schedule: the discrete schedule.
        d: dimension.
        branch_times: requested branch times (the nearest visited steps are used).
        trajectories: trajectories per branch time.
        steps: sampler steps over the whole schedule.
        seed: seed of all noise.
        purpose: names the noise streams (one per batch: ``<purpose>-<first trajectory>``).
        batch: trajectories per backward pass.

    Returns:
        the branch steps ``k`` (decreasing), their times ``t``, and the classes of the first and of
        the second copies' ends, each (branch times, trajectories).
    """
    seq = visited_steps(schedule, steps)
    idx = sorted(set(nearest_visited(seq, schedule, branch_times)), reverse=True)
    first = torch.zeros(len(idx), trajectories, dtype=torch.long)
    second = torch.zeros_like(first)
    for s in range(0, trajectories, batch):
        b = min(batch, trajectories - s)
        g = generator(seed, f"{purpose}-{s}")
        x = torch.randn(b, d, generator=g, dtype=torch.float64)
        top = len(seq) - 1
        for j, i in enumerate(idx):
            x = backward(eps_fn, schedule, x, seq, g, start=top, stop=i) if i < top else x
            top = i
            ends = backward(eps_fn, schedule, torch.cat([x, x]), seq, g, start=i, stop=0)  # the two copies
            c = classify(ends).cpu()
            first[j, s : s + b], second[j, s : s + b] = c[:b], c[b:]
    ks = [seq[i] for i in idx]
    return ks, schedule.ou_times[ks].numpy(), first, second


def clone_experiment(
    eps_fn: EpsFnT,
    classify: Callable[[torch.Tensor], torch.Tensor],
    schedule: NoiseSchedule,
    d: int,
    branch_times: np.ndarray,
    trajectories: int,
    steps: int,
    seed: int,
    batch: int = 256,
) -> dict[str, np.ndarray]:
    """The cloning experiment: P(two clones split at t end in the same class) at each branch time
    (the arguments of :func:`clone_pairs`)."""
    ks, ts, first, second = clone_pairs(eps_fn, classify, schedule, d, branch_times, trajectories, steps, seed, "clone", batch)
    same = (first == second).double().numpy()
    return {"t": ts, "k": np.array(ks), "phi": same.mean(1), "phi_se": same.std(1, ddof=1) / math.sqrt(trajectories)}


def measure_speciation(
    score: ExactScore | None,
    schedule: NoiseSchedule,
    cfg: Any,
    seed: int,
    clone_eps: EpsFnT | None = None,
    classify: Callable[[torch.Tensor], torch.Tensor] | None = None,
    class_probs: np.ndarray | None = None,
    d: int | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """φ̃ from the posterior identity (needs a labelled exact score) and from cloning (needs ``clone_eps``).

    Returns the summary (``t_S_clone``: the ½-crossing of φ̃) and the curves.
    """
    t_max = float(cfg.t_max) if cfg.t_max is not None else float(schedule.ou_times[-1])
    summary: dict[str, Any] = {}
    curves: dict[str, np.ndarray] = {}
    if score is not None and score.labels is not None:
        post = posterior_clone_curve(score, log_grid(cfg.t_min, t_max, cfg.points), cfg.queries, cfg.batch, seed)
        curves.update({f"posterior_{k}": v for k, v in post.items()})
        summary["t_S_clone"], _ = last_crossing(post["t"], post["phi_tilde"])
        summary["class_probs"] = (np.bincount(score.labels.numpy(), minlength=score.num_classes) / score.n).tolist()
    if clone_eps is not None and classify is not None and cfg.clone_traj > 0:
        clone = clone_experiment(
            clone_eps, classify, schedule, int(d), log_grid(cfg.t_min, t_max, cfg.clone_points), cfg.clone_traj, cfg.clone_steps, seed + 1
        )
        curves.update({f"clone_{k}": v for k, v in clone.items()})
        if class_probs is not None:
            base = float(np.square(class_probs).sum())
            curves["clone_phi_tilde"] = normalised_clone_probability(clone["phi"], class_probs)
            curves["clone_phi_tilde_se"] = clone["phi_se"] / (1 - base)
            order = np.argsort(clone["t"])
            summary["t_S_clone_simulated"], _ = last_crossing(clone["t"][order], curves["clone_phi_tilde"][order])
    return summary, curves
