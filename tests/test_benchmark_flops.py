"""``ddpm/benchmarking.py`` and the fractions ``scripts/benchmark.py`` reports: FLOPs counted over the
real forward and backward match closed forms, and no reported fraction of the peak exceeds 1."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ddpm.benchmarking import count_flops, fraction_of_peak, linear_flops, measured_peak, merge_peaks, simd_peak

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("input_grad", [True, False])
def test_linear_forward_and_backward_flops_are_the_closed_form(input_grad: bool) -> None:
    layer = torch.nn.Linear(24, 10)
    x = torch.randn(7, 24, requires_grad=input_grad)
    assert count_flops(lambda: layer(x).square().sum().backward()) == linear_flops(7, 24, 10, input_grad=input_grad)
    # forward only: one product, 2 FLOPs per multiply-add
    with torch.no_grad():
        assert count_flops(lambda: layer(x)) == 2 * 7 * 24 * 10


def test_conv_forward_and_backward_flops_are_the_closed_form() -> None:
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    fwd = 2 * 2 * 16 * 16 * 8 * 3 * 3 * 3  # 2 x batch x output pixels x out channels x (in channels x kernel)
    assert count_flops(lambda: conv(x).sum().backward()) == 3 * fwd  # forward, input gradient, weight gradient


def test_the_cpu_attention_kernel_is_counted() -> None:
    """The U-Net's attention runs the CPU flash kernel, which torch's FLOP table leaves out."""
    b, h, s, d = 2, 4, 64, 32
    q = torch.randn(b, h, s, d, requires_grad=True)
    fwd = 2 * (2 * b * h * s * s * d)  # q k^T and (attention) v
    with torch.no_grad():
        assert count_flops(lambda: F.scaled_dot_product_attention(q, q, q)) == fwd
    # backward: dv, dp, dq, dk (4 products) and the forward's recomputed q k^T: 2.5x the forward
    assert count_flops(lambda: F.scaled_dot_product_attention(q, q, q).sum().backward()) == fwd + 5 * fwd // 2


def test_simd_peak_spells_out_its_assumptions() -> None:
    avx512 = simd_peak(["avx512f", "fma", "amx_bf16"], cores=2, ghz=2.5)
    assert avx512["fp32_flops_per_cycle"] == 16 * 2 * 2
    assert avx512["fp32"] == pytest.approx(2 * 2.5 * 64)
    assert avx512["bf16"] == pytest.approx(2 * 2.5 * 1024)
    assert "2 FMA units" in avx512["assumes"] and "no turbo" in avx512["assumes"]
    assert simd_peak(["avx2", "fma"], cores=1, ghz=3.0)["fp32"] == pytest.approx(3.0 * 8 * 2 * 2)
    assert merge_peaks({"fp32": 10.0, "bf16": 5.0}, {"fp32": 8.0, "bf16": 7.0}) == {"fp32": 10.0, "bf16": 7.0}


def test_a_training_step_of_the_tiny_unet_stays_below_the_measured_peak() -> None:
    """The benchmark's fraction: FLOPs of a real step (forward, loss, backward) x steps/s over the best GEMM."""
    from conftest import compose_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _fraction_of_a_tiny_step(compose_config)
    finally:
        torch.set_num_threads(threads)


def _fraction_of_a_tiny_step(compose_config) -> None:
    import time

    from ddpm.diffusion import GaussianDiffusion
    from ddpm.models import build_model
    from ddpm.schedules import NoiseSchedule

    cfg = compose_config("train", ["model=tiny", "dataset=mnist"])
    model = build_model(cfg.model, 32, 1)
    diffusion = GaussianDiffusion(NoiseSchedule.from_config(cfg.schedule), "eps")
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(8, 1, 32, 32, generator=g) * 2 - 1

    def step() -> None:
        k = diffusion.sample_timesteps(8, g, torch.device("cpu"))
        diffusion.loss(model, x0, k, torch.randn(x0.shape, generator=g)).backward()

    flops = count_flops(step)
    forward = count_flops(lambda: model(x0, torch.zeros(8, dtype=torch.long)))
    # backward: a weight gradient per layer, an input gradient but for the first layer (below 3x the forward),
    # and for attention 2.5x its forward (above): counted, not assumed
    assert 2.5 * forward < flops < 3.5 * forward
    peak = measured_peak(torch.device("cpu"), ("fp32",), n=1024, repeats=2)["fp32"]
    step()
    t0 = time.perf_counter()
    for _ in range(3):
        step()
    per_step = (time.perf_counter() - t0) / 3
    gflops, frac = fraction_of_peak(flops / 8, 8 / per_step, peak)
    assert 0 < frac <= 1, f"{gflops:.1f} GFLOP/s against a measured peak of {peak:.1f}"
