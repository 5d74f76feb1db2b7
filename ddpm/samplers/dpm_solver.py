"""DPM-Solver++ (Lu et al. 2022, arXiv 2211.01095): a multistep ODE solver in data-prediction form.

The probability-flow ODE is integrated in λ = log(√ᾱ / √(1-ᾱ)) (half the log SNR) on the
discrete schedule. With α = √ᾱ, σ = √(1-ᾱ) and h = λ_prev - λ > 0, one step is

    x_prev = (σ_prev / σ) x - α_prev (e^{-h} - 1) D,

where D = x̂_0 (first order, identical to DDIM with eta = 0) or, for the second-order multistep
"2M" variant, D = (1 + 1/(2r)) x̂_0 - 1/(2r) x̂_0^{last} with r = h_last / h, which reuses the
previous step's x̂_0 and so costs one network evaluation per step.

The first step has no history and is first order. So is the last solver step, into the lowest
visited step (``lower_order_final`` of the reference implementation): on the discrete schedule
that interval spans a much larger λ range than the one before it (with linspace spacing and 20
steps, h grows about fourfold into k = 0), and extrapolating x̂_0 over it overshoots. The
evaluation at the lowest visited step then gives x_0 = x̂_0 (σ = 0).

SDE-DPM-Solver++(2M) (the same paper, section 5; diffusers' ``algorithm_type="sde-dpmsolver++"``
with ``solver_type="midpoint"``) solves the reverse SDE instead of the ODE, with the same D:

    x_prev = (σ_prev / σ) e^{-h} x + α_prev (1 - e^{-2h}) D + σ_prev √(1 - e^{-2h}) z,   z ~ N(0, I).

Its first-order step (D = x̂_0) is the ancestral posterior step of the respaced chain: mean and
variance are those of q(x_prev | x, x̂_0), β̃' = σ_prev² (1 - e^{-2h}) (``sampler=ddpm``'s small variance).
"""

from __future__ import annotations

import math

import torch

from ddpm.errors import ConfigError
from ddpm.samplers.base import Sampler, StackedRandomGenerator


class DPMSolverSampler(Sampler):
    """Args (besides :class:`Sampler`'s):
    order: 1 (first order: DDIM, eta = 0) or 2 (DPM-Solver++ 2M).
    """

    def __init__(self, diffusion, steps=None, spacing="linspace", clip_denoised=True, max_step=None, order: int = 2, **grid) -> None:
        super().__init__(diffusion, steps, spacing, clip_denoised, max_step, **grid)
        if order not in (1, 2):
            raise ConfigError(f"DPM-Solver++ order must be 1 or 2, got {order}")
        self.order = order
        # λ at the visited steps, in float64 from the schedule's table.
        self.lam = diffusion.schedule.half_log_snr[self.timesteps].tolist()
        self._last_x0: torch.Tensor | None = None

    def reset(self) -> None:
        self._last_x0 = None

    def data_prediction(self, i: int, x0: torch.Tensor) -> torch.Tensor:
        """D of the move out of visited step i (i >= 1): x̂_0, or the 2M extrapolation
        (1 + 1/(2r)) x̂_0 - 1/(2r) x̂_0^{last}, r = h_last / h, when the previous step's x̂_0 is
        there and the move is not into the lowest visited step. Records x̂_0 for the next step."""
        last_x0, self._last_x0 = self._last_x0, x0
        if self.order == 2 and last_x0 is not None and i > 1:
            r = (self.lam[i] - self.lam[i + 1]) / (self.lam[i - 1] - self.lam[i])
            return (1 + 0.5 / r) * x0 - (0.5 / r) * last_x0
        return x0

    def step(self, i: int, x: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor, rng: StackedRandomGenerator | None) -> torch.Tensor:
        if i == 0:  # into σ = 0: the first-order update is x̂_0 itself
            return x0
        d = self.data_prediction(i, x0)
        abar, abar_prev = self.abar[i], self.abar[i - 1]
        h = self.lam[i - 1] - self.lam[i]
        ratio = ((1 - abar_prev) / (1 - abar)) ** 0.5
        return ratio * x - abar_prev**0.5 * math.expm1(-h) * d


class SDEDPMSolverSampler(DPMSolverSampler):
    """SDE-DPM-Solver++ (2M by default): the reverse SDE in λ, fresh noise on every step but the
    last (always stochastic). Args as :class:`DPMSolverSampler`'s; order 1 is the respaced
    ancestral chain with the posterior variance."""

    stochastic = True

    def step(self, i: int, x: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor, rng: StackedRandomGenerator | None) -> torch.Tensor:
        if i == 0:
            return x0
        d = self.data_prediction(i, x0)
        abar, abar_prev = self.abar[i], self.abar[i - 1]
        h = self.lam[i - 1] - self.lam[i]
        decay = -math.expm1(-2 * h)  # 1 - e^{-2h}
        ratio = ((1 - abar_prev) / (1 - abar)) ** 0.5 * math.exp(-h)
        return ratio * x + abar_prev**0.5 * decay * d + ((1 - abar_prev) * decay) ** 0.5 * rng.randn(x.shape[1:])
