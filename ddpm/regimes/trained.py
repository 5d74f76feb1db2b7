"""A trained network against the exact empirical score of its training set.

- sampling with ε_θ while tracking the nearest scaled training point (see :mod:`tracking`);
- the memorised fraction of its samples (nearest / second-nearest training distance < 1/3);
- the relative gap E|ε_θ - ε*|² / E|ε*|² against t on noised training and held-out points.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ddpm.pretrained import Pretrained
from ddpm.regimes.collapse import log_grid
from ddpm.regimes.sampling import EpsFnT
from ddpm.regimes.seeds import generator
from ddpm.samplers import make_eps_fn
from ddpm.score import ExactScore


def network_eps_fn(pre: Pretrained, device: torch.device | str = "cpu", model: torch.nn.Module | None = None) -> EpsFnT:
    """ε_θ(x, k) on flattened float64 states (reshaped to the network's image shape).

    Args:
        pre: the loaded checkpoint.
        device: where the network runs.
        model: the network to call (e.g. compiled); default ``pre.model``.
    """
    net = make_eps_fn(pre.model if model is None else model, pre.diffusion)
    shape = pre.shape

    @torch.no_grad()
    def eps(x: torch.Tensor, k: int, t: float) -> torch.Tensor:
        img = x.to(device, torch.float32).view(x.shape[0], *shape)
        kk = torch.full((x.shape[0],), int(k), dtype=torch.long, device=device)
        return net(img, kk).flatten(1).to(x.device, torch.float64)

    return eps


def gap_steps(pre: Pretrained, points: int) -> list[int]:
    """Distinct schedule steps nearest to ``points`` log-spaced times over the schedule."""
    ts = pre.diffusion.schedule.ou_times.numpy()
    grid = log_grid(float(ts[0]), float(ts[-1]), points)
    return sorted({int(np.argmin(np.abs(ts - t))) for t in grid})


def eps_gap(
    eps_net: EpsFnT, score: ExactScore, pre: Pretrained, data: torch.Tensor, steps: list[int], queries: int, seed: int, batch: int = 64
) -> dict[str, np.ndarray]:
    """E|ε_θ - ε*|² / E|ε*|² at each step for points of ``data`` noised to that step.

    Args:
        eps_net: the network's ε function.
        score: the exact score of the training set.
        pre: the checkpoint (schedule).
        data: points to noise (training or held-out), flattened (N, d).
        steps: schedule steps to evaluate.
        queries: points per step (the same points and noise at every step).
        seed: seed of the choice of points and noise.
        batch: queries per network call.
    """
    g = generator(seed, "gap")
    idx = torch.randperm(len(data), generator=g)[:queries]
    z = torch.randn(len(idx), data.shape[1], generator=g, dtype=torch.float64)
    a0 = data[idx].to(torch.float64)
    abar = pre.diffusion.schedule.alphas_cumprod
    ts = pre.diffusion.schedule.ou_times
    gap, gap_se = [], []
    for k in steps:
        x = abar[k].sqrt() * a0 + (1 - abar[k]).sqrt() * z
        num, den = [], []
        for s in range(0, len(x), batch):
            e_net = eps_net(x[s : s + batch], k, float(ts[k]))
            e_star = score.eps(x[s : s + batch], float(ts[k])).cpu()
            num.append(((e_net - e_star) ** 2).sum(1))
            den.append((e_star**2).sum(1))
        num, den = torch.cat(num).numpy(), torch.cat(den).numpy()
        gap.append(num.mean() / den.mean())
        # Delta-method standard error of a ratio of means.
        r = gap[-1]
        gap_se.append(float(np.std(num - r * den, ddof=1) / (math.sqrt(len(num)) * den.mean())) if len(num) > 1 else 0.0)
    return {"k": np.array(steps), "t": ts[steps].numpy(), "gap": np.array(gap), "gap_se": np.array(gap_se)}


def summarise_gap(train: dict[str, np.ndarray], held: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """The gap at the smallest and largest evaluated time, for the records."""
    out: dict[str, Any] = {
        "gap_train_small_t": float(train["gap"][0]),
        "gap_train_large_t": float(train["gap"][-1]),
        "gap_t_range": [float(train["t"][0]), float(train["t"][-1])],
    }
    if held is not None:
        out.update({"gap_heldout_small_t": float(held["gap"][0]), "gap_heldout_large_t": float(held["gap"][-1])})
    return out
