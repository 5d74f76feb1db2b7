"""The SDE-view samplers (Euler–Maruyama, probability-flow ODE) and ``sampler=exact_score``
against closed forms on Gaussian data, and the exact-score sampler's collapse onto training points."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config
from test_samplers import MU, S, affine_moments, gaussian_eps, make_diffusion, mc_moments

from ddpm.errors import ConfigError
from ddpm.generate import generate
from ddpm.regimes import theory
from ddpm.samplers import SAMPLERS, EulerMaruyamaSampler, ExactScoreSampler, ProbabilityFlowSampler, StackedRandomGenerator, build_sampler

CPU = torch.device("cpu")


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_euler_maruyama_all_steps_reproduces_gaussian(schedule: str) -> None:
    diff = make_diffusion(schedule)
    mean, var = mc_moments(EulerMaruyamaSampler(diff, clip_denoised=False), diff, seed=300)
    # 32,768 samples: standard errors 0.003 (mean) and 0.002 (variance)
    assert mean == pytest.approx(MU, abs=0.012)
    assert var == pytest.approx(S**2, abs=0.01)


def test_euler_maruyama_step_is_the_discretised_sde() -> None:
    """One step: x + h (x + 2 ∇log p) + √(2h) z with h the OU-time gap and ∇log p = -ε/√(1-ᾱ)."""
    diff = make_diffusion(T=50)
    sampler = EulerMaruyamaSampler(diff, clip_denoised=False)
    x = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    i = 20
    out = sampler.step(i, x, eps, x, StackedRandomGenerator(CPU, [5, 6]))
    t = diff.schedule.ou_times
    h = float(t[i] - t[i - 1])
    z = StackedRandomGenerator(CPU, [5, 6]).randn((1, 3, 3))
    abar = float(diff.schedule.alphas_cumprod[i])
    expected = x + h * (x - 2 * eps / (1 - abar) ** 0.5) + (2 * h) ** 0.5 * z
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_pf_ode_all_steps_exact_moments(schedule: str) -> None:
    diff = make_diffusion(schedule)
    mean, var = affine_moments(ProbabilityFlowSampler(diff, clip_denoised=False), diff)
    assert mean == pytest.approx(MU, abs=0.002)  # x_T ~ N(0, I) instead of N(√ᾱ μ, ...) shifts it by < √ᾱ_{T-1} μ
    assert var == pytest.approx(S**2, abs=0.001)


def test_pf_ode_orders() -> None:
    """Doubling the steps halves Euler's error and divides Adams–Bashforth 2's by about 4 or more."""
    diff = make_diffusion("linear")

    def err(steps: int, order: int) -> float:
        return abs(affine_moments(ProbabilityFlowSampler(diff, steps=steps, clip_denoised=False, order=order), diff)[1] - S**2)

    assert 1.7 < err(50, 1) / err(100, 1) < 2.3
    assert err(50, 2) / err(100, 2) > 3.5
    assert err(100, 2) < 0.1 * err(100, 1)
    with pytest.raises(ConfigError, match="order must be 1 or 2"):
        ProbabilityFlowSampler(diff, order=3)


def test_exact_score_of_many_gaussian_points_is_the_gaussian_eps() -> None:
    """n = 20,000 draws of N(μ, s²) in one pixel: above the (tiny) collapse time, ε* of the
    empirical law is the Gaussian closed form up to O(1/√n)."""
    diff = make_diffusion()
    pts = MU + S * torch.randn(20_000, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    sampler = ExactScoreSampler(diff, points=pts, dtype="float64")
    x = torch.linspace(MU - 2 * S, MU + 2 * S, 41).view(-1, 1, 1, 1)  # where the 20,000 points are dense
    for k in (100, 300, 999):
        kk = torch.full((len(x),), k)
        torch.testing.assert_close(sampler.score_eps(x, kk), gaussian_eps(diff)(x, kk), atol=0.02, rtol=0)


def test_exact_score_sampler_draws_the_empirical_law() -> None:
    """Its samples are draws of the training points' law: mean and variance of the points."""
    diff = make_diffusion()
    pts = MU + S * torch.randn(2000, 1, 1, 1, generator=torch.Generator().manual_seed(1))
    x = generate(None, ExactScoreSampler(diff, steps=100, clip_denoised=False, points=pts), (1, 1, 1), 800, 0, 800, CPU).double()
    # 800 samples: standard errors 0.018 (mean) and 0.0125 (variance)
    assert float(x.mean()) == pytest.approx(float(pts.mean()), abs=0.06)
    assert float(x.var()) == pytest.approx(float(pts.double().var()), abs=0.04)


def test_exact_score_sampler_copies_training_points_below_t_C() -> None:
    """Five points in d = 16: every sample ends on a training point, and below the collapse time
    the trajectory's x̂_0 already sits on the point it ends on (above it, on none)."""
    diff = make_diffusion()
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(5, 1, 4, 4, generator=g) * 2 - 1
    flat = pts.flatten(1).double()
    t_c = theory.collapse_time_isotropic(5, 16, float(flat.var(0).mean()))
    assert 0.3 < t_c < 0.5
    seen: list[tuple[float, torch.Tensor]] = []
    ts = diff.schedule.ou_times

    def record(i: int, k: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        seen.append((float(ts[k]), x0.flatten(1).double().clone()))

    sampler = ExactScoreSampler(diff, steps=100, clip_denoised=False, points=pts)
    out = sampler.sample(None, torch.randn(64, 1, 4, 4, generator=g), StackedRandomGenerator(CPU, range(64)), record)
    d_end = ((out.flatten(1).double()[:, None] - flat[None]) ** 2).sum(-1).sqrt()
    assert float(d_end.min(1).values.max()) < 1e-5  # copies, to float32 precision
    final = d_end.argmin(1)
    assert len(final.unique()) >= 4  # copies of different points, not one attractor
    for t, x0 in seen:
        d = ((x0[:, None] - flat[None]) ** 2).sum(-1).sqrt()
        committed = float((d.argmin(1) == final).float().mean())  # x̂_0 nearest to the point it ends on
        on_final = float((d.gather(1, final[:, None])[:, 0] < 0.05).float().mean())  # x̂_0 is that point
        if t < 0.3 * t_c:
            assert committed >= 0.95, t
        if t < 0.1 * t_c:
            assert on_final >= 0.95, t
        if t > 4 * t_c:  # not yet committed: near chance (1/5), never on a point
            assert committed <= 0.4 and on_final == 0.0, t


def test_registered_and_configured() -> None:
    for name in ("euler_maruyama", "pf_ode", "exact_score"):
        cfg = compose_config("sample", [f"sampler={name}"])
        assert cfg.sampler.name == name and name in SAMPLERS
    diff = make_diffusion(T=100)
    assert isinstance(build_sampler(compose_config("sample", ["sampler=pf_ode"]).sampler, diff), ProbabilityFlowSampler)
    pts = torch.zeros(3, 1, 2, 2)
    assert isinstance(build_sampler(compose_config("sample", ["sampler=exact_score"]).sampler, diff, points=pts), ExactScoreSampler)
    with pytest.raises(ConfigError, match="sampler=exact_score needs training points"):
        build_sampler(compose_config("sample", ["sampler=exact_score"]).sampler, diff)
    with pytest.raises(ConfigError, match="samples have 16 values but the training points 4"):
        ExactScoreSampler(diff, points=pts).sample(None, torch.zeros(1, 1, 4, 4), StackedRandomGenerator(CPU, [0]))
