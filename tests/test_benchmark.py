"""``scripts/benchmark.py``: the memory-format default it measures and the side-by-side report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddpm.runtime import CPU_CHANNELS_LAST_MIN_WIDTH, resolve_memory_format

REPO = Path(__file__).resolve().parents[1]
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    ("flag", "device", "width", "expected"),
    [
        (None, CPU, 16, torch.contiguous_format),  # tiny: channels_last measured slower
        (None, CPU, CPU_CHANNELS_LAST_MIN_WIDTH, torch.channels_last),  # mini
        (None, CPU, 128, torch.channels_last),
        (None, CUDA, 128, torch.contiguous_format),  # fp32 on CUDA: the fp16/bf16 presets opt in
        (True, CPU, 16, torch.channels_last),
        (False, CPU, 128, torch.contiguous_format),
        (True, CUDA, 16, torch.channels_last),
    ],
)
def test_memory_format_default_by_device_and_width(flag, device, width, expected) -> None:
    assert resolve_memory_format(flag, device, width) == expected


@pytest.mark.slow
def test_quick_benchmark_reports_defaults_and_both_ratios(tmp_path) -> None:
    pytest.importorskip("diffusers")
    out = tmp_path / "bench.json"
    # one run of the script for every check (it measures the peak with a small product: --gemm-n 1024)
    args = ["--quick", "--presets", "tiny,mini", "--compare", "mini", "--variants", "bf16", "--threads", "1", "--clock", "cpu"]
    args += ["--train-batches", "4", "--sample-batch", "4", "--gemm-n", "1024", "--out", str(out)]
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "benchmark.py"), *args], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = {m["model"]: m for m in result["models"]}
    assert rows["ddpm/tiny"]["variant"] == "fp32"
    assert rows["ddpm/mini"]["variant"] == "fp32 channels_last"
    assert rows["ddpm/tiny"]["params"] == 177_505 and rows["ddpm/mini"]["params"] == 1_140_929
    vs = result["vs_diffusers"]
    assert abs(vs["params_diffusers"] / vs["params_ours"] - 1) < 0.10
    ours = rows["ddpm/mini"]
    twins = [m for m in result["models"] if m["model"] == "diffusers/mini"]
    assert [m["variant"] for m in twins] == ["fp32", "fp32 channels_last"]
    assert vs["train_ratio"] == pytest.approx(ours["train"]["4"]["images_per_s"] / twins[0]["train"]["4"]["images_per_s"])
    assert vs["same_format"]["sample_ratio"] == pytest.approx(
        ours["sample"]["images_steps_per_s"] / twins[1]["sample"]["images_steps_per_s"]
    )
    # Achieved GFLOP/s = FLOPs per image (counted over a real training step) x images/s.
    t = ours["train"]["4"]
    assert t["gflops"] == pytest.approx(ours["train_gflop_per_image"] * t["images_per_s"])
    printed = proc.stdout
    assert "with diffusers also in fp32 channels_last: train ratio" in printed
    # every fraction is of its own precision's measured peak, and none is above it
    rows = [*result["models"], *result["variants"]]
    fractions = [(m["variant"], t["frac_peak"]) for m in rows for t in [*m["train"].values(), *([m["sample"]] if m["sample"] else [])]]
    assert len(fractions) >= 4 and all(0 < f <= 1 for _, f in fractions), fractions
    assert {m["precision"] for m in rows} == {"fp32", "bf16"}
    measured = result["peak"]["measured"]
    assert measured["fp32"] == max(result["peak"]["start"]["fp32"], result["peak"]["end"]["fp32"])
    assert t["frac_peak"] == pytest.approx(t["gflops"] / measured["fp32"])
    assert "data-sheet peak" in printed and "measured / data sheet" in printed
