"""Timestep grids of the samplers: every spacing, every T and step count, gives distinct steps
that start from the top of the schedule (issue 22: trailing's float grid and leading's low start)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ddpm.diffusion import GaussianDiffusion
from ddpm.evaluate.denoising import denoising_quality, denoising_sampler
from ddpm.samplers.base import SPACINGS, timestep_sequence
from ddpm.schedules import NoiseSchedule

# All T up to 300 with all step counts, and large T with the counts that broke the float grid.
LARGE = {1000: [25, 50, 61, 100, 103, 121, 250, 333, 334, 500, 600, 999, 1000], 4000: [7, 1000, 1333, 1334, 2001, 3999]}


def check_grid(T: int, steps: int, spacing: str) -> None:
    seq = timestep_sequence(T, steps, spacing)
    a = np.asarray(seq)
    assert all(type(k) is int for k in seq), (T, steps, spacing)
    assert len(a) == steps and a[0] >= 0 and a[-1] == T - 1, (T, steps, spacing, seq[:3], seq[-3:])
    assert (np.diff(a) > 0).all(), (T, steps, spacing)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_every_grid_has_steps_distinct_steps_ending_at_the_top(spacing: str) -> None:
    for T in range(1, 301):
        for steps in range(1, T + 1):
            check_grid(T, steps, spacing)
    for T, counts in LARGE.items():
        for steps in counts:
            check_grid(T, steps, spacing)


def test_grids_match_diffusers_where_its_float_grid_is_sound() -> None:
    # leading: a stride of T // steps, moved up so that its top is T - 1
    assert timestep_sequence(100, 10, "leading") == list(range(9, 100, 10))
    assert timestep_sequence(1000, 600, "leading") == list(range(400, 1000))
    # trailing (Lin et al. 2023): round(T - i T / steps) - 1, rounding half to even as numpy does
    assert timestep_sequence(1000, 50, "trailing") == list(range(19, 1000, 20))
    assert timestep_sequence(100, 8, "trailing") == [11, 24, 37, 49, 61, 74, 87, 99]  # 12.5, 37.5, 62.5, 87.5 round to even
    assert timestep_sequence(10, 4, "linspace") == [0, 3, 6, 9]


@pytest.mark.parametrize(("T", "steps"), [(201, 25), (201, 50), (201, 100), (1000, 61), (1000, 103), (1000, 121)])
def test_trailing_grids_that_the_float_grid_broke(T: int, steps: int) -> None:
    seq = timestep_sequence(T, steps, "trailing")
    assert len(seq) == steps and seq[-1] == T - 1 and seq[0] == round(T / steps) - 1


def diffusion(T: int = 1000) -> GaussianDiffusion:
    return GaussianDiffusion(NoiseSchedule.from_config(OmegaConf.create({"name": "linear", "T": T, "beta_start": 1e-4, "beta_end": 0.02})))


@pytest.mark.parametrize(("name", "steps"), [("ddim", 50), ("ddpm", 25), ("ddpm", 50), ("ddpm", 100)])
def test_denoising_metric_builds_its_grid_at_the_default_k(name: str, steps: int) -> None:
    """ddpm-evaluate's denoising at k = 200 runs trailing spacing over T' = 201 steps."""
    cfg = OmegaConf.create({"name": name, "steps": steps, "eta": 0.0, "spacing": "leading", "clip_denoised": True})
    sampler = denoising_sampler(cfg, diffusion(), 200)
    assert len(sampler.timesteps) == steps and sampler.timesteps[-1] == 200
    assert sampler.timesteps[0] == round(201 / steps) - 1


def test_denoising_quality_runs_at_k_200_with_50_ddim_steps() -> None:
    diff = diffusion()
    cfg = OmegaConf.create({"name": "ddim", "steps": 50, "eta": 0.0, "spacing": "leading", "clip_denoised": True})
    x0 = torch.zeros(2, 1, 4, 4)
    out = denoising_quality(lambda x, k: torch.zeros_like(x), diff, cfg, x0, [200], seed=0)
    assert out["steps"]["200"]["evaluations"] == 50 and out["spacing"] == "trailing"


def test_sampler_from_pure_noise_starts_at_the_top() -> None:
    """sampler=ddpm sampler.steps=600 with T=1000 starts x ~ N(0, I) at k = 999, not at k = 599."""
    from ddpm.samplers import DDIMSampler, DDPMSampler

    diff = diffusion()
    for sampler in (DDPMSampler(diff, steps=600), DDIMSampler(diff, steps=50), DDPMSampler(diff, steps=7, spacing="trailing")):
        assert sampler.timesteps[-1] == 999
