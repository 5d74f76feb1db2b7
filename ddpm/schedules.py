"""Noise schedules: β_k for k = 0..T-1 and everything derived from them.

Conventions (see docs/regimes.md): step k = 0 is the first noising step, ᾱ_k = Π_{i<=k} (1-β_i),
and step k corresponds to the Ornstein–Uhlenbeck time t_k = -½ log ᾱ_k. All tables are
computed in float64 and handed out as float32 tensors on demand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ddpm.errors import ConfigError

SCHEDULES = ("linear", "cosine", "quadratic")
# Beyond this offset the cosine schedule no longer changes (ᾱ_k -> (1 - (k+1)/T)², β_0 -> 2/T) and
# rounding takes over: at 1e12 the β_k are no longer increasing, from 1e15 on they are all 0.
MAX_COSINE_S = 1000.0


def make_betas(
    name: str,
    T: int,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    cosine_s: float = 0.008,
    max_beta: float = 0.999,
) -> torch.Tensor:
    """Return the float64 β_k, k = 0..T-1.

    Args:
        name: ``linear``, ``cosine`` (Nichol & Dhariwal 2021) or ``quadratic`` (linspace of √β, squared).
        T: number of diffusion steps (> 0).
        beta_start: β_0 for linear / quadratic.
        beta_end: β_{T-1} for linear / quadratic.
        cosine_s: offset s of the cosine schedule.
        max_beta: clip of the cosine schedule's β (avoids a singular last step).
    """
    if not isinstance(T, int) or T <= 0:
        raise ConfigError(f"schedule.T must be a positive integer, got {T!r}")
    if not 0.0 < cosine_s <= MAX_COSINE_S:  # every schedule node carries it: a typo is refused whatever the name
        raise ConfigError(f"schedule.cosine_s must lie in (0, {MAX_COSINE_S:g}], got {cosine_s}")
    if name in ("linear", "quadratic"):
        if not (0.0 < beta_start < 1.0 and 0.0 < beta_end < 1.0):
            raise ConfigError(f"schedule betas must lie in (0, 1), got beta_start={beta_start}, beta_end={beta_end}")
        if beta_end < beta_start:
            raise ConfigError(f"schedule.beta_end ({beta_end}) must be >= beta_start ({beta_start})")
    if name == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if name == "quadratic":
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    if name == "cosine":
        if not 0.0 < max_beta < 1.0:
            raise ConfigError(f"schedule.max_beta must lie in (0, 1), got {max_beta}")

        def f(u: float) -> float:
            return math.cos((u + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2

        betas = [min(1 - f((k + 1) / T) / f(k / T), max_beta) for k in range(T)]
        return torch.tensor(betas, dtype=torch.float64)
    raise ConfigError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


def log_snr(abar: torch.Tensor) -> torch.Tensor:
    """log SNR = log(ᾱ / (1 - ᾱ)) of a float64 ᾱ table (or of some of its entries)."""
    return torch.log(abar) - torch.log1p(-abar)


def half_log_snr(abar: torch.Tensor) -> torch.Tensor:
    """λ = ½ log(ᾱ / (1 - ᾱ)), DPM-Solver's λ; ln σ = -λ with σ = √((1-ᾱ)/ᾱ)."""
    return 0.5 * log_snr(abar)


def ou_time(abar: torch.Tensor) -> torch.Tensor:
    """Ornstein–Uhlenbeck time t = -½ log ᾱ."""
    return -0.5 * torch.log(abar)


def score_from_eps(eps: torch.Tensor, sqrt_delta: float | torch.Tensor) -> torch.Tensor:
    """∇log p = -ε / √Δ, with Δ = 1 - ᾱ = 1 - e^{-2t} the variance of the noise at that level."""
    return -eps / sqrt_delta


def eps_from_score(score: torch.Tensor, sqrt_delta: float | torch.Tensor) -> torch.Tensor:
    """ε = -√Δ ∇log p, the inverse of :func:`score_from_eps`."""
    return -score * sqrt_delta


@dataclass(frozen=True)
class NoiseSchedule:
    """Precomputed float64 tables of a discrete DDPM schedule (index k = 0..T-1)."""

    betas: torch.Tensor

    @classmethod
    def from_config(cls, cfg) -> NoiseSchedule:
        """Build from a ``schedule`` config node (name, T, beta_start, beta_end, ...)."""
        return cls(
            make_betas(
                cfg.name,
                int(cfg.T),
                float(cfg.beta_start),
                float(cfg.beta_end),
                float(cfg.get("cosine_s", 0.008)),
                float(cfg.get("max_beta", 0.999)),
            )
        )

    @property
    def T(self) -> int:
        return self.betas.numel()

    @property
    def alphas(self) -> torch.Tensor:
        return 1.0 - self.betas

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_k = Π_{i<=k} (1 - β_i)."""
        return torch.cumprod(self.alphas, 0)

    @property
    def alphas_cumprod_prev(self) -> torch.Tensor:
        """ᾱ_{k-1}, with ᾱ_{-1} = 1."""
        return torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])

    @property
    def posterior_variance(self) -> torch.Tensor:
        """β̃_k = β_k (1 - ᾱ_{k-1}) / (1 - ᾱ_k): variance of q(x_{k-1} | x_k, x_0); 0 at k = 0."""
        return self.betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)

    @property
    def posterior_mean_coef(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(c0, ck) with E[x_{k-1} | x_k, x_0] = c0 x_0 + ck x_k."""
        abar, abar_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        c0 = self.betas * abar_prev.sqrt() / (1 - abar)
        ck = (1 - abar_prev) * self.alphas.sqrt() / (1 - abar)
        return c0, ck

    @property
    def log_snr(self) -> torch.Tensor:
        """log(ᾱ_k / (1 - ᾱ_k)) of each step."""
        return log_snr(self.alphas_cumprod)

    @property
    def half_log_snr(self) -> torch.Tensor:
        """λ_k = ½ log(ᾱ_k / (1 - ᾱ_k)) of each step, decreasing in k (ln σ_k = -λ_k)."""
        return half_log_snr(self.alphas_cumprod)

    @property
    def ou_times(self) -> torch.Tensor:
        """Ornstein–Uhlenbeck time of each step, t_k = -½ log ᾱ_k."""
        return ou_time(self.alphas_cumprod)

    def step_to_time(self, k: int | torch.Tensor) -> torch.Tensor:
        """t_k = -½ log ᾱ_k for step index (or indices) k."""
        return self.ou_times[torch.as_tensor(k, dtype=torch.long)]

    def time_to_step(self, t: float | torch.Tensor) -> torch.Tensor:
        """k(t) = first k with ᾱ_k <= e^{-2t} (clamped to T-1 beyond the schedule's end)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        # ou_times is increasing, so "first k with t_k >= t" is a sorted search.
        k = torch.searchsorted(self.ou_times, t - 1e-12, right=False)
        return k.clamp(max=self.T - 1)
