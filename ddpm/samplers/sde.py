"""Samplers from the SDE view of diffusion, in Ornstein–Uhlenbeck time.

With t = -½ log ᾱ (``NoiseSchedule.ou_times``), the forward process dx = -½β x dτ + √β dW becomes
the OU process dx = -x dt + √2 dW, with x_t = e^{-t} x_0 + √Δ_t z and Δ_t = 1 - e^{-2t}. The
score is ∇log p_t(x) = -ε(x, t) / √Δ_t. Both samplers below step between the visited steps of
the schedule, h = t_i - t_{i-1} > 0, and end, like the others, on x̂_0 at the lowest visited step.

- Reverse SDE, Euler–Maruyama: dx = [x + 2 ∇log p_t(x)] dt + √2 dW̄ backwards in t, so
  x_{i-1} = x_i + h (x_i + 2 ∇log p) + √(2h) z.
- Probability-flow ODE: dx/dt = -x - ∇log p_t(x), integrated backwards in t by Euler (order 1)
  or by the two-step Adams–Bashforth rule on the uneven grid (order 2, one ε call per step:
  the previous step's slope is reused).
"""

from __future__ import annotations

import math

import torch

from ddpm.errors import ConfigError
from ddpm.samplers.base import Sampler, StackedRandomGenerator
from ddpm.schedules import score_from_eps


class _OUTimeSampler(Sampler):
    """Visited steps as OU times t_i = -½ log ᾱ_i and Δ_i = 1 - ᾱ_i (see :class:`Sampler` for the arguments)."""

    def __init__(self, diffusion, steps=None, spacing="linspace", clip_denoised=True, max_step=None, **grid) -> None:
        super().__init__(diffusion, steps, spacing, clip_denoised, max_step, **grid)
        self.t = diffusion.schedule.ou_times[self.timesteps].tolist()
        self.sqrt_delta = diffusion.sqrt_one_minus_abar[self.timesteps].tolist()

    def score(self, i: int, eps: torch.Tensor) -> torch.Tensor:
        """∇log p_t at visited step i from ε."""
        return score_from_eps(eps, self.sqrt_delta[i])


class EulerMaruyamaSampler(_OUTimeSampler):
    """Euler–Maruyama on the reverse-time SDE in OU time (stochastic, first order in h)."""

    stochastic = True

    def step(self, i: int, x: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor, rng: StackedRandomGenerator | None) -> torch.Tensor:
        if i == 0:  # the lowest visited step ends on the denoised x̂_0, as the other samplers do
            return x0
        h = self.t[i] - self.t[i - 1]
        return x + h * (x + 2.0 * self.score(i, eps)) + math.sqrt(2.0 * h) * rng.randn(x.shape[1:])


class ProbabilityFlowSampler(_OUTimeSampler):
    """The probability-flow ODE in OU time (deterministic).

    Args (besides :class:`Sampler`'s):
        order: 1 (Euler) or 2 (two-step Adams–Bashforth; the first step is Euler).
    """

    def __init__(self, diffusion, steps=None, spacing="linspace", clip_denoised=True, max_step=None, order: int = 2, **grid) -> None:
        super().__init__(diffusion, steps, spacing, clip_denoised, max_step, **grid)
        if order not in (1, 2):
            raise ConfigError(f"probability-flow ODE order must be 1 or 2, got {order}")
        self.order = order
        self._last_slope: torch.Tensor | None = None

    def reset(self) -> None:
        self._last_slope = None

    def step(self, i: int, x: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor, rng: StackedRandomGenerator | None) -> torch.Tensor:
        slope = -x - self.score(i, eps)  # dx/dt at t_i
        last, self._last_slope = self._last_slope, slope
        if i == 0:
            return x0
        h = self.t[i] - self.t[i - 1]  # we move to t - h
        if self.order == 2 and last is not None:
            h_last = self.t[i + 1] - self.t[i]
            # Adams–Bashforth 2 on an uneven grid: slopes at t_i and t_{i+1}, extrapolated over [t_i - h, t_i]
            return x - h * ((1 + h / (2 * h_last)) * slope - (h / (2 * h_last)) * last)
        return x - h * slope
