"""What a speed benchmark divides by: FLOPs counted over the real work, and the machine's peak.

Used by ``scripts/benchmark.py`` (and tested in ``tests/test_benchmark_flops.py``), so that every
"fraction of peak" it reports is achieved FLOP/s over a peak the same machine was measured to reach:

- :func:`count_flops` runs a callable (a whole training step: forward, loss, backward) under
  ``torch.utils.flop_counter.FlopCounterMode`` and returns the FLOPs of its matrix products,
  convolutions and attention (a multiply-add counts 2; element-wise work is not counted). The CPU's
  fused attention kernel, which torch's table leaves out, is counted like the other SDPA kernels.
- :func:`gemm_gflops` / :func:`measured_peak` time a square matrix product large enough to saturate
  the cores (best of a few), per precision: the measured peak.
- :func:`machine_peak` measures every precision of a device at once (TF32 on CUDA as its own);
  :func:`time_it` times repeated calls (:class:`Timing`: median and spread of the repeats).
- :func:`simd_peak` is the cross-check from the data sheet: cores x clock x FLOPs per cycle, from the
  CPU's flags, with its assumptions spelled out.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward_flops(
    grad_out_shape, query_shape, key_shape, value_shape, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# torch's FLOP table has every SDPA kernel but the CPU's flash kernel, which the U-Net's attention uses
# on a CPU: counted with the same formulas as the other kernels.
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops,
}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of the matrix products, convolutions and attention that one call of ``fn`` runs.

    Forward and backward are both counted when ``fn`` runs both (a training step); a multiply-add
    is 2 FLOPs. Element-wise work (norms, activations, the optimizer) is not counted.
    """
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        fn()
    return int(counter.get_total_flops())


