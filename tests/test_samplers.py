"""Samplers against closed forms: Gaussian data, whose exact ε-predictor is known.

With data x_0 ~ N(μ, s²) per pixel, x_k ~ N(√ᾱ μ, ᾱ s² + 1 - ᾱ) and the exact (MMSE) noise
prediction is ε*(x_k, k) = √(1-ᾱ) (x_k - √ᾱ μ) / (ᾱ s² + 1 - ᾱ). A correct sampler fed with ε*
must return samples with mean μ and variance s². Pixels are independent, so one batch of
32 x 32 images gives thousands of samples. Deterministic samplers are affine in x_T per pixel,
x_0 = a x_T + b, so their output moments are exactly b and a² (no sampling error).
"""

from __future__ import annotations

import pytest
import torch
from conftest import posterior, x0_from_eps
from omegaconf import OmegaConf

from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import ConfigError
from ddpm.generate import generate
from ddpm.samplers import SAMPLERS, DDIMSampler, DDPMSampler, DPMSolverSampler, StackedRandomGenerator, build_sampler
from ddpm.schedules import NoiseSchedule

MU, S = 0.3, 0.5
CPU = torch.device("cpu")


def make_diffusion(name: str = "linear", T: int = 1000) -> GaussianDiffusion:
    return GaussianDiffusion(NoiseSchedule.from_config(OmegaConf.create({"name": name, "T": T, "beta_start": 1e-4, "beta_end": 0.02})))


def gaussian_eps(diffusion: GaussianDiffusion, mu: float = MU, s: float = S):
    """The exact ε-predictor of data N(mu, s²) per pixel."""
    abar_table = diffusion.schedule.alphas_cumprod

    def eps_fn(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        a = abar_table[k].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s**2 + 1 - a)

    return eps_fn


def mc_moments(sampler, diffusion, n_images: int = 32, seed: int = 0) -> tuple[float, float]:
    """Mean and variance over all pixels of n_images 32x32 samples."""
    x = generate(gaussian_eps(diffusion), sampler, (1, 32, 32), n_images, seed, n_images, CPU).double()
    return float(x.mean()), float(x.var())


def affine_moments(sampler, diffusion) -> tuple[float, float]:
    """Exact output mean and variance of a deterministic sampler: run it on x_T = 0 and 1."""
    y = sampler.sample(gaussian_eps(diffusion), torch.tensor([0.0, 1.0], dtype=torch.float64).view(2, 1, 1, 1))
    b, a = float(y[0]), float(y[1] - y[0])
    return b, a * a


# ------------------------------------------------------------------ target distribution
def test_ddpm_ancestral_all_steps_reproduces_gaussian() -> None:
    diff = make_diffusion()
    mean, var = mc_moments(DDPMSampler(diff, clip_denoised=False), diff)
    # 32,768 samples: standard errors 0.003 (mean) and 0.002 (variance)
    assert mean == pytest.approx(MU, abs=0.012)
    assert var == pytest.approx(S**2, abs=0.01)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddim_eta0_all_steps_exact_moments(schedule: str) -> None:
    diff = make_diffusion(schedule)
    mean, var = affine_moments(DDIMSampler(diff, clip_denoised=False), diff)
    assert mean == pytest.approx(MU, abs=0.002)  # x_T ~ N(0, I) instead of N(√ᾱ μ, ...) shifts it by < √ᾱ_{T-1} μ
    assert var == pytest.approx(S**2, abs=0.002)


def test_ddim_eta1_all_steps_reproduces_gaussian() -> None:
    diff = make_diffusion()
    mean, var = mc_moments(DDIMSampler(diff, eta=1.0, clip_denoised=False), diff, seed=100)
    assert mean == pytest.approx(MU, abs=0.012)
    assert var == pytest.approx(S**2, abs=0.01)


def test_ddim_eta1_is_ddpm_ancestral() -> None:
    """With all steps, DDIM's σ at eta = 1 is the posterior's: the two chains coincide draw for draw."""
    diff = make_diffusion(T=200)
    eps_fn = gaussian_eps(diff)
    a = generate(eps_fn, DDIMSampler(diff, eta=1.0, clip_denoised=False), (1, 8, 8), 4, 7, 4, CPU)
    b = generate(eps_fn, DDPMSampler(diff, clip_denoised=False), (1, 8, 8), 4, 7, 4, CPU)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_dpm_solver_20_steps_cosine_close_to_exact() -> None:
    diff = make_diffusion("cosine")
    mean, var = affine_moments(DPMSolverSampler(diff, steps=20, clip_denoised=False), diff)
    assert mean == pytest.approx(MU, abs=1e-3)
    assert var == pytest.approx(S**2, abs=0.004)
    mc_mean, mc_var = mc_moments(DPMSolverSampler(diff, steps=20, clip_denoised=False), diff, seed=200)
    assert mc_mean == pytest.approx(MU, abs=0.012)
    assert mc_var == pytest.approx(S**2, abs=0.01)


