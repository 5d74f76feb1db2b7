"""EDM's stochastic sampler (Karras et al. 2022, Algorithm 2) on the discrete VP schedule.

EDM integrates in the scaled variable x̃ = x / √ᾱ = x_0 + σ ε with σ_k = √((1-ᾱ_k)/ᾱ_k) = e^{-λ_k},
where the probability-flow ODE is dx̃/dσ = (x̃ - D(x̃, σ)) / σ and D = x̂_0. On the discrete schedule
that slope is the (clip-consistent) ε̂ of the network evaluated at x = √ᾱ x̃, so no preconditioning
is needed. From visited step i to i-1 (σ_i > σ_{i-1}):

1. churn: γ_i = min(S_churn / N, √2 - 1) when S_min <= σ_i <= S_max, else 0 (N: visited steps);
   σ̂ = σ_i (1 + γ_i) is rounded to the schedule step of nearest λ (EDM's ``round_sigma`` for
   discrete networks), never below step i; x̃ += √(σ̂² - σ_i²) S_noise z;
2. Euler: x̃' = x̃ + (σ_{i-1} - σ̂) ε̂(x̃, σ̂);
3. Heun's correction: x̃' = x̃ + (σ_{i-1} - σ̂) (ε̂(x̃, σ̂) + ε̂(x̃', σ_{i-1})) / 2.

The move out of the lowest visited step goes to σ = 0, where the Euler step gives x̂_0 itself
(no correction). Each Heun move costs two evaluations and that last move one, so ``steps``
(network evaluations, E) visits ⌊E/2⌋ + 1 steps; for even E the first move, from the noise, is a
plain Euler step (there x̃ grows like σ and Euler is almost exact). E = 2M - 1 evaluations visit
M steps, every move but the last corrected, as in EDM; ``steps=null`` visits all T steps
(2T - 1 evaluations). With S_churn = 0 it is the deterministic Heun solver of the ODE.

``timesteps`` holds the step of every network evaluation, the last evaluation first (as for the
other samplers, evaluation s is at ``timesteps[num_evaluations - 1 - s]``); a churned evaluation
is at the rounded σ̂ step, a correction at the next visited step.
"""

from __future__ import annotations

import math

import torch

from ddpm.errors import ConfigError
from ddpm.samplers.base import Callback, EpsFn, Sampler, StackedRandomGenerator, check_steps, nearest_steps, start_steps

MAX_GAMMA = math.sqrt(2.0) - 1.0  # EDM's cap: churn at most doubles the variance of the noise


