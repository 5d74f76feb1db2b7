"""The stochastic samplers for low evaluation counts (SDE-DPM-Solver++(2M), EDM's churned Heun
sampler, ancestral sampling on the log-SNR grid) against closed forms on Gaussian data.

As in tests/test_samplers.py, data are N(μ, s²) per pixel and the network is the exact ε*. Both
samplers are then affine in x_T and their fresh noise, so their output is exactly Gaussian, with a
mean and variance that a short recursion over the visited steps gives (written below from the
papers' update rules, not from the samplers' code). The Monte Carlo moments of real runs must
match that recursion, and the recursion must approach N(μ, s²) as the evaluations grow.

EDM works with x̃ = x / √ᾱ = x_0 + σ ε, σ = √((1-ᾱ)/ᾱ); for Gaussian data D(x̃, σ) = E[x_0 | x̃] =
μ + s²/(s² + σ²) (x̃ - μ), and the probability-flow ODE dx̃/dσ = (x̃ - D)/σ has the solution
x̃(σ) - μ ∝ √(s² + σ²): from x_T ~ N(0, 1) at the top step it ends on x_0 = μ + (x_T/√ᾱ - μ) s / √(s² + σ²).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf
from test_samplers import MU, S, affine_moments, ddpm_exact_moments, gaussian_eps, make_diffusion, mc_moments

from ddpm.errors import ConfigError
from ddpm.generate import generate
from ddpm.samplers import (
    SAMPLERS,
    DDIMSampler,
    DDPMSampler,
    EDMHeunSampler,
    SDEDPMSolverSampler,
    StackedRandomGenerator,
    build_sampler,
)
from ddpm.samplers.base import karras_timesteps
from ddpm.schedules import half_log_snr

CPU = torch.device("cpu")
CHURN = {"s_churn": 30.0, "s_min": 0.01, "s_max": 1.0, "s_noise": 1.0}  # EDM's CIFAR-10 setting, S_noise = 1


# ------------------------------------------------------------------ closed forms
def lam(a: float) -> float:
    return 0.5 * math.log(a / (1 - a))


def gaussian_x0(a: float, mu: float = MU, s: float = S) -> tuple[float, float]:
    """x̂_0 = A x + B of the exact ε* at ᾱ = a (x in VP form)."""
    denom = a * s * s + 1 - a
    return (1 - (1 - a) / denom) / a**0.5, (1 - a) * mu / denom


def sde_dpm_exact_moments(sampler: SDEDPMSolverSampler, mu: float = MU, s: float = S) -> tuple[float, float]:
    """Mean and variance of SDE-DPM-Solver++ on N(mu, s²) data. The state (x, x̂_0 of the previous
    step) is jointly Gaussian; each step is x' = (σ'/σ) e^{-h} x + α' (1 - e^{-2h}) D + σ' √(1 - e^{-2h}) z
    with D = (1 + 1/(2r)) x̂_0 - 1/(2r) x̂_0^{last} (2M) or x̂_0 (first step, the step into the lowest
    visited step, order 1), and the last evaluation returns x̂_0."""
    abar = sampler.abar
    m, C = np.zeros(2), np.diag([1.0, 0.0])  # (x, last x̂_0)
    for i in reversed(range(len(abar))):
        a = abar[i]
        A, B = gaussian_x0(a, mu, s)
        if i == 0:
            return A * m[0] + B, A * A * C[0, 0]
        a_prev = abar[i - 1]
        h = lam(a_prev) - lam(a)
        p, q = 1.0, 0.0
        if sampler.order == 2 and i < len(abar) - 1 and i > 1:
            r = (lam(a) - lam(abar[i + 1])) / h
            p, q = 1 + 0.5 / r, -0.5 / r
        c_x = math.sqrt((1 - a_prev) / (1 - a)) * math.exp(-h)
        c_d = math.sqrt(a_prev) * (1 - math.exp(-2 * h))
        M = np.array([[c_x + c_d * p * A, c_d * q], [A, 0.0]])
        m = M @ m + np.array([c_d * p * B, B])
        C = M @ C @ M.T + np.diag([(1 - a_prev) * (1 - math.exp(-2 * h)), 0.0])
    raise AssertionError


def edm_exact_moments(sampler: EDMHeunSampler, mu: float = MU, s: float = S) -> tuple[float, float]:
    """Mean and variance of EDM's Algorithm 2 on N(mu, s²) data, in x̃: churn adds variance
    S_noise² (σ̂² - σ²), an Euler or Heun move in σ is affine with slope (x̃ - D(x̃, σ)) / σ =
    σ (x̃ - μ) / (s² + σ²), the last move lands on D(x̃, σ̂_0)."""

    def slope(sig: float) -> float:  # d(x̃ - μ)/dσ = f(σ) (x̃ - μ)
        return sig / (s * s + sig * sig)

    levels = sampler.levels
    a_top = float(sampler.diffusion.schedule.alphas_cumprod[levels[-1]])
    mean, var = -mu, 1.0 / a_top  # of y = x̃ - μ, x̃ = x_T / √ᾱ_top
    for i in reversed(range(len(levels))):
        sig, sig_hat = sampler.sigma[i], sampler.churn_sigma[i]
        var += sampler.s_noise**2 * (sig_hat**2 - sig**2)
        if i == 0:
            g = s * s / (s * s + sig_hat * sig_hat)  # D - μ = g y
            return mu + g * mean, g * g * var
        h = sampler.sigma[i - 1] - sig_hat
        euler = 1 + h * slope(sig_hat)
        g = 1 + 0.5 * h * (slope(sig_hat) + slope(sampler.sigma[i - 1]) * euler) if sampler.heun[i] else euler
        mean, var = g * mean, g * g * var
    raise AssertionError


def ode_solution(diffusion, top: int, mu: float = MU, s: float = S) -> tuple[float, float]:
    """x_0 = a x_T + b of the exact probability-flow ODE from step ``top``."""
    a_top = float(diffusion.schedule.alphas_cumprod[top])
    sig = math.sqrt((1 - a_top) / a_top)
    c = s / math.sqrt(s * s + sig * sig)
    return c / math.sqrt(a_top), mu * (1 - c)


def counting(eps_fn):
    """eps_fn that counts its calls (one per network evaluation)."""

    def fn(x, k):
        fn.calls += 1
        return eps_fn(x, k)

    fn.calls = 0
    return fn


# ------------------------------------------------------------------ SDE-DPM-Solver++(2M)
def test_sde_dpm_solver_first_order_is_the_ancestral_posterior_step() -> None:
    """Order 1: (σ'/σ) e^{-h} x + α'(1 - e^{-2h}) x̂_0 + σ' √(1 - e^{-2h}) z is q(x' | x, x̂_0): the
    respaced DDPM chain with the small variance, draw for draw."""
    diff = make_diffusion("cosine", T=300)
    eps_fn = gaussian_eps(diff)
    a = generate(eps_fn, SDEDPMSolverSampler(diff, steps=12, clip_denoised=False, order=1), (1, 6, 6), 4, 3, 4, CPU)
    b = generate(eps_fn, DDPMSampler(diff, steps=12, spacing="linspace", clip_denoised=False), (1, 6, 6), 4, 3, 4, CPU)
    torch.testing.assert_close(a, b, atol=2e-5, rtol=0)


def test_sde_dpm_solver_second_order_step_golden() -> None:
    """One SDE 2M step on the 4-step schedule (β = 0.1, 0.2, 0.3, 0.4) with hand-computed coefficients."""
    diff = make_diffusion_from_betas([0.1, 0.2, 0.3, 0.4])
    s = SDEDPMSolverSampler(diff, clip_denoised=False)
    assert s.timesteps == [0, 1, 2, 3] and s.stochastic
    x = torch.tensor([[1.0]], dtype=torch.float64)
    s.reset()
    s.step(3, x, x, torch.tensor([[0.5]], dtype=torch.float64), StackedRandomGenerator(CPU, [0]))  # first order, stores x̂_0
    z = float(StackedRandomGenerator(CPU, [7]).randn((1,)))
    out = s.step(2, x, x, torch.tensor([[0.2]], dtype=torch.float64), StackedRandomGenerator(CPU, [7]))
    # ᾱ_1 = 0.72, ᾱ_2 = 0.504; h = 0.4642306, r = 0.9175348 (as in test_samplers' ODE golden);
    # D = (1 + 1/(2r)) 0.2 - 0.5/r · 0.5 = 0.0365185; x' = √(0.28/0.496) e^{-h} x + √0.72 (1 - e^{-2h}) D + √0.28 √(1 - e^{-2h}) z
    assert float(out) == pytest.approx(0.4723081 + 0.0187421 + 0.4115274 * z, abs=1e-6)


def make_diffusion_from_betas(betas):
    from ddpm.diffusion import GaussianDiffusion
    from ddpm.schedules import NoiseSchedule

    return GaussianDiffusion(NoiseSchedule(torch.tensor(betas, dtype=torch.float64)))


def test_sde_dpm_solver_moments_match_the_closed_form() -> None:
    diff = make_diffusion("linear")
    sampler = SDEDPMSolverSampler(diff, steps=20, clip_denoised=False)
    exact_mean, exact_var = sde_dpm_exact_moments(sampler)
    mean, var = mc_moments(sampler, diff, seed=400)
    # 32,768 samples: standard errors 0.003 (mean) and 0.002 (variance)
    assert mean == pytest.approx(exact_mean, abs=0.012)
    assert var == pytest.approx(exact_var, rel=0.04)
    assert exact_mean == pytest.approx(MU, abs=1e-4) and exact_var == pytest.approx(S**2, abs=0.025)


def test_sde_dpm_solver_converges_and_beats_first_order() -> None:
    """On the log-SNR grid the variance error shrinks about fourfold per doubling of the steps
    (second order), and is a small fraction of the first-order (ancestral) chain's at the same count."""
    diff = make_diffusion("linear")

    def err(steps: int, order: int = 2) -> float:
        return abs(sde_dpm_exact_moments(SDEDPMSolverSampler(diff, steps=steps, order=order, grid="logsnr"))[1] - S**2)

    assert err(50) / err(100) > 3.5 and err(25) / err(50) > 2.5
    assert err(100) < 1e-3
    for steps in (20, 30, 50):
        assert err(steps) < 0.25 * err(steps, order=1)