def test_dpm_solver_20_steps_linear_beats_first_order() -> None:
    diff = make_diffusion("linear")
    _, var2 = affine_moments(DPMSolverSampler(diff, steps=20, clip_denoised=False), diff)
    _, var1 = affine_moments(DDIMSampler(diff, steps=20, spacing="linspace", clip_denoised=False), diff)
    assert var2 == pytest.approx(S**2, rel=0.1)
    assert abs(var2 - S**2) < 0.5 * abs(var1 - S**2)


def test_dpm_solver_is_second_order() -> None:
    """Doubling the steps divides the error by about 4 (second order), by about 2 for first order."""
    diff = make_diffusion("linear")

    def err(steps: int, order: int) -> float:
        return abs(affine_moments(DPMSolverSampler(diff, steps=steps, clip_denoised=False, order=order), diff)[1] - S**2)

    assert err(10, 2) / err(20, 2) > 3.0
    assert 1.5 < err(10, 1) / err(20, 1) < 2.5


def test_dpm_solver_first_order_is_ddim() -> None:
    diff = make_diffusion("cosine", T=300)
    x_T = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    eps_fn = gaussian_eps(diff)
    a = DPMSolverSampler(diff, steps=12, spacing="trailing", clip_denoised=False, order=1).sample(eps_fn, x_T)
    b = DDIMSampler(diff, steps=12, spacing="trailing", clip_denoised=False).sample(eps_fn, x_T)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name,steps", [("ddpm", None), ("ddpm", 7), ("ddim", 1), ("ddim", 13), ("dpm_solver", 2), ("dpm_solver", 20)])
def test_point_mass_is_reached_exactly(name: str, steps: int | None) -> None:
    """Data = one point μ: x̂_0 = μ at every step, so every sampler must end exactly on μ."""
    diff = make_diffusion(T=100)
    cfg = OmegaConf.create({"name": name, "steps": steps, "eta": 0.0, "spacing": "trailing", "clip_denoised": False})
    x = generate(gaussian_eps(diff, mu=0.7, s=0.0), build_sampler(cfg, diff), (1, 4, 4), 3, 0, 3, CPU)
    torch.testing.assert_close(x, torch.full_like(x, 0.7), atol=2e-5, rtol=0)


# ------------------------------------------------------------------ single steps
def test_ddpm_step_is_the_posterior_draw() -> None:
    """On all T steps, one DDPM step is a draw from q(x_{k-1} | x_k, x̂_0) as GaussianDiffusion computes it."""
    diff = make_diffusion(T=50)
    sampler = DDPMSampler(diff, clip_denoised=False)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    eps = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    for i in (49, 20, 1):
        k = torch.full((2,), i, dtype=torch.long)
        x0 = x0_from_eps(diff.schedule, x, k, eps)
        out = sampler.step(i, x, eps, x0, StackedRandomGenerator(CPU, [5, 6]))
        mean, var = posterior(diff.schedule, x0, x, k)
        expected = mean + var.sqrt() * StackedRandomGenerator(CPU, [5, 6]).randn((1, 4, 4))
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    k0 = torch.zeros(2, dtype=torch.long)
    x0 = x0_from_eps(diff.schedule, x, k0, eps)
    torch.testing.assert_close(sampler.step(0, x, eps, x0, StackedRandomGenerator(CPU, [5, 6])), x0)  # no noise on the last step


def test_dpm_solver_second_order_step_golden() -> None:
    """One 2M step with hand-computed coefficients on a 4-step schedule (T=4, β = 0.1, 0.2, 0.3, 0.4)."""
    betas = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    diff = GaussianDiffusion(NoiseSchedule(betas))
    s = DPMSolverSampler(diff, clip_denoised=False)
    assert s.timesteps == [0, 1, 2, 3]
    # ᾱ = 0.9, 0.72, 0.504, 0.3024; λ = ½ log(ᾱ / (1-ᾱ))
    x = torch.tensor([1.0], dtype=torch.float64)
    s.reset()
    s.step(3, x, x, torch.tensor([0.5], dtype=torch.float64), None)  # first step: first order, stores x̂_0 = 0.5
    out = s.step(2, x, x, torch.tensor([0.2], dtype=torch.float64), None)
    # h = λ_1 - λ_2 = 0.5 log(0.72/0.28) - 0.5 log(0.504/0.496) = 0.4642306, r = (λ_2 - λ_3) / h = 0.9175348,
    # D = (1 + 1/(2r)) 0.2 - 0.5 / r · 0.5; x_prev = √(0.28/0.496) x - √0.72 (e^{-h} - 1) D
    assert float(out) == pytest.approx(0.7628509, abs=1e-6)


