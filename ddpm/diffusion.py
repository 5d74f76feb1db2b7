"""Gaussian diffusion: the forward process q(x_k | x_0), its posterior and the training loss.

All noising arithmetic runs in float32, also under autocast: only the network call is
allowed to run in reduced precision.
"""

from __future__ import annotations

import math

import torch

from ddpm.errors import ConfigError
from ddpm.schedules import NoiseSchedule

OBJECTIVES = ("eps", "x0", "v")
# Loss weightings, as a weight on the x̂_0 error (see GaussianDiffusion.loss_weight).
WEIGHTINGS = ("none", "min_snr", "edm")
TIMESTEP_SAMPLINGS = ("uniform", "lognormal")
EDM_SIGMA_DATA = 0.5  # standard deviation of data in [-1, 1] assumed by EDM's weighting


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
        weighting: loss weighting over noise levels: ``none``, ``min_snr`` or ``edm``.
        min_snr_gamma: γ of the min-SNR weighting.
        timestep_sampling: training steps drawn ``uniform`` or ``lognormal`` in σ.
        p_mean: mean of ln σ for log-normal step sampling.
        p_std: standard deviation of ln σ for log-normal step sampling.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        objective: str = "eps",
        weighting: str = "none",
        min_snr_gamma: float = 5.0,
        timestep_sampling: str = "uniform",
        p_mean: float = -1.2,
        p_std: float = 1.2,
    ) -> None:
        if objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if weighting not in WEIGHTINGS:
            raise ConfigError(f"unknown loss weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
        if timestep_sampling not in TIMESTEP_SAMPLINGS:
            raise ConfigError(f"unknown timestep sampling {timestep_sampling!r}; choose one of {', '.join(TIMESTEP_SAMPLINGS)}")
        if not (min_snr_gamma > 0 and p_std > 0 and math.isfinite(p_mean)):
            raise ConfigError(f"need min_snr_gamma > 0, p_std > 0 and a finite p_mean, got {min_snr_gamma}, {p_std}, {p_mean}")
        self.schedule = schedule
        self.objective = objective
        self.weighting, self.min_snr_gamma = weighting, float(min_snr_gamma)
        self.timestep_sampling, self.p_mean, self.p_std = timestep_sampling, float(p_mean), float(p_std)
        abar = schedule.alphas_cumprod
        self.sqrt_abar = abar.sqrt()
        self.sqrt_one_minus_abar = (1 - abar).sqrt()

    @classmethod
    def from_config(cls, schedule_cfg, train_cfg) -> GaussianDiffusion:
        """Build from the ``schedule`` and ``train`` config nodes (keys missing in old checkpoints take their defaults)."""
        t = train_cfg
        return cls(
            NoiseSchedule.from_config(schedule_cfg),
            t.get("objective", "eps"),
            t.get("loss_weighting", "none"),
            t.get("min_snr_gamma", 5.0),
            t.get("timestep_sampling", "uniform"),
            t.get("p_mean", -1.2),
            t.get("p_std", 1.2),
        )

    @property
    def T(self) -> int:
        return self.schedule.T

    def q_sample(self, x0: torch.Tensor, k: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_k = √ᾱ_k x_0 + √(1-ᾱ_k) ε."""
        x0, noise = x0.float(), noise.float()
        return _gather(self.sqrt_abar, k, x0.ndim) * x0 + _gather(self.sqrt_one_minus_abar, k, x0.ndim) * noise

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

    def snr(self, k: torch.Tensor) -> torch.Tensor:
        """SNR_k = ᾱ_k / (1 - ᾱ_k) as float32 of shape (B,)."""
        abar = self.schedule.alphas_cumprod.to(device=k.device)[k]
        return (abar / (1 - abar)).float()

    def loss_weight(self, k: torch.Tensor) -> torch.Tensor:
        """Per-sample weight of the objective's MSE, shape (B,) (see :data:`WEIGHTINGS`).

        Every objective's MSE is a multiple of the x̂_0 error: ε-MSE = SNR·|x̂_0 - x_0|², x_0-MSE =
        1·|...|², v-MSE = (SNR + 1)·|...|². A weighting names the x̂_0-error weight it wants and is
        divided by the objective's own, so it means the same whatever the network predicts.
        """
        if self.weighting == "none":
            return torch.ones(k.shape, device=k.device)
        snr = self.snr(k)
        native = {"eps": snr, "x0": torch.ones_like(snr), "v": snr + 1}[self.objective]
        if self.weighting == "min_snr":  # Hang et al. 2023
            wanted = snr.clamp(max=self.min_snr_gamma)
        else:  # edm: λ(σ) = (σ² + σ_d²) / (σ σ_d)² with σ² = 1/SNR, i.e. SNR + 1/σ_d² on the x̂_0 error
            wanted = snr + 1 / EDM_SIGMA_DATA**2
        return wanted / native

    def loss(self, model, x0: torch.Tensor, k: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Weighted mean squared error of ``model(x_k, k)`` against the objective's target.

        Args:
            model: callable (x_k, k) -> network output; it may run in reduced precision.
            x0: clean images in [-1, 1].
            k: (B,) schedule steps.
            noise: the ε that noises x0 to x_k.
        """
        xk = self.q_sample(x0, k, noise)
        out = model(xk, k)
        per_sample = (out.float() - self.target(x0.float(), noise.float(), k)).square().flatten(1).mean(1)
        return (self.loss_weight(k) * per_sample).mean()

    def sample_timesteps(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """n training steps: uniform over 0..T-1, or ``lognormal`` (EDM's ln σ ~ N(P_mean, P_std²),
        σ_k = √((1-ᾱ_k)/ᾱ_k), each σ mapped to the step with the nearest ln σ)."""
        if self.timestep_sampling == "uniform":
            return torch.randint(0, self.T, (n,), generator=generator, device=device)
        log_sigma = torch.randn(n, generator=generator, device=device) * self.p_std + self.p_mean
        table = (-self.schedule.half_log_snr).to(device=device, dtype=torch.float32)  # ln σ_k = -λ_k, increasing in k
        i = torch.searchsorted(table, log_sigma).clamp(1, self.T - 1)
        nearer_lower = (log_sigma - table[i - 1]) < (table[i] - log_sigma)
        return torch.where(nearer_lower, i - 1, i)

    @staticmethod
    def x0_at(x: torch.Tensor, eps: torch.Tensor, abar: float) -> torch.Tensor:
        """x̂_0 = (x - √(1-ᾱ) ε) / √ᾱ at a given ᾱ (a Python float keeps the dtype of ``x``, e.g. float64)."""
        return (x - (1 - abar) ** 0.5 * eps) / abar**0.5

    @staticmethod
    def large_variance(abar: float, abar_prev: float) -> float:
        """The "large" variance β' = 1 - ᾱ/ᾱ_prev of the move ᾱ -> ᾱ_prev (Ho et al.: it and the posterior's
        β̃' = (1-ᾱ_prev)/(1-ᾱ) β' bound the true reverse variance; improved-diffusion samples with it)."""
        return 1 - abar / abar_prev

    @staticmethod
    def respaced_step(x0: torch.Tensor, eps: torch.Tensor, abar: float, abar_prev: float, eta: float = 1.0) -> tuple[torch.Tensor, float]:
        """Mean and variance of the move ᾱ -> ᾱ_prev of a respaced chain (DDIM with noise scale η; η = 1 is the
        ancestral posterior q(x_prev | x, x̂_0)): σ² = η² (1-ᾱ_prev)/(1-ᾱ) (1-ᾱ/ᾱ_prev), mean √ᾱ_prev x̂_0 + √(1-ᾱ_prev-σ²) ε."""
        var = eta**2 * (1 - abar_prev) / (1 - abar) * GaussianDiffusion.large_variance(abar, abar_prev)
        return abar_prev**0.5 * x0 + max(1 - abar_prev - var, 0.0) ** 0.5 * eps, var