# ------------------------------------------------------------------ EDM (Algorithm 2)
@pytest.mark.parametrize("evals", [1, 2, 3, 4, 5, 10, 19, 20, 30, 50])
def test_edm_heun_evaluations(evals: int) -> None:
    """``steps`` counts network evaluations: ⌊E/2⌋ + 1 visited steps, each evaluation reported to
    the callback with its step (timesteps[i]), in order, once."""
    diff = make_diffusion(T=100)
    sampler = EDMHeunSampler(diff, steps=evals, clip_denoised=False, grid="karras", **CHURN)
    assert sampler.num_evaluations == len(sampler.timesteps) == evals
    assert len(sampler.levels) == evals // 2 + 1 and sampler.levels[-1] == 99
    assert sampler.heun == [i > 0 and not (evals % 2 == 0 and i == len(sampler.levels) - 1) for i in range(len(sampler.levels))]
    eps_fn, seen = counting(gaussian_eps(diff)), []
    sampler.sample(eps_fn, torch.zeros(2, 1, 2, 2), StackedRandomGenerator(CPU, [0, 1]), callback=lambda i, k, x, x0: seen.append((i, k)))
    assert eps_fn.calls == evals
    assert seen == [(i, sampler.timesteps[i]) for i in reversed(range(evals))]


