"""Schedules and the forward/posterior process against hand-computed values."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import posterior, x0_from_eps

from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import ConfigError
from ddpm.schedules import NoiseSchedule, make_betas


def test_linear_betas_and_alpha_bar():
    s = NoiseSchedule(make_betas("linear", 1000, 1e-4, 0.02))
    b = s.betas
    assert b[0].item() == pytest.approx(1e-4, abs=1e-15)
    assert b[999].item() == pytest.approx(0.02, abs=1e-15)
    assert b[500].item() == pytest.approx(1e-4 + 500 * (0.02 - 1e-4) / 999, rel=1e-12)
    assert s.alphas_cumprod[1].item() == pytest.approx((1 - 1e-4) * (1 - b[1].item()), rel=1e-12)
    # Posterior variance at k = 1: β_1 (1 - ᾱ_0) / (1 - ᾱ_1); at k = 0 it is exactly 0.
    a0, a1 = 1 - 1e-4, (1 - 1e-4) * (1 - b[1].item())
    assert s.posterior_variance[1].item() == pytest.approx(b[1].item() * (1 - a0) / (1 - a1), rel=1e-12)
    assert s.posterior_variance[0].item() == 0.0


def test_quadratic_betas():
    s = NoiseSchedule(make_betas("quadratic", 10, 1e-4, 0.02))
    for k in (0, 3, 9):
        expected = (math.sqrt(1e-4) + k * (math.sqrt(0.02) - math.sqrt(1e-4)) / 9) ** 2
        assert s.betas[k].item() == pytest.approx(expected, rel=1e-12)


def test_cosine_betas_follow_alpha_bar_formula():
    T, sft = 1000, 0.008
    s = NoiseSchedule(make_betas("cosine", T))

    def f(u: float) -> float:
        return math.cos((u + sft) / (1 + sft) * math.pi / 2) ** 2

    assert s.betas[0].item() == pytest.approx(1 - f(1 / T) / f(0), rel=1e-12)
    # Unclipped steps reproduce ᾱ_k = f((k+1)/T) / f(0) exactly.
    assert s.alphas_cumprod[499].item() == pytest.approx(f(500 / T) / f(0), rel=1e-9)
    assert s.betas.max().item() == pytest.approx(0.999)  # the last step is clipped
    assert s.ou_times[-1].item() == pytest.approx(9.9, abs=0.1)  # see the regimes design note


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="linear", T=0), "positive"),
        (dict(name="linear", T=10, beta_start=0.0), r"\(0, 1\)"),
        (dict(name="linear", T=10, beta_end=1.5), r"\(0, 1\)"),
        (dict(name="quadratic", T=10, beta_start=0.02, beta_end=0.01), "beta_end"),
        (dict(name="sigmoid", T=10), "unknown schedule"),
    ],
)
def test_bad_schedules_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        make_betas(**kwargs)


def test_q_sample_and_posterior_closed_forms():
    s = NoiseSchedule(make_betas("linear", 100, 1e-4, 0.02))
    d = GaussianDiffusion(s)
    x0, eps = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    k = torch.tensor([0, 37, 99])
    xk = d.q_sample(x0, k, eps)
    abar = s.alphas_cumprod
    for i, ki in enumerate(k.tolist()):
        expected = abar[ki].sqrt() * x0[i] + (1 - abar[ki]).sqrt() * eps[i]
        torch.testing.assert_close(xk[i], expected.float(), rtol=1e-6, atol=1e-6)
    # Posterior q(x_{k-1} | x_k, x_0) by Gaussian conditioning: precision = α_k/β_k + 1/(1-ᾱ_{k-1}).
    ki = 37
    alpha, beta, abar_prev = s.alphas[ki].item(), s.betas[ki].item(), abar[ki - 1].item()
    prec = alpha / beta + 1 / (1 - abar_prev)
    mean_expected = (math.sqrt(alpha) / beta * xk[1] + math.sqrt(abar_prev) / (1 - abar_prev) * x0[1]) / prec
    mean, var = posterior(s, x0[1:2], xk[1:2], k[1:2])
    torch.testing.assert_close(mean[0], mean_expected, rtol=1e-5, atol=1e-5)
    assert var.item() == pytest.approx(1 / prec, rel=1e-5)
    # x̂_0 inverts q_sample exactly when given the true noise.
    torch.testing.assert_close(x0_from_eps(s, xk, k, eps), x0, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_objectives_convert_back_to_eps(objective):
    d = GaussianDiffusion(NoiseSchedule(make_betas("cosine", 50)), objective)
    x0, eps = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    k = torch.tensor([0, 10, 30, 49])
    xk = d.q_sample(x0, k, eps)
    # A perfect network outputs the target; converting it back must give the true ε.
    torch.testing.assert_close(d.eps_from_output(xk, k, d.target(x0, eps, k)), eps, rtol=2e-3, atol=2e-3)


def test_timesteps_cover_all_steps_including_zero():
    d = GaussianDiffusion(NoiseSchedule(make_betas("linear", 10)))
    k = d.sample_timesteps(5000, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert k.min().item() == 0 and k.max().item() == 9
    counts = torch.bincount(k, minlength=10).float()
    assert (counts / 5000 - 0.1).abs().max() < 0.02


# Formula -> (the text that computes it, the one file that may).
ONE_HOME = {
    "log SNR, λ": ("log1p(-", "ddpm/schedules.py"),
    "OU time t = -½ log ᾱ": ("-0.5 * torch.log(", "ddpm/schedules.py"),
    "large variance β' = 1 - ᾱ/ᾱ_prev": ("abar / abar_prev", "ddpm/diffusion.py"),
    "ε -> score": ("-eps / ", "ddpm/schedules.py"),
    "score -> ε": ("-score * ", "ddpm/schedules.py"),
    # the regimes' chains run through Sampler.denoise too (ddpm/regimes/sampling.py)
    "ε consistent with a clamped x̂_0": ("abar**0.5 * x0) / (1 - abar) ** 0.5", "ddpm/samplers/base.py"),
}


@pytest.mark.parametrize("formula", ONE_HOME)
def test_each_formula_has_one_home(formula):
    """λ, OU time, score<->ε, the large variance and the ε of a clamped x̂_0 are computed in their one place;
    every caller uses it."""
    text, home = ONE_HOME[formula]
    repo = Path(__file__).resolve().parents[1]
    found = sorted(str(p.relative_to(repo)) for d in ("ddpm", "scripts") for p in (repo / d).rglob("*.py") if text in p.read_text())
    assert found == [home], found