def linear_flops(batch: int, n_in: int, n_out: int, bias: bool = True, input_grad: bool = True) -> int:
    """Closed form of a Linear layer's forward + backward FLOPs on ``batch`` rows (2 per multiply-add).

    Forward x @ W^T: 2 b n_in n_out. Backward: the weight gradient, another 2 b n_in n_out, and the
    input gradient, 2 b n_in n_out when the input needs one. The bias adds no multiply and is not counted.
    """
    del bias
    return 2 * batch * n_in * n_out * (3 if input_grad else 2)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_gflops(
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    n: int = 4096,
    repeats: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """GFLOP/s of an n x n by n x n matrix product (2 n^3 FLOPs): the best of ``repeats`` timed calls after one warm-up."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    sync(device)
    best = math.inf
    for _ in range(repeats):
        t0 = clock()
        a @ b
        sync(device)
        best = min(best, clock() - t0)
    return 2 * n**3 / max(best, 1e-9) / 1e9


def measured_peak(
    device: torch.device,
    precisions: tuple[str, ...] = ("fp32", "bf16"),
    n: int = 4096,
    repeats: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """GFLOP/s of the best large matrix product per precision: the ceiling the fractions are taken of."""
    return {p: gemm_gflops(device, DTYPES[p], n, repeats, clock) for p in precisions}


def merge_peaks(*peaks: dict[str, float]) -> dict[str, float]:
    """The highest of several measurements of the peak, per precision (the probes at start and end)."""
    out: dict[str, float] = {}
    for peak in peaks:
        for k, v in peak.items():
            out[k] = max(out.get(k, 0.0), v)
    return out


def cpu_info() -> dict[str, Any]:
    """Model name, flags and nominal clock from /proc/cpuinfo (empty where it cannot be read)."""
    info: dict[str, Any] = {"model": None, "flags": [], "mhz": None}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and info["model"] is None:
                info["model"] = value.strip()
            elif key == "flags" and not info["flags"]:
                info["flags"] = value.split()
            elif key == "cpu MHz" and info["mhz"] is None:
                info["mhz"] = float(value)
    return info


CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")  # the flags the peaks depend on


def machine_info(device: torch.device, clock: str) -> dict[str, Any]:
    """What a benchmark's numbers were measured on.

    Args:
        device: the device it ran on.
        clock: the clock of its timed sections (``wall`` or ``cpu``).
    """
    info = cpu_info()
    return {
        "cpu": info["model"] or platform.processor() or platform.machine(),
        "cpu_flags": [f for f in CPU_FLAGS if f in info["flags"]],
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "clock": clock,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def simd_peak(flags: list[str] | set[str], cores: int, ghz: float) -> dict[str, Any]:
    """The data-sheet peak: cores x clock x FLOPs per cycle and core, per precision, with the assumptions.

    fp32: SIMD lanes (16 with avx512f, 8 with avx2, 4 otherwise) x 2 FMA units x 2 FLOPs per FMA.
    bf16: AMX (amx_bf16) 1,024 FLOPs per cycle and core (one TDPBF16PS: a 16x16 fp32 tile, 32-deep, in
    16 cycles); avx512_bf16 (VDPBF16PS) twice the fp32 rate; otherwise the fp32 rate.
    """
    have = set(flags)
    lanes = 16 if "avx512f" in have else 8 if "avx2" in have else 4
    fp32_per_cycle = lanes * 2 * 2
    if "amx_bf16" in have:
        bf16_per_cycle, bf16_how = 1024, "AMX-BF16: 1,024 FLOPs per cycle and core"
    elif "avx512_bf16" in have:
        bf16_per_cycle, bf16_how = 2 * fp32_per_cycle, "AVX512-BF16: twice the fp32 rate"
    else:
        bf16_per_cycle, bf16_how = fp32_per_cycle, "no bf16 instructions: the fp32 rate"
    return {
        "cores": cores,
        "ghz": ghz,
        "fp32_flops_per_cycle": fp32_per_cycle,
        "bf16_flops_per_cycle": bf16_per_cycle,
        "fp32": cores * ghz * fp32_per_cycle,
        "bf16": cores * ghz * bf16_per_cycle,
        "assumes": (
            f"{lanes} fp32 lanes ({'avx512f' if lanes == 16 else 'avx2' if lanes == 8 else 'sse'}) x 2 FMA units x 2 FLOPs per FMA; "
            f"{bf16_how}; the nominal clock of /proc/cpuinfo ({ghz:.2f} GHz), no turbo; {cores} core(s) = the torch threads"
        ),
    }


def cpu_simd_peak(threads: int | None = None) -> dict[str, Any] | None:
    """:func:`simd_peak` of this CPU with one core per torch thread (None without a clock to read)."""
    info = cpu_info()
    if not info["mhz"]:
        return None
    cores = min(threads or torch.get_num_threads(), os.cpu_count() or 1)
    return simd_peak(info["flags"], cores, info["mhz"] / 1000)


def fraction_of_peak(flops_per_item: float, items_per_s: float, peak_gflops: float) -> tuple[float, float]:
    """Achieved GFLOP/s (FLOPs per item x items per second) and its fraction of ``peak_gflops``."""
    gflops = flops_per_item * items_per_s / 1e9
    return gflops, gflops / peak_gflops


def machine_peak(device: torch.device, n: int, clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """GFLOP/s of the best n x n matrix product per precision: fp32 and bf16; on CUDA also fp16 and tf32
    (fp32 with TF32 matrix products; the fp32 peak is taken with TF32 off).

    Args:
        device: where to multiply.
        n: the side of the square matrices.
        clock: the clock the products are timed by.
    """
    if device.type != "cuda":
        return measured_peak(device, ("fp32", "bf16"), n, 3, clock)
    prev = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        out = measured_peak(device, ("fp32", "bf16", "fp16"), n, 3, clock)
        torch.backends.cuda.matmul.allow_tf32 = True
        out["tf32"] = measured_peak(device, ("fp32",), n, 3, clock)["fp32"]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    return out


@dataclass
class Timing:
    """Seconds per iteration of each timed repeat.

    Args:
        per_iter: one entry per repeat.
    """

    per_iter: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.per_iter)

    @property
    def spread(self) -> float:
        """(max - min) / median of the repeats."""
        return (max(self.per_iter) - min(self.per_iter)) / self.median


def time_it(
    fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int, iters: int, clock: Callable[[], float] = time.perf_counter
) -> Timing:
    """Warm-up calls, then ``repeats`` timed blocks of ``iters`` calls each.

    Args:
        fn: the work of one iteration.
        device: its device (CUDA is synchronised before each reading of the clock).
        warmup: untimed calls first.
        repeats: timed blocks.
        iters: calls per block.
        clock: wall (``time.perf_counter``) or process CPU time (``time.process_time``).
    """
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(repeats):
        t0 = clock()
        for _ in range(iters):
            fn()
        sync(device)
        out.append((clock() - t0) / iters)
    return Timing(out)