def test_edm_heun_evaluation_limits() -> None:
    diff = make_diffusion(T=50)
    assert EDMHeunSampler(diff, steps=None).num_evaluations == 99  # every step visited: 2T - 1
    assert EDMHeunSampler(diff, steps=99).levels == list(range(50))
    with pytest.raises(ConfigError, match="sampler.steps=100 exceeds the 99 evaluations"):
        EDMHeunSampler(diff, steps=100)
    with pytest.raises(ConfigError, match=">= 1"):
        EDMHeunSampler(diff, steps=0)
    assert EDMHeunSampler(diff, steps=7, max_step=20).levels[-1] == 20  # denoising from a noised image


def test_edm_heun_churn_steps() -> None:
    """γ = min(S_churn / N, √2 - 1) inside [S_min, S_max], σ̂ = σ (1 + γ) rounded to the step of nearest λ, never below."""
    diff = make_diffusion("linear")
    lam_table = half_log_snr(diff.schedule.alphas_cumprod)
    s = EDMHeunSampler(diff, steps=19, grid="karras", s_churn=30.0, s_min=0.05, s_max=2.0)
    n = len(s.levels)
    gamma = min(30.0 / n, math.sqrt(2) - 1)
    assert gamma == pytest.approx(math.sqrt(2) - 1)  # 30 / 10 levels: capped
    for k, k_hat, sig in zip(s.levels, s.churn_steps, s.sigma, strict=True):
        assert sig == pytest.approx(math.exp(-float(lam_table[k])))
        if not 0.05 <= sig <= 2.0:
            assert k_hat == k
            continue
        target = float(lam_table[k]) - math.log1p(gamma)
        assert k_hat > k and abs(float(lam_table[k_hat]) - target) <= min(abs(float(lam_table[j]) - target) for j in (k_hat - 1, k_hat + 1))
    assert sum(k_hat > k for k, k_hat in zip(s.levels, s.churn_steps, strict=True)) == 3  # σ = 0.35, 1.25 and 0.073 lie inside
    # S_churn = 2: γ = 0.2 at every σ (S_max = inf): every step moves up but the top (there is no step above T-1)
    # and k = 0, whose next step is further away in λ than log 1.2
    t = EDMHeunSampler(diff, steps=19, grid="karras", s_churn=2.0)
    assert t.churn_steps[0] == 0 and t.churn_steps[-1] == 999
    assert all(c > k for c, k in zip(t.churn_steps[1:-1], t.levels[1:-1], strict=True))


