"""ddpm-visualize: quality metrics, start steps from k and t, schedule curves, end to end."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf
from PIL import Image

import ddpm.pretrained
from ddpm.config import SamplerConfig
from ddpm.data import load_dataset
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import ConfigError
from ddpm.generate import denoise_from, noise_to_step
from ddpm.pretrained import load_pretrained, real_images
from ddpm.quality import mse_per_image, ssim_per_image
from ddpm.samplers import build_sampler, make_eps_fn
from ddpm.schedules import NoiseSchedule
from ddpm.visualize import resolve_starts, sampler_config, visualize
from ddpm.visualize.plots import plot_schedules, schedule_curves


def test_ssim_and_mse_of_an_image_with_itself() -> None:
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    np.testing.assert_allclose(ssim_per_image(x, x), 1.0, atol=1e-12)
    np.testing.assert_array_equal(mse_per_image(x, x), 0.0)


def test_mse_and_ssim_values() -> None:
    a = torch.zeros(2, 3, 16, 16)
    np.testing.assert_allclose(mse_per_image(a, a + 0.2), 0.04, rtol=1e-6)
    # Constant images: σ = 0, so SSIM = (2 c1 c2 + C1) / (c1² + c2² + C1) with C1 = (0.01 L)², and
    # L = data_range = 2 for the [-1, 1] range (L = 1 would give 0.0099 for the second pair).
    c = torch.ones(1, 1, 16, 16)
    assert ssim_per_image(0.1 * c, 0 * c)[0] == pytest.approx(0.0004 / 0.0104, rel=1e-6)
    assert ssim_per_image(0.5 * c, -0.5 * c)[0] == pytest.approx(-0.4996 / 0.5004, rel=1e-6)
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    z = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    s1, s2 = ssim_per_image(x, x + 0.05 * z), ssim_per_image(x, x + 0.3 * z)
    assert np.all((s2 < s1) & (s1 < 1.0))


def linear(T: int = 1000) -> NoiseSchedule:
    return NoiseSchedule.from_config(OmegaConf.create({"name": "linear", "T": T, "beta_start": 1e-4, "beta_end": 0.02}))


def test_resolve_starts_from_steps_and_times() -> None:
    s = linear()
    starts = resolve_starts([500, 10], [0.5, 1.0], s)
    ou = s.ou_times
    k_half = int(torch.nonzero(s.alphas_cumprod <= math.exp(-1.0))[0])  # first k with ᾱ_k <= e^{-2t}
    assert [st.step for st in starts] == sorted({10, 500, k_half, int(torch.nonzero(s.alphas_cumprod <= math.exp(-2.0))[0])})
    for st in starts:
        assert st.ou_time == pytest.approx(float(ou[st.step]))
        if st.requested_time is not None:
            assert float(ou[st.step - 1]) < st.requested_time <= st.ou_time
    assert resolve_starts([k_half], [0.5], s)[0].requested_time == 0.5  # a step and a time landing together: one start
    with pytest.raises(ConfigError, match="outside"):
        resolve_starts([1000], [], s)
    with pytest.raises(ConfigError, match="beyond the schedule's end"):
        resolve_starts([], [5.2], s)  # the linear T=1000 schedule ends at t = 5.0589


def test_schedule_curves_closed_forms(tmp_path: Path) -> None:
    curves = schedule_curves(["linear", "cosine", "quadratic"], 1000)
    assert curves["linear"]["ou_time"][-1] == pytest.approx(5.0589, abs=1e-4)
    for c in curves.values():
        np.testing.assert_allclose(c["ou_time"], -0.5 * np.log(c["alpha_bar"]), rtol=1e-12)
        np.testing.assert_allclose(c["log_snr"], np.log(c["alpha_bar"] / (1 - c["alpha_bar"])), rtol=1e-9, atol=1e-9)
    # cosine (s = 0.008): ᾱ_k = f(k+1)/f(0) with f(u) = cos²((u/T + s)/(1 + s) π/2) while β is unclipped
    f = lambda u: math.cos((u / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert curves["cosine"]["alpha_bar"][499] == pytest.approx(f(500) / f(0), rel=1e-9)
    # quadratic: √β linear from 1e-2 to √0.02, so β_0 = 1e-4 and ᾱ_0 = 1 - 1e-4
    assert curves["quadratic"]["alpha_bar"][0] == pytest.approx(1 - 1e-4)
    path = plot_schedules(curves, tmp_path / "s.png", current="linear", marks=[10, 500])
    assert Image.open(path).size == (1300, 380)


def vis_cfg(ckpt: Path, data_dir: Path, cache: Path, **extra):
    base = {
        "ckpt": str(ckpt),
        "paths.data_dir": str(data_dir),
        "paths.cache_dir": str(cache),
        "steps": "[5,40]",
        "times": "[0.2]",
        "num_images": 3,
        "strip_images": 2,
        "strip_frames": 4,
        "progress": False,
        "tensorboard": True,
        "sampler": "ddpm",
        "sampler.steps": 10,  # respaced ancestral sampling: 10 evaluations, or k + 1 below that
    }
    base.update(extra)
    return compose_config("visualize", [f"{k}={v}" for k, v in base.items()])


def test_visualize_end_to_end(tiny_ckpt: Path, data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "vis"
    cfg = vis_cfg(tiny_ckpt, data_dir, tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="ddpm.visualize"):
        result = visualize(cfg, out)
    pre = load_pretrained(tiny_ckpt)
    sched = pre.diffusion.schedule
    k_t = int(sched.time_to_step(0.2))
    steps = sorted({5, 40, k_t})
    # sampler.steps=10 is capped at the k + 1 steps below each start, with a warning for each start it caps
    capped = [
        f"sampler.steps=10 exceeds the {k + 1} steps from k={k} down to 0: that start is denoised in {k + 1} evaluations"
        for k in steps
        if k + 1 < 10
    ]
    assert capped and [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == capped
    assert [r["step"] for r in result["rows"]] == steps
    for r in result["rows"]:
        assert r["ou_time"] == pytest.approx(float(sched.ou_times[r["step"]]))
        assert r["alpha_bar"] == pytest.approx(float(sched.alphas_cumprod[r["step"]]))
        assert r["evaluations"] == min(10, r["step"] + 1)
        assert r["requested_time"] == (0.2 if r["step"] == k_t else None)
    # the numbers are reproducible from the public pieces: same images, same noise, same sampler
    x0 = real_images(cfg, pre, 3, "test", 0)
    eps_fn = make_eps_fn(pre.model, pre.diffusion)
    for r in result["rows"]:
        x_k = noise_to_step(pre.diffusion, x0, r["step"], 0)
        den = denoise_from(eps_fn, build_sampler(sampler_config(cfg.sampler, r["step"]), pre.diffusion, max_step=r["step"]), x_k, 0)
        assert r["mse_noised"] == pytest.approx(float(mse_per_image(x_k, x0).mean()), rel=1e-5)
        assert r["mse_denoised"] == pytest.approx(float(mse_per_image(den, x0).mean()), rel=1e-4)
        assert r["ssim_denoised"] == pytest.approx(float(ssim_per_image(den, x0).mean()), rel=1e-4)
        assert r["mse_denoised"] < r["mse_noised"]  # even a barely trained model removes noise
    traj = result["trajectory"]["40"]
    assert traj["steps"] == list(range(40, 0, -4)) and len(traj["mse"]) == 10  # leading spacing 0, 4, ..., 36 moved up to start at 40
    # CSV = JSON
    with open(out / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert [int(r["step"]) for r in table] == steps
    assert [float(r["ssim_denoised"]) for r in table] == pytest.approx([r["ssim_denoised"] for r in result["rows"]])
    assert json.loads((out / "metrics.json").read_text())["rows"] == result["rows"]
    for name in ("final_vs_start", "trajectory", "x0_strip", "schedules", "denoise_overview", *(f"denoise_k{k:04d}" for k in steps)):
        assert Image.open(out / f"{name}.png").size[0] > 200
    # TensorBoard: one final/... point per start step
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    events = acc.Scalars("final/mse_denoised")
    assert [e.step for e in events] == steps
    assert [e.value for e in events] == pytest.approx([r["mse_denoised"] for r in result["rows"]], rel=1e-6)
    assert "plots/x0_strip" in acc.Tags()["images"]


def test_visualize_clamps_print_a_warning(
    tiny_ckpt: Path, data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each value ddpm-visualize clamps (or merges) says so in one warning line, and the run goes on."""

    def two_test_images(*args: object, **kwargs: object):  # a test split of 2 images
        data = load_dataset(*args, **kwargs)
        return dataclasses.replace(data, images=data.images[:2], labels=data.labels[:2]) if args[3] == "test" else data

    monkeypatch.setattr(ddpm.pretrained, "load_dataset", two_test_images)
    t3 = float(load_pretrained(tiny_ckpt).diffusion.schedule.ou_times[3])  # lands on step 3
    over = {"steps": "[3,3]", "times": f"[{t3!r}]", "num_images": 3, "strip_images": 5, "strip_frames": 10}
    cfg = vis_cfg(tiny_ckpt, data_dir, tmp_path / "cache", tensorboard=False, schedules="[linear]", **over)
    with caplog.at_level(logging.WARNING, logger="ddpm.visualize"):
        result = visualize(cfg, tmp_path / "vis")
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "steps=[3, 3] holds k=3 twice: that start is denoised once",
        f"time t={t3:g} lands on step k=3 (t_k={t3:.4f}), as does k=3 of steps=[3, 3]: that start is denoised once",
        "sampler.steps=10 exceeds the 4 steps from k=3 down to 0: that start is denoised in 4 evaluations",
        "num_images=3 exceeds the 2 images of the test split: using 2",
        "strip_images=5 exceeds the 2 images: the x̂_0 strip shows 2",
        "strip_frames=10 exceeds the 4 evaluations from k=3: the x̂_0 strip shows 4 frames",
    ]
    assert result["num_images"] == 2 and [(r["step"], r["evaluations"], r["requested_time"]) for r in result["rows"]] == [(3, 4, t3)]
    assert len(result["per_image"]["3"]["mse_denoised"]) == 2
    # the strip: 2 images x (x_k, x̂_0) = 4 rows of 4 frames, at 0.9 inch (90 px) per image plus labels
    assert Image.open(tmp_path / "vis" / "x0_strip.png").size == (160 + 90 * 4, 40 + 90 * 4 + 30)


