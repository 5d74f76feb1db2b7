"""GaussianDiffusion's training loss: weightings against their formulas, log-normal step sampling."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm.diffusion import EDM_SIGMA_DATA, GaussianDiffusion
from ddpm.errors import ConfigError
from ddpm.schedules import NoiseSchedule, make_betas

SCHEDULE = NoiseSchedule(make_betas("linear", 1000))
K = torch.tensor([0, 10, 100, 300, 600, 999])


def snr(k: torch.Tensor) -> torch.Tensor:
    abar = SCHEDULE.alphas_cumprod[k]
    return abar / (1 - abar)


@pytest.mark.parametrize(
    ("objective", "formula"),
    [
        ("eps", lambda s: torch.clamp(s, max=5.0) / s),  # Hang et al. 2023, Eq. for ε
        ("x0", lambda s: torch.clamp(s, max=5.0)),
        ("v", lambda s: torch.clamp(s, max=5.0) / (s + 1)),
    ],
)
def test_min_snr_weights_match_the_paper(objective: str, formula) -> None:
    d = GaussianDiffusion(SCHEDULE, objective, weighting="min_snr", min_snr_gamma=5.0)
    torch.testing.assert_close(d.loss_weight(K).double(), formula(snr(K)), rtol=1e-5, atol=0)


def test_golden_min_snr_eps_weights() -> None:
    d = GaussianDiffusion(SCHEDULE, "eps", weighting="min_snr")
    w = d.loss_weight(torch.tensor([0, 50, 92, 999])).tolist()
    # 5 / SNR while SNR > 5 (ᾱ_0 = 1 - 1e-4: SNR_0 = 9999), then 1 at high noise.
    assert w == pytest.approx([5.0 / 9999.0, 0.1548969, 0.4959789, 1.0], rel=1e-5)


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_edm_weight_on_the_x0_error_is_lambda_of_sigma(objective: str) -> None:
    """EDM's λ(σ) = (σ² + σ_d²)/(σ σ_d)² on |D - x0|², with σ² = 1/SNR; any objective's weighted
    MSE must equal it once converted to the x̂_0 error."""
    d = GaussianDiffusion(SCHEDULE, objective, weighting="edm")
    s = snr(K)
    sigma2 = 1 / s
    lam = (sigma2 + EDM_SIGMA_DATA**2) / (sigma2 * EDM_SIGMA_DATA**2)
    native = {"eps": s, "x0": torch.ones_like(s), "v": s + 1}[objective]
    torch.testing.assert_close((d.loss_weight(K).double() * native), lam, rtol=1e-4, atol=0)


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_loss_is_the_weighted_x0_error(objective: str) -> None:
    """With a network that makes a known x̂_0 error, every objective's weighted loss is the same
    number: min(SNR, γ) |x̂_0 - x_0|² averaged over pixels and batch."""
    d = GaussianDiffusion(SCHEDULE, objective, weighting="min_snr")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 1, 4, 4, generator=g), torch.randn(6, 1, 4, 4, generator=g)
    err = 0.1 * torch.randn(6, 1, 4, 4, generator=g)

    def model(xk: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        # the output of the objective whose x̂_0 is x0 + err (ε consistent with x_k)
        a = SCHEDULE.alphas_cumprod[k].float().view(-1, 1, 1, 1)
        x0_hat = x0 + err
        eps_hat = (xk - a.sqrt() * x0_hat) / (1 - a).sqrt()
        return {"eps": eps_hat, "x0": x0_hat, "v": a.sqrt() * eps_hat - (1 - a).sqrt() * x0_hat}[objective]

    loss = d.loss(model, x0, K, noise)
    expected = (torch.clamp(snr(K), max=5.0).float() * err.square().flatten(1).mean(1)).mean()
    assert float(loss) == pytest.approx(float(expected), rel=2e-3)


def test_unweighted_loss_is_plain_mse() -> None:
    d = GaussianDiffusion(SCHEDULE, "eps")
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(6, 1, 4, 4, generator=g), torch.randn(6, 1, 4, 4, generator=g)
    loss = d.loss(lambda xk, k: torch.zeros_like(xk), x0, K, noise)
    assert float(loss) == pytest.approx(float(noise.square().mean()), rel=1e-6)


def test_lognormal_steps_follow_the_edm_distribution() -> None:
    d = GaussianDiffusion(SCHEDULE, timestep_sampling="lognormal", p_mean=-1.2, p_std=1.2)
    k = d.sample_timesteps(50_000, torch.Generator().manual_seed(0), torch.device("cpu"))
    log_sigma = (-0.5 * SCHEDULE.log_snr)[k]
    # σ beyond the schedule's range (σ_0 = 0.01, σ_999 = 157) is clamped to the end steps; the
    # bulk of N(-1.2, 1.2²) lies well inside, so its median and quartiles survive.
    q = torch.quantile(log_sigma, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    z = 0.6744897501960817
    assert q.tolist() == pytest.approx([-1.2 - z * 1.2, -1.2, -1.2 + z * 1.2], abs=0.05)
    assert k.min() >= 0 and k.max() <= 999
    # Step 0 takes every ln σ below the midpoint of ln σ_0 and ln σ_1: Φ((mid - P_mean) / P_std).
    table = -0.5 * SCHEDULE.log_snr
    mid = float(table[0] + table[1]) / 2
    expected = 0.5 * math.erfc(-(mid + 1.2) / (1.2 * math.sqrt(2)))
    assert float((k == 0).double().mean()) == pytest.approx(expected, abs=0.0015)


def test_bad_weighting_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="loss weighting"):
        GaussianDiffusion(SCHEDULE, weighting="snr")
    with pytest.raises(ConfigError, match="timestep sampling"):
        GaussianDiffusion(SCHEDULE, timestep_sampling="beta")
    with pytest.raises(ConfigError, match="p_std"):
        GaussianDiffusion(SCHEDULE, p_std=0.0)
