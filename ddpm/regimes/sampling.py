"""Backward (ancestral) sampling in OU time with any ε function, for cloning and tracking.

The chain is :class:`ddpm.samplers.DDPMSampler` (one reverse loop for every command) on explicit
visited steps k_0 = 0 < ... < k_{S-1} = T-1, in float64 on flattened states: each move
k_i -> k_{i-1} is the DDPM posterior step of the respaced chain
(:meth:`ddpm.diffusion.GaussianDiffusion.respaced_step`), and the move from k_0 = 0 lands on the
clean x̂_0 with no noise (ᾱ_{-1} = 1). Noise is added at every other step, including the one into
k = 0, drawn for the whole batch from one generator. With ``clip`` (image data, as ``ddpm-sample``'s
``sampler.clip_denoised``) x̂_0 is clamped to [-1, 1] and ε made consistent with it, as
:meth:`ddpm.samplers.base.Sampler.sample` does for every sampler, so a network's regimes
trajectories are the ones its samples follow.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers.base import BatchRandomGenerator, timestep_sequence
from ddpm.samplers.ddpm import DDPMSampler
from ddpm.schedules import NoiseSchedule

# eps_fn(x (B, d) float64, k: int, t: float) -> ε (B, d)
EpsFnT = Callable[[torch.Tensor, int, float], torch.Tensor]
# callback(k, t, x_k) before the move out of step k
StepCallback = Callable[[int, float, torch.Tensor], None]


def visited_steps(schedule: NoiseSchedule, steps: int) -> list[int]:
    """Increasing schedule steps from 0 to T-1 (``steps`` of them, evenly spaced)."""
    return timestep_sequence(schedule.T, min(int(steps), schedule.T), "linspace")


def chain(schedule: NoiseSchedule, seq: list[int], clip: bool = False) -> DDPMSampler:
    """The regimes' reverse chain: the ancestral DDPM sampler (small variance) on the visited steps
    ``seq``, in float64.

    Args:
        schedule: the discrete schedule.
        seq: increasing visited steps.
        clip: clamp x̂_0 to [-1, 1] and use the ε consistent with it.
    """
    return DDPMSampler(GaussianDiffusion(schedule), clip_denoised=clip, timesteps=seq, dtype=torch.float64)


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
    """Run the reverse chain (:func:`chain`) on ``x`` from visited index ``start`` (default the last) down.

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
    ts = schedule.ou_times.tolist()

    def eps(xk: torch.Tensor, kk: torch.Tensor) -> torch.Tensor:
        k = int(kk[0])  # one step for the whole batch
        return eps_fn(xk, k, ts[k])

    def seen(i: int, k: int, xk: torch.Tensor, x0: torch.Tensor) -> None:
        callback(k, ts[k], xk)

    rng = BatchRandomGenerator(generator, x.shape[0], torch.float64, x.device)
    out = chain(schedule, seq, clip).sample(eps, x, rng, seen if callback is not None else None, start=start, stop=stop)
    if callback is not None and stop > 0:  # the state the chain stops at is seen too
        callback(seq[stop], ts[seq[stop]], out)
    return out


def nearest_visited(seq: list[int], schedule: NoiseSchedule, times: np.ndarray) -> list[int]:
    """Index into ``seq`` of the visited step whose t is closest to each requested time."""
    ts = schedule.ou_times[seq].numpy()
    return [int(np.argmin(np.abs(ts - t))) for t in np.asarray(times)]