# ------------------------------------------------------------------ timesteps and configuration
def test_start_step_is_visited_for_every_spacing() -> None:
    diff = make_diffusion(T=100)
    for spacing in ("leading", "trailing", "linspace"):
        s = DDIMSampler(diff, steps=10, spacing=spacing, max_step=57)
        assert s.timesteps[-1] == 57 and len(s.timesteps) == 10 and s.timesteps[0] >= 0
    # from pure noise every spacing starts at T-1: leading's stride-10 grid 0..90 is moved up to 9..99
    assert DDIMSampler(diff, steps=10, spacing="leading").timesteps == list(range(9, 100, 10))


def test_build_sampler_rejects_bad_input() -> None:
    diff = make_diffusion(T=100)

    def cfg(**kw):
        base = {"name": "dpm_solver", "steps": 20, "eta": 0.0, "spacing": "linspace", "clip_denoised": True}
        return OmegaConf.create({**base, **kw})

    assert isinstance(build_sampler(cfg(), diff), DPMSolverSampler) and set(SAMPLERS) == {
        "ddpm",
        "ddim",
        "dpm_solver",
        "euler_maruyama",
        "pf_ode",
        "exact_score",
        "gaussian_score",
        "sde_dpm_solver",
        "edm_heun",
    }
    with pytest.raises(ConfigError, match="unknown sampler"):
        build_sampler(cfg(name="euler"), diff)
    with pytest.raises(ConfigError, match="exceeds"):
        build_sampler(cfg(steps=101), diff)
    with pytest.raises(ConfigError, match=">= 1"):
        build_sampler(cfg(steps=0), diff)
    with pytest.raises(ConfigError, match="eta"):
        build_sampler(cfg(eta=0.5), diff)
    with pytest.raises(ConfigError, match="eta"):
        build_sampler(cfg(name="ddim", eta=-1.0), diff)


def test_sample_i_independent_of_batch_size() -> None:
    diff = make_diffusion(T=100)
    sampler = DDPMSampler(diff, clip_denoised=False)
    eps_fn = gaussian_eps(diff)
    one = generate(eps_fn, sampler, (1, 4, 4), 8, 11, 1, CPU)
    eight = generate(eps_fn, sampler, (1, 4, 4), 8, 11, 8, CPU)
    three = generate(eps_fn, sampler, (1, 4, 4), 8, 11, 3, CPU)
    torch.testing.assert_close(one, eight, atol=1e-6, rtol=0)
    torch.testing.assert_close(three, eight, atol=1e-6, rtol=0)
    assert not torch.allclose(eight[0], eight[1])


# ------------------------------------------------------------------ time grids and variances
def test_logsnr_grid_is_uniform_in_lambda() -> None:
    """Each visited step has the λ nearest to its uniform target (up to the dedup of repeated steps)."""
    from ddpm.samplers.base import logsnr_timesteps
    from ddpm.schedules import half_log_snr

    diff = make_diffusion("linear")
    abar = diff.schedule.alphas_cumprod
    ks = logsnr_timesteps(abar, 999, 20)
    assert len(ks) == 20 and ks[0] == 0 and ks[-1] == 999 and ks == sorted(set(ks))
    lam = half_log_snr(abar)
    targets = torch.linspace(float(lam[999]), float(lam[0]), 20, dtype=torch.float64)
    for k, target in zip(reversed(ks), targets, strict=True):
        nearest = int((lam - target).abs().argmin())
        assert abs(k - nearest) <= 2, (k, nearest)
    assert ks[:4] == [0, 1, 4, 10] and ks[-3:] == [893, 947, 999]  # golden