def test_edm_heun_without_churn_is_a_second_order_ode_solver() -> None:
    """S_churn = 0: deterministic Heun; its exact output moments are the recursion's, and its error
    against the exact ODE solution shrinks about fourfold per doubling of the visited steps."""
    diff = make_diffusion("linear")
    a_star, _ = ode_solution(diff, 999)

    def run(evals: int) -> tuple[float, float]:
        s = EDMHeunSampler(diff, steps=evals, clip_denoised=False, grid="karras", s_churn=0.0)
        assert not s.stochastic and s.churn_steps == s.levels
        moments = affine_moments(s, diff)  # runs without a generator
        assert moments == pytest.approx(edm_exact_moments(s), abs=2e-5)
        return moments

    errs = [abs(run(e)[1] - a_star**2) for e in (39, 79, 159)]  # 20, 40, 80 visited steps
    assert errs[0] / errs[1] > 3.5 and errs[1] / errs[2] > 3.5
    assert errs[2] < 2e-3


def test_edm_heun_without_churn_matches_the_fine_ode() -> None:
    """Per sample: 199 evaluations land within 0.005 of the exact ODE solution x_0 = μ + (x_T/√ᾱ - μ) s/√(s²+σ²),
    and within 0.01 of DDIM (eta = 0) on all 1000 steps."""
    diff = make_diffusion("linear")
    a_star, b_star = ode_solution(diff, 999)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    eps_fn = gaussian_eps(diff)
    out = EDMHeunSampler(diff, steps=199, clip_denoised=False, grid="karras", s_churn=0.0).sample(eps_fn, x_T)
    torch.testing.assert_close(out, a_star * x_T + b_star, atol=5e-3, rtol=0)
    torch.testing.assert_close(out, DDIMSampler(diff, clip_denoised=False).sample(eps_fn, x_T), atol=1e-2, rtol=0)


