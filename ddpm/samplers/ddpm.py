"""Ancestral DDPM sampling (Ho et al. 2020), on all T steps or a respaced subset.

On a subset τ of the steps the chain uses the respaced schedule ᾱ'_i = ᾱ_{τ_i} (Nichol &
Dhariwal 2021). Noise is added on every step but the last: the step into x_0 is the posterior
mean (its variance β̃_0 is 0).

The variance of a step from kept step k down to s < k is either the posterior's, "small"
β̃' = β' (1 - ᾱ_s) / (1 - ᾱ_k), or "large" β' = 1 - ᾱ_k / ᾱ_s (Ho et al. show both bound the
true reverse variance; improved-diffusion samples with the large one). With few steps the small
one under-disperses: each step's noise is too weak for the large jump it makes.
"""

from __future__ import annotations

import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import ConfigError
from ddpm.samplers.base import Sampler, StackedRandomGenerator

VARIANCES = ("small", "large")


class DDPMSampler(Sampler):
    """Args (besides :class:`Sampler`'s):
    variance: ``small`` (posterior β̃') or ``large`` (β') for each respaced step.
    """

    stochastic = True

    def __init__(
        self, diffusion, steps=None, spacing="leading", clip_denoised=True, max_step=None, variance: str = "small", **grid
    ) -> None:
        super().__init__(diffusion, steps, spacing, clip_denoised, max_step, **grid)
        if variance not in VARIANCES:
            raise ConfigError(f"unknown sampler.variance {variance!r}; choose one of {', '.join(VARIANCES)}")
        self.variance = variance

    def step(self, i: int, x: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor, rng: StackedRandomGenerator | None) -> torch.Tensor:
        abar, abar_prev = self.abar[i], (self.abar[i - 1] if i > 0 else 1.0)
        # The posterior q(x_prev | x, x̂_0) of the (respaced) chain; ε is consistent with x̂_0 (see Sampler.sample).
        mean, var = GaussianDiffusion.respaced_step(x0, eps, abar, abar_prev, eta=1.0)
        if i == 0:
            return mean
        if self.variance == "large":
            var = GaussianDiffusion.large_variance(abar, abar_prev)
        return mean + var**0.5 * rng.randn(x.shape[1:])
