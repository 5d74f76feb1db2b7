"""Backward (ancestral) sampling in OU time with any ε function, for cloning and tracking.

The visited steps are a subsequence k_0 = 0 < ... < k_{S-1} = T-1 of the schedule; each move
k_i -> k_{i-1} is the DDPM posterior step of the respaced chain (DDIM with η = 1, from
:meth:`ddpm.diffusion.GaussianDiffusion.respaced_step`), and the move
from k_0 = 0 lands on the clean x̂_0 with no noise (ᾱ_{-1} = 1). Noise is added at every other
step, including the one into k = 0. With ``clip`` (image data, as ``ddpm-sample``'s
``sampler.clip_denoised``) x̂_0 is clamped to [-1, 1] and ε made consistent with it, exactly as
:meth:`ddpm.samplers.base.Sampler.sample` does, so a network's regimes trajectories are the ones
its samples follow.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers.base import timestep_sequence
from ddpm.schedules import NoiseSchedule

# eps_fn(x (B, d) float64, k: int, t: float) -> ε (B, d)
EpsFnT = Callable[[torch.Tensor, int, float], torch.Tensor]
# callback(k, t, x_k) before the move out of step k
StepCallback = Callable[[int, float, torch.Tensor], None]


def visited_steps(schedule: NoiseSchedule, steps: int) -> list[int]:
    """Increasing schedule steps from 0 to T-1 (``steps`` of them, evenly spaced)."""
    return timestep_sequence(schedule.T, min(int(steps), schedule.T), "linspace")


def backward(
    eps_fn: EpsFnT,
    schedule: NoiseSchedule,
    x: torch.Tensor,
    seq: list[int],
    generator: torch.Generator,
    start: int | None = None,
    stop: int = 0,
    callback: StepCallback | None = None,
    clip: bool = False,
) -> torch.Tensor:
    """Run the reverse chain on ``x`` from visited index ``start`` (default the last) down.

    Args:
        eps_fn: noise prediction in the flattened space.
        schedule: the discrete schedule (ᾱ and t of every step).
        x: the state at step ``seq[start]`` (B, d), float64.
        seq: increasing visited steps.
        generator: source of the ancestral noise.
        start: index into ``seq`` of the state's step.
        stop: index into ``seq`` to stop at (0 runs all the way to the clean x_0; i > 0 returns
            the state at step ``seq[i]``).
        callback: called with (k, t_k, x_k) at each visited step before moving on.
        clip: clamp x̂_0 to [-1, 1] (images in model range) and use the ε consistent with it.
    """
    abar = schedule.alphas_cumprod.tolist()
    ts = schedule.ou_times.tolist()
    i = len(seq) - 1 if start is None else int(start)
    x = x.to(torch.float64)
    while i >= stop:
        k = seq[i]
        if callback is not None:
            callback(k, ts[k], x)
        if i == stop and stop > 0:
            break
        a = abar[k]
        a_prev = abar[seq[i - 1]] if i > 0 else 1.0
        eps = eps_fn(x, k, ts[k]).to(torch.float64)
        x0 = GaussianDiffusion.x0_at(x, eps, a)
        if clip:
            x0 = x0.clamp(-1, 1)
            eps = (x - a**0.5 * x0) / (1 - a) ** 0.5
        x, var = GaussianDiffusion.respaced_step(x0, eps, a, a_prev)
        if var > 0:
            x = x + var**0.5 * torch.randn(x.shape, generator=generator, dtype=torch.float64, device=x.device)
        i -= 1
    return x


def nearest_visited(seq: list[int], schedule: NoiseSchedule, times: np.ndarray) -> list[int]:
    """Index into ``seq`` of the visited step whose t is closest to each requested time."""
    ts = schedule.ou_times[seq].numpy()
    return [int(np.argmin(np.abs(ts - t))) for t in np.asarray(times)]