def test_edm_heun_with_churn_matches_the_closed_form() -> None:
    diff = make_diffusion("linear")
    sampler = EDMHeunSampler(diff, steps=19, clip_denoised=False, grid="karras", **CHURN)
    assert sampler.stochastic
    exact_mean, exact_var = edm_exact_moments(sampler)
    mean, var = mc_moments(sampler, diff, seed=500)
    assert mean == pytest.approx(exact_mean, abs=0.012)
    assert var == pytest.approx(exact_var, rel=0.04)
    assert exact_var != pytest.approx(edm_exact_moments(EDMHeunSampler(diff, steps=19, grid="karras", s_churn=0.0))[1], abs=1e-3)


def test_edm_heun_with_churn_converges() -> None:
    """With S_noise = 1 and the exact D, churn keeps the marginal of each noise level: only the
    Heun steps err, and the variance approaches s² as the evaluations grow."""
    diff = make_diffusion("linear")
    errs = [abs(edm_exact_moments(EDMHeunSampler(diff, steps=e, grid="karras", **CHURN))[1] - S**2) for e in (19, 49, 99, 199)]
    assert errs == sorted(errs, reverse=True) and errs[-1] < 6e-3 and errs[0] / errs[-1] > 20
    inflated = edm_exact_moments(EDMHeunSampler(diff, steps=199, grid="karras", **{**CHURN, "s_noise": 1.007}))[1]
    assert inflated > edm_exact_moments(EDMHeunSampler(diff, steps=199, grid="karras", **CHURN))[1]  # S_noise > 1 adds variance


# ------------------------------------------------------------------ shared properties
@pytest.mark.parametrize("name,extra", [("sde_dpm_solver", {}), ("edm_heun", CHURN)])
def test_sample_i_independent_of_batch_size(name: str, extra: dict) -> None:
    diff = make_diffusion(T=100)
    sampler = SAMPLERS[name](diff, steps=10, clip_denoised=False, **extra)
    assert sampler.stochastic
    eps_fn = gaussian_eps(diff)
    eight = generate(eps_fn, sampler, (1, 4, 4), 8, 11, 8, CPU)
    torch.testing.assert_close(generate(eps_fn, sampler, (1, 4, 4), 8, 11, 1, CPU), eight, atol=1e-6, rtol=0)
    torch.testing.assert_close(generate(eps_fn, sampler, (1, 4, 4), 8, 11, 3, CPU), eight, atol=1e-6, rtol=0)
    assert not torch.allclose(eight[0], eight[1])
    seed_12 = generate(eps_fn, sampler, (1, 4, 4), 7, 12, 7, CPU)
    torch.testing.assert_close(seed_12, eight[1:], atol=1e-6, rtol=0)  # seed 12 draws sample 1 of seed 11


@pytest.mark.parametrize("name,steps", [("sde_dpm_solver", 2), ("sde_dpm_solver", 20), ("edm_heun", 1), ("edm_heun", 10), ("edm_heun", 19)])
def test_point_mass_is_reached_exactly(name: str, steps: int) -> None:
    """Data = one point μ: x̂_0 = μ at every evaluation, whatever the noise, so every sample ends exactly on μ."""
    diff = make_diffusion(T=100)
    sampler = SAMPLERS[name](diff, steps=steps, clip_denoised=False, **(CHURN if name == "edm_heun" else {}))
    x = generate(gaussian_eps(diff, mu=0.7, s=0.0), sampler, (1, 4, 4), 3, 0, 3, CPU)
    torch.testing.assert_close(x, torch.full_like(x, 0.7), atol=2e-5, rtol=0)


def test_ancestral_on_the_logsnr_grid() -> None:
    """``sampler=ddpm sampler.grid=logsnr``: the respaced chain on λ-uniform steps matches its recursion."""
    diff = make_diffusion("linear")
    cfg = OmegaConf.create({"name": "ddpm", "steps": 20, "eta": 0.0, "spacing": "leading", "clip_denoised": False, "grid": "logsnr"})
    sampler = build_sampler(cfg, diff)
    assert sampler.timesteps == DDPMSampler(diff, steps=20, grid="logsnr").timesteps and sampler.timesteps[0] == 0
    exact_mean, exact_var = ddpm_exact_moments(sampler)
    mean, var = mc_moments(sampler, diff, seed=600)
    assert mean == pytest.approx(exact_mean, abs=0.012)
    assert var == pytest.approx(exact_var, rel=0.04)