def test_visualize_rejects_bad_starts(tiny_ckpt: Path, data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="beyond the schedule's end"):
        visualize(vis_cfg(tiny_ckpt, data_dir, tmp_path / "cache", times="[1.0]"), tmp_path / "a")  # T=100 ends at t = 0.506
    with pytest.raises(ConfigError, match="steps="):
        visualize(vis_cfg(tiny_ckpt, data_dir, tmp_path / "cache", steps="[]", times="[]"), tmp_path / "b")
    assert not (tmp_path / "a" / "metrics.json").exists()


def test_reverse_noise_is_independent_of_the_forward_noise() -> None:
    """The first reverse noise of image i must not be the ε that noised it (that inflated the MSE)."""
    sched = linear(100)
    diffusion = GaussianDiffusion(sched, "eps")
    k, seed, n = 30, 7, 3
    x0 = torch.zeros(n, 1, 16, 16)
    x_k = noise_to_step(diffusion, x0, k, seed)  # from x_0 = 0: x_k = √(1-ᾱ_k) ε
    eps = x_k / float((1 - sched.alphas_cumprod[k]) ** 0.5)
    states: list[torch.Tensor] = []
    sampler = build_sampler(OmegaConf.structured(SamplerConfig(name="ddpm")), diffusion, max_step=k)
    # ε̂ = 0 and x_k -> 0 before the first move: x_{k-1} is then the first reverse noise, scaled by its σ.
    out = denoise_from(
        lambda x, kk: torch.zeros_like(x), sampler, torch.zeros_like(x_k), seed, callback=lambda i, kk, x, x0h: states.append(x)
    )
    assert out.shape == x_k.shape
    z = states[1]
    for i in range(n):
        corr = torch.corrcoef(torch.stack([z[i].flatten(), eps[i].flatten()]))[0, 1]
        assert abs(float(corr)) < 0.2, f"image {i}: reverse noise correlates {float(corr):.3f} with its forward ε"
        other = torch.corrcoef(torch.stack([z[i].flatten(), eps[(i + 1) % n].flatten()]))[0, 1]
        assert abs(float(other)) < 0.2  # nor another image's ε (seed + i + 1)
    # the reverse noise stays reproducible per image, whatever the batch
    states_one: list[torch.Tensor] = []
    denoise_from(
        lambda x, kk: torch.zeros_like(x),
        sampler,
        torch.zeros_like(x_k[1:2]),
        seed + 1,
        callback=lambda i, kk, x, x0h: states_one.append(x),
    )
    torch.testing.assert_close(states_one[1][0], z[1])


def test_visualize_with_the_default_sampler(tiny_ckpt: Path, data_dir: Path, tmp_path: Path) -> None:
    """sde_dpm_solver, the default of every command, starts exactly at each k with at most k + 1 evaluations."""
    over = {"ckpt": tiny_ckpt.parent.parent, "paths.data_dir": data_dir, "paths.cache_dir": tmp_path / "cache", "steps": "[3,60]"}
    over.update({"times": "[]", "num_images": 2, "strip_images": 1, "strip_frames": 3, "progress": False, "schedules": "[linear]"})
    cfg = compose_config("visualize", [f"{k}={v}" for k, v in over.items()])
    assert cfg.sampler.name == "sde_dpm_solver" and cfg.runtime.device == "auto"
    result = visualize(cfg, tmp_path / "vis")
    rows = {r["step"]: r for r in result["rows"]}
    assert rows[3]["evaluations"] == 4 and rows[60]["evaluations"] == 20
    assert result["trajectory"]["60"]["steps"][0] == 60  # the reverse process starts where the images were noised
    assert all(r["mse_denoised"] < r["mse_noised"] for r in rows.values())
