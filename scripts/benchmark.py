#!/usr/bin/env python
"""Speed of the ddpm U-Net, measured side by side with HuggingFace diffusers in one process.

For each model preset at its dataset's resolution: parameters, FLOPs per image of a training step
and of a sampling step (torch's FLOP counter over the real forward and backward, ``ddpm.benchmarking``),
training images/s (``ddpm-train``'s own step: a real ``Trainer``'s ``train_step``, ``ddpm.tools.throughput``)
and sampling images·steps/s (DDIM, inference mode), each as achieved GFLOP/s and as a fraction of the
peak of its precision: the best large matrix product this machine was measured to run (fp32 and
bf16, at the start and at the end), cross-checked against cores x clock x SIMD width. diffusers'
``UNet2DModel`` configured like our ``small`` preset is measured the same way, giving the two
headline ratios ``vs_diffusers.train_ratio`` and ``vs_diffusers.sample_ratio``. Each preset runs
in the memory format ``ddpm-train`` picks by default on the device (channels_last for CPU networks
of 32+ channels); when that is channels_last, diffusers is measured in it too
(``vs_diffusers.same_format``). The effects of channels_last, torch.compile and the precision
presets are measured on ``small``, each set through the ``runtime`` group as the commands set it.
The machinery is ``ddpm.tools.throughput`` (the workloads), ``ddpm.tools.bench_run`` (the rows) and
``ddpm.tools.bench_report`` (the text).

Usage::

    python scripts/benchmark.py --quick                 # < 10 minutes on 2 CPU cores
    python scripts/benchmark.py --out /tmp/bench.json   # full run
    python scripts/benchmark.py --quick --threads 1 --clock cpu --presets tiny,small --train-batches 32 \
        --variants bf16 --out docs/results/benchmark_cpu.json   # the docs' brief run (one core)
    pip install -e ".[bench]"                            # installs diffusers for the comparison

Every number is the median over several timed repeats after warm-up; the spread is
(max - min) / median. A busy machine is detected from the load average at the start and from a
matmul probe repeated at the end, and reported in the table and the JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ddpm.benchmarking import cpu_simd_peak, machine_info, machine_peak, merge_peaks
from ddpm.runtime import resolve_device
from ddpm.tools.bench_report import add_fractions, report
from ddpm.tools.bench_run import Bench, busy, compare_diffusers, measure_variants
from ddpm.tools.throughput import PRESET_DATA, Plan, Workloads, default_variant

# Per-preset measuring effort on a CPU: (warm-up, repeats, iterations per repeat, sampler steps per run).
PLANS = {
    "quick": {
        "tiny": Plan(2, 3, 3, 4),
        "mini": Plan(2, 3, 2, 3),
        "small": Plan(1, 3, 1, 2),
        "base": Plan(1, 2, 1, 1),
        "large": Plan(1, 2, 1, 1),
    },
    "full": {
        "tiny": Plan(3, 5, 5, 8),
        "mini": Plan(3, 5, 3, 6),
        "small": Plan(2, 5, 2, 4),
        "base": Plan(2, 3, 1, 2),
        "large": Plan(1, 3, 1, 2),
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--quick", action="store_true", help="fewer repeats, no `large`, compile measured for sampling only (< 10 min on 2 cores)"
    )
    p.add_argument("--out", type=Path, default=None, help="JSON output (default outputs/benchmark/<timestamp>.json)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--presets", default=None, help="comma-separated model presets (default tiny,mini,small,base[,large])")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    p.add_argument("--no-diffusers", action="store_true", help="skip the diffusers comparison")
    p.add_argument("--no-variants", action="store_true", help="skip channels_last / compile / precision variants")
    p.add_argument(
        "--variants", default=None, help="only these variants of --compare, by name or part of it (e.g. bf16); default: all of the device"
    )
    p.add_argument("--no-same-format", action="store_true", help="measure diffusers in its own format only (not also in ours)")
    p.add_argument("--gemm-n", type=int, default=4096, help="size of the square matrix product that measures the peak")
    p.add_argument("--train-batches", default="32,64", help="training batch sizes")
    p.add_argument("--sample-batch", type=int, default=64)
    p.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall", help="cpu: time by process CPU time (use with --threads 1 on a busy machine)"
    )
    p.add_argument("--compare", default="small", help="preset compared with diffusers and measured in variants")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    wall0, load_start = time.perf_counter(), os.getloadavg()[0]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cpu = device.type == "cpu"
    # --clock cpu: the process's CPU time, which on a machine shared with other jobs measures what the
    # work costs when it runs, rather than how long it waited for a core.
    if args.clock == "cpu" and (torch.get_num_threads() != 1 or not cpu):
        sys.exit("error: --clock cpu measures one CPU thread: use it with --threads 1 on a CPU")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    quick = args.quick
    presets = args.presets.split(",") if args.presets else ["tiny", "mini", "small", "base", *([] if quick else ["large"])]
    for name in presets:
        if name not in PRESET_DATA:
            sys.exit(f"error: unknown preset {name!r}; choose from {', '.join(PRESET_DATA)}")
    train_batches = tuple(int(b) for b in args.train_batches.split(","))
    plans = PLANS["quick" if quick else "full"] if cpu else {k: Plan(5, 5, 10, 10) for k in PRESET_DATA}

    print(f"peak: timing {args.gemm_n}x{args.gemm_n} matrix products on {device} ...", flush=True)
    peak = machine_peak(device, args.gemm_n, clock)
    print("  " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peak.items()) + f" (load average {load_start:.2f})", flush=True)
    simd = cpu_simd_peak(torch.get_num_threads()) if cpu else None
    if simd:
        print(
            f"  data sheet: fp32 {simd['fp32']:.1f}, bf16 {simd['bf16']:.1f} GFLOP/s; measured / data sheet: "
            f"fp32 {peak['fp32'] / simd['fp32']:.0%}, bf16 {peak['bf16'] / simd['bf16']:.0%} ({simd['assumes']})",
            flush=True,
        )
    bench = Bench(Workloads(str(device), args.threads), device, peak, clock, args.sample_batch)
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "scripts/benchmark.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(device, args.clock),
        "peak": {"gemm_n": args.gemm_n, "start": peak, "simd": simd},
        "train_batches": list(train_batches),
        "sample_batch": args.sample_batch,
        "notes": (
            "FLOPs per image counted by torch.utils.flop_counter.FlopCounterMode over one real training step (forward, loss, "
            "backward) and one sampling step (matrix products, convolutions and attention; a multiply-add is 2 FLOPs). "
            "frac_peak = achieved GFLOP/s / the best matrix product of the row's precision at the start or the end (peak.measured)."
        ),
        "models": bench.models,
    }
    try:
        ours = None
        for preset in presets:
            data, size, ch = PRESET_DATA[preset]
            print(f"{preset}: {data} {ch}x{size}x{size}", flush=True)
            # --quick on a CPU: the big presets at the first batch size only (a step takes many seconds).
            batches = train_batches[:1] if quick and cpu and preset in ("base", "large") else train_batches
            default = default_variant(bench.work.model_cfg(preset), device)
            m = bench.row(preset, default, batches, plans[preset])
            ours = m if preset == args.compare else ours

        if not args.no_diffusers and ours is not None:
            try:
                import diffusers  # noqa: F401
            except ImportError:
                print("diffusers is not installed (pip install -e '.[bench]'): comparison skipped", flush=True)
            else:
                same = not args.no_same_format
                result["vs_diffusers"] = compare_diffusers(bench, args.compare, ours, train_batches, plans[args.compare], same)
        if not args.no_variants and ours is not None:
            result["variant_model"], result["variant_train_batch"] = f"ddpm/{args.compare}", train_batches[0]
            result["variants"], result["recommended"] = measure_variants(
                bench, args.compare, ours, train_batches[0], plans[args.compare], quick, args.variants
            )

    finally:
        bench.work.close()
    end_peak = machine_peak(device, args.gemm_n, clock)
    result["peak"]["end"] = end_peak
    result["peak"]["measured"] = best = merge_peaks(peak, end_peak)
    result["busy"] = busy(result, peak, end_peak, load_start, add_fractions(result, best))
    result["wall_s"] = time.perf_counter() - wall0

    out_path = args.out or Path("outputs/benchmark") / f"{dt.datetime.now().strftime('%Y-%m-%d_%H-%M-%S')}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2))  # the measurements first, whatever the table does
    text = report(result)
    print("\n" + text)
    result["table"] = text
    out_path.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out_path}")
    return result


if __name__ == "__main__":
    main()