class EDMHeunSampler(Sampler):
    """Args (besides :class:`Sampler`'s; ``steps`` counts network evaluations):
    s_churn: overall stochasticity S_churn >= 0 (0: deterministic Heun).
    s_min, s_max: churn only at visited σ in [s_min, s_max] (0 <= s_min <= s_max; s_max may be inf).
    s_noise: scale of the churn noise, S_noise > 0 (slightly above 1 offsets the network's denoising bias).
    """

    def __init__(
        self,
        diffusion,
        steps=None,
        spacing="linspace",
        clip_denoised=True,
        max_step=None,
        s_churn: float = 0.0,
        s_min: float = 0.0,
        s_max: float = math.inf,
        s_noise: float = 1.0,
        grid: str = "time",
        lambda_min: float | None = None,
    ) -> None:
        s_churn, s_min, s_max, s_noise = float(s_churn), float(s_min), float(s_max), float(s_noise)
        if not 0.0 <= s_churn < math.inf:
            raise ConfigError(f"sampler.s_churn must be finite and >= 0, got {s_churn}")
        if not (0.0 <= s_min <= s_max and math.isfinite(s_min)):
            raise ConfigError(f"sampler.s_min and s_max must satisfy 0 <= s_min <= s_max (s_max may be inf), got {s_min}, {s_max}")
        if not 0.0 < s_noise < math.inf:
            raise ConfigError(f"sampler.s_noise must be finite and > 0, got {s_noise}")
        top = start_steps(diffusion, max_step, lambda_min)
        if steps is None:
            levels = top
        else:
            check_steps(steps)
            if steps > 2 * top - 1:
                raise ConfigError(
                    f"sampler.steps={steps} exceeds the {2 * top - 1} evaluations of edm_heun on the {top} steps 0..{top - 1}"
                )
            levels = int(steps) // 2 + 1
        super().__init__(diffusion, levels, spacing, clip_denoised, max_step, grid=grid, lambda_min=lambda_min)
        self.s_churn, self.s_min, self.s_max, self.s_noise = s_churn, s_min, s_max, s_noise
        abar = diffusion.schedule.alphas_cumprod
        lam = diffusion.schedule.half_log_snr  # decreasing in k; σ_k = e^{-λ_k}
        self.levels = list(self.timesteps)  # the visited steps, increasing
        m = len(self.levels)
        self.sigma = [math.exp(-float(lam[k])) for k in self.levels]
        gamma = [min(s_churn / m, MAX_GAMMA) if s_min <= s <= s_max else 0.0 for s in self.sigma]
        targets = torch.tensor([float(lam[k]) - math.log1p(g) for k, g in zip(self.levels, gamma, strict=True)], dtype=torch.float64)
        rounded = nearest_steps(lam, targets).tolist() if diffusion.T > 1 else [0] * m
        self.churn_steps = [max(int(r), k) for r, k in zip(rounded, self.levels, strict=True)]  # k̂_i >= k_i
        self.churn_sigma = [math.exp(-float(lam[k])) for k in self.churn_steps]
        # Heun's correction on every move between visited steps, but the first when E is even.
        self.heun = [i > 0 for i in range(m)]
        if steps is not None and steps % 2 == 0 and m > 1:
            self.heun[m - 1] = False
        order: list[int] = []  # steps of the evaluations, in the order they run
        for i in range(m - 1, -1, -1):
            order.append(self.churn_steps[i])
            if i > 0 and self.heun[i]:
                order.append(self.levels[i - 1])
        self.timesteps = order[::-1]
        self.abar = abar[self.timesteps].tolist()
        self.stochastic = any(k != c for k, c in zip(self.levels, self.churn_steps, strict=True))

    def step(self, i: int, x: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor, rng: StackedRandomGenerator | None) -> torch.Tensor:
        raise NotImplementedError("edm_heun runs its own loop (two evaluations per move)")

    @torch.inference_mode()
    def sample(
        self, eps_fn: EpsFn, x_T: torch.Tensor, rng: StackedRandomGenerator | None = None, callback: Callback | None = None, progress=None
    ) -> torch.Tensor:
        """Run Algorithm 2 from ``x_T`` at the top visited step; the churn noise comes from ``rng``."""
        self.require_rng(rng)
        table = self.diffusion.schedule.alphas_cumprod
        left = iter(range(self.num_evaluations - 1, -1, -1))  # callback index i: evaluation n-1-i

        def slope(xt: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
            """(dx̃/dσ = ε̂, x̂_0) at step k from the scaled state x̃."""
            a = float(table[k])
            return self.evaluate(eps_fn, a**0.5 * xt, next(left), k, a, callback, progress)

        m = len(self.levels)
        xt = x_T.float() / float(table[self.levels[-1]]) ** 0.5
        for i in range(m - 1, -1, -1):
            sigma, k_hat, sigma_hat = self.sigma[i], self.churn_steps[i], self.churn_sigma[i]
            if k_hat != self.levels[i]:
                xt = xt + self.s_noise * (sigma_hat**2 - sigma**2) ** 0.5 * rng.randn(xt.shape[1:])
            d, x0 = slope(xt, k_hat)
            if i == 0:  # the Euler move into σ = 0 lands on x̂_0
                return x0
            h = self.sigma[i - 1] - sigma_hat
            x_next = xt + h * d
            if self.heun[i]:
                d_next, _ = slope(x_next, self.levels[i - 1])
                x_next = xt + h * 0.5 * (d + d_next)
            xt = x_next
        raise AssertionError("unreachable: the loop returns at the lowest visited step")
