"""Gaussian diffusion: the forward process q(x_k | x_0), its posterior and the training loss.

All noising arithmetic runs in float32, also under autocast: only the network call is
allowed to run in reduced precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ddpm.errors import ConfigError
from ddpm.schedules import NoiseSchedule

OBJECTIVES = ("eps", "x0", "v")


def _gather(table: torch.Tensor, k: torch.Tensor, ndim: int) -> torch.Tensor:
    """table[k] as float32 on k's device, shaped (B, 1, 1, ...) to broadcast over an image batch."""
    out = table.to(device=k.device, dtype=torch.float32)[k]
    return out.reshape(-1, *([1] * (ndim - 1)))


class GaussianDiffusion:
    """Forward process, posterior and loss for a :class:`NoiseSchedule`.

    Args:
        schedule: the discrete noise schedule.
        objective: what the network predicts: ``eps`` (noise), ``x0`` (clean image) or ``v``
            (v = √ᾱ ε - √(1-ᾱ) x_0, Salimans & Ho 2022). Samplers always see ε (see :meth:`eps_from_output`).
    """

    def __init__(self, schedule: NoiseSchedule, objective: str = "eps") -> None:
        if objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
        self.schedule = schedule
        self.objective = objective
        abar = schedule.alphas_cumprod
        self.sqrt_abar = abar.sqrt()
        self.sqrt_one_minus_abar = (1 - abar).sqrt()
        c0, ck = schedule.posterior_mean_coef
        self.post_c0, self.post_ck = c0, ck
        self.post_var = schedule.posterior_variance

    @property
    def T(self) -> int:
        return self.schedule.T

    def q_sample(self, x0: torch.Tensor, k: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_k = √ᾱ_k x_0 + √(1-ᾱ_k) ε."""
        x0, noise = x0.float(), noise.float()
        return _gather(self.sqrt_abar, k, x0.ndim) * x0 + _gather(self.sqrt_one_minus_abar, k, x0.ndim) * noise

    def q_posterior(self, x0: torch.Tensor, xk: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{k-1} | x_k, x_0)."""
        mean = _gather(self.post_c0, k, xk.ndim) * x0 + _gather(self.post_ck, k, xk.ndim) * xk
        return mean, _gather(self.post_var, k, xk.ndim)

    def predict_x0(self, xk: torch.Tensor, k: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x̂_0 = (x_k - √(1-ᾱ_k) ε) / √ᾱ_k."""
        return (xk - _gather(self.sqrt_one_minus_abar, k, xk.ndim) * eps) / _gather(self.sqrt_abar, k, xk.ndim)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The regression target of the chosen objective."""
        if self.objective == "eps":
            return noise
        if self.objective == "x0":
            return x0
        return _gather(self.sqrt_abar, k, x0.ndim) * noise - _gather(self.sqrt_one_minus_abar, k, x0.ndim) * x0

    def eps_from_output(self, xk: torch.Tensor, k: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Convert the network output of any objective into an ε-prediction."""
        out = out.float()
        if self.objective == "eps":
            return out
        a, s = _gather(self.sqrt_abar, k, xk.ndim), _gather(self.sqrt_one_minus_abar, k, xk.ndim)
        if self.objective == "x0":
            return (xk - a * out) / s
        return s * xk + a * out  # v-objective: ε = √(1-ᾱ) x_k + √ᾱ v

    def loss(self, model, x0: torch.Tensor, k: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Mean squared error of the network output against the objective's target (float32)."""
        xk = self.q_sample(x0, k, noise)
        out = model(xk, k)
        return F.mse_loss(out.float(), self.target(x0.float(), noise.float(), k))

    def sample_timesteps(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """n steps drawn uniformly from all of 0..T-1 (step 0 included)."""
        return torch.randint(0, self.T, (n,), generator=generator, device=device)