def test_karras_grid() -> None:
    """EDM's grid: σ^{1/7} uniform from σ_top to σ_0, each σ at the step of nearest λ; distinct steps from 0 to the top."""
    diff = make_diffusion("linear")
    abar = diff.schedule.alphas_cumprod
    lam_table = half_log_snr(abar)
    for steps in (2, 5, 10, 25, 100):
        ks = karras_timesteps(abar, 999, steps)
        assert len(ks) == steps and ks[0] == 0 and ks[-1] == 999 and ks == sorted(set(ks))
    ks = karras_timesteps(abar, 999, 10)
    sig = [math.exp(-float(lam_table[k])) for k in (999, 0)]
    targets = torch.linspace(sig[0] ** (1 / 7), sig[1] ** (1 / 7), 10, dtype=torch.float64) ** 7
    for k, target in zip(reversed(ks), targets, strict=True):
        assert k == int((lam_table + torch.log(target)).abs().argmin())
    assert ks == [0, 18, 102, 301, 511, 663, 775, 864, 937, 999]  # golden
    assert karras_timesteps(abar, 999, 1) == [999]
    with pytest.raises(ConfigError, match="exceeds"):
        karras_timesteps(abar, 9, 11)


# ------------------------------------------------------------------ configuration
def test_registered_and_configured() -> None:
    diff = make_diffusion("linear")
    sde = build_sampler(compose_config("sample", ["sampler=sde_dpm_solver"]).sampler, diff)
    assert isinstance(sde, SDEDPMSolverSampler) and sde.num_evaluations == 20 and sde.order == 2
    eps_fn = counting(gaussian_eps(diff))
    sde.sample(eps_fn, torch.zeros(1, 1, 2, 2), StackedRandomGenerator(CPU, [0]))
    assert eps_fn.calls == 20
    edm_cfg = compose_config("sample", ["sampler=edm_heun"]).sampler
    edm = build_sampler(edm_cfg, diff)
    assert isinstance(edm, EDMHeunSampler) and edm.num_evaluations == edm_cfg.steps == 19
    assert (edm.s_churn, edm.s_min, edm.s_max, edm.s_noise) == (30.0, 0.01, 1.0, 1.007) and edm.stochastic
    off = build_sampler(compose_config("sample", ["sampler=edm_heun", "sampler.s_churn=0"]).sampler, diff)
    assert not off.stochastic
    for override, match in [
        ("sampler.s_churn=-1", "s_churn"),
        ("sampler.s_churn=nan", "s_churn"),
        ("sampler.s_churn=inf", "s_churn"),
        ("sampler.s_min=2", "s_min"),
        ("sampler.s_min=-0.1", "s_min"),
        ("sampler.s_max=nan", "s_max"),
        ("sampler.s_noise=0", "s_noise"),
        ("sampler.s_noise=inf", "s_noise"),
        ("sampler.steps=2000", "exceeds the 1999 evaluations"),
    ]:
        with pytest.raises(ConfigError, match=match):
            build_sampler(compose_config("sample", ["sampler=edm_heun", override]).sampler, diff)
    assert build_sampler(compose_config("sample", ["sampler=edm_heun", "sampler.s_max=inf"]).sampler, diff).s_max == math.inf
    for name in ("sde_dpm_solver", "ddpm", "dpm_solver"):  # churn settings belong to edm_heun
        with pytest.raises(ConfigError, match="sampler.s_churn applies to the edm_heun sampler only"):
            build_sampler(compose_config("sample", [f"sampler={name}", "sampler.s_churn=0"]).sampler, diff)
    with pytest.raises(ConfigError, match="eta applies to the ddim sampler only"):
        build_sampler(compose_config("sample", ["sampler=sde_dpm_solver", "sampler.eta=0.5"]).sampler, diff)
