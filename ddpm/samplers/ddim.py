"""DDIM (Song et al. 2021): deterministic for eta = 0, ancestral-like for eta = 1."""

from __future__ import annotations

import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers.base import Sampler, StackedRandomGenerator


class DDIMSampler(Sampler):
    """Args (besides :class:`Sampler`'s):
    eta: scale of the fresh noise; σ_i = eta · √((1-ᾱ_prev)/(1-ᾱ) · (1-ᾱ/ᾱ_prev)).
    """

    def __init__(self, diffusion, steps=None, spacing="leading", clip_denoised=True, max_step=None, eta: float = 0.0, **grid) -> None:
        super().__init__(diffusion, steps, spacing, clip_denoised, max_step, **grid)
        if eta < 0:
            from ddpm.errors import ConfigError

            raise ConfigError(f"sampler.eta must be >= 0, got {eta}")
        self.eta = float(eta)
        self.stochastic = self.eta > 0

    def step(self, i: int, x: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor, rng: StackedRandomGenerator | None) -> torch.Tensor:
        abar_prev = self.abar[i - 1] if i > 0 else 1.0
        out, var = GaussianDiffusion.respaced_step(x0, eps, self.abar[i], abar_prev, self.eta)
        if var > 0:
            out = out + var**0.5 * rng.randn(x.shape[1:])
        return out