def test_lambda_min_clips_the_start_of_the_cosine_schedule() -> None:
    diff = make_diffusion("cosine")
    s = DPMSolverSampler(diff, steps=20, grid="logsnr", lambda_min=-5.1)
    lam = diff.schedule.log_snr / 2
    top = s.timesteps[-1]
    assert lam[top] >= -5.1 > lam[top + 1] and top == 995
    assert float(lam[-1]) == pytest.approx(-9.9, abs=0.1)  # what the clip avoids
    with pytest.raises(ConfigError, match="lambda_min"):
        DPMSolverSampler(diff, steps=20, lambda_min=20.0)


@pytest.mark.parametrize("steps", [10, 20])
def test_dpm_solver_logsnr_grid_beats_time_grid(steps: int) -> None:
    """Exact output variance on Gaussian data: the λ-uniform grid's error is a fraction of the k-uniform one's."""
    diff = make_diffusion("linear")

    def err(grid: str) -> float:
        return abs(affine_moments(DPMSolverSampler(diff, steps=steps, clip_denoised=False, grid=grid), diff)[1] - S**2)

    assert err("logsnr") < 0.35 * err("time")


def ddpm_exact_moments(sampler: DDPMSampler, mu: float = MU, s: float = S) -> tuple[float, float]:
    """Mean and variance of the respaced ancestral chain on N(mu, s²) data, by recursion: x̂_0 is
    affine in x (x̂_0 = A x + B) and each step is x' = c0 x̂_0 + ck x + σ z."""
    m, v = 0.0, 1.0
    for i in reversed(range(len(sampler.timesteps))):
        a = sampler.abar[i]
        a_prev = sampler.abar[i - 1] if i > 0 else 1.0
        denom = a * s**2 + 1 - a
        A = (1 - (1 - a) / denom) / a**0.5  # from ε* = √(1-ā)(x - √ā μ)/denom
        B = (1 - a) * mu / denom
        beta = 1 - a / a_prev
        c0, ck = beta * a_prev**0.5 / (1 - a), (1 - a_prev) * (1 - beta) ** 0.5 / (1 - a)
        var = 0.0 if i == 0 else (beta if sampler.variance == "large" else beta * (1 - a_prev) / (1 - a))
        g = c0 * A + ck
        m, v = g * m + c0 * B, g * g * v + var
    return m, v


@pytest.mark.parametrize("variance", ["small", "large"])
def test_respaced_ancestral_variance_matches_its_recursion(variance: str) -> None:
    diff = make_diffusion("linear")
    sampler = DDPMSampler(diff, steps=20, clip_denoised=False, variance=variance)
    exact_mean, exact_var = ddpm_exact_moments(sampler)
    mean, var = mc_moments(sampler, diff, seed=300)
    assert mean == pytest.approx(exact_mean, abs=0.012)
    assert var == pytest.approx(exact_var, rel=0.04)


def test_large_variance_corrects_the_under_dispersion_at_few_steps() -> None:
    diff = make_diffusion("linear")
    small = ddpm_exact_moments(DDPMSampler(diff, steps=20, variance="small"))[1]
    large = ddpm_exact_moments(DDPMSampler(diff, steps=20, variance="large"))[1]
    assert small < 0.7 * S**2 < S**2 < large  # β̃ under-disperses; β errs on the other side, by less
    assert abs(large - S**2) < abs(small - S**2)
    full = ddpm_exact_moments(DDPMSampler(diff, variance="small"))[1]
    assert full == pytest.approx(S**2, rel=0.03)  # all T steps: the chain of the model itself


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm_solver", "sde_dpm_solver", "edm_heun"])
def test_one_step_starts_from_the_noise(name: str, spacing: str) -> None:
    """steps=1 evaluates the network at T-1, where x_T is noise, never at k = 0."""
    diff = make_diffusion(T=100)
    cfg = OmegaConf.create({"name": name, "steps": 1, "eta": 0.0, "spacing": spacing, "clip_denoised": False})
    sampler = build_sampler(cfg, diff)
    assert sampler.timesteps == [99]
    seen: list[int] = []
    sampler.sample(
        gaussian_eps(diff), torch.zeros(1, 1, 2, 2), StackedRandomGenerator(CPU, [0]), callback=lambda i, k, x, x0: seen.append(k)
    )
    assert seen == [99]


def test_variance_option_belongs_to_ddpm_only() -> None:
    diff = make_diffusion(T=100)
    cfg = OmegaConf.create({"name": "ddim", "steps": 5, "eta": 0.0, "spacing": "leading", "clip_denoised": True, "variance": "large"})
    with pytest.raises(ConfigError, match="variance"):
        build_sampler(cfg, diff)
    with pytest.raises(ConfigError, match="variance"):
        DDPMSampler(diff, steps=5, variance="huge")
