#!/usr/bin/env python
"""Speed targets of the exact-score kernel (prints both ratios, writes JSON with its ``"command"``).

1. ``ExactScore.stats`` (posterior mean, streamed log-sum-exp) for n = 60,000 training points,
   d = 784 and 1,024 queries, against the two float32 matrix products it needs
   (x @ aᵀ and w @ a) on the same machine: target ratio <= 1.5.
2. A 40-point f / p_½ curve on all of MNIST (forward-noised training points, two-matrix-product
   trick): target < 60 s.

    DDPM_DATA_DIR=/path/to/data python scripts/bench_regimes.py --out bench_regimes.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time

import numpy as np
import torch


def best_of(fn, repeats: int) -> float:
    """Shortest wall time of ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60000)
    ap.add_argument("--d", type=int, default=784)
    ap.add_argument("--queries", type=int, default=1024)
    ap.add_argument("--chunk-size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--curve-points", type=int, default=40)
    ap.add_argument("--curve-queries", type=int, default=1024)
    ap.add_argument("--data-dir", default=os.environ.get("DDPM_DATA_DIR", "data"))
    ap.add_argument("--out", default="bench_regimes.json")
    args = ap.parse_args(argv)
    command = shlex.join(["python", "scripts/bench_regimes.py", *(sys.argv[1:] if argv is None else argv)])
    load_before, cpu0 = os.getloadavg(), time.process_time()
    if args.threads:
        torch.set_num_threads(args.threads)

    from ddpm.regimes.collapse import draw_queries, estimator_curves, log_grid
    from ddpm.score import ExactScore

    g = torch.Generator().manual_seed(0)
    a = torch.rand(args.n, args.d, generator=g) * 2 - 1
    x = torch.randn(args.queries, args.d, generator=g)
    ks = ExactScore(a, dtype="float32", chunk_size=args.chunk_size)
    pts = ks.points.contiguous()
    w = torch.rand(args.queries, args.n, generator=g)
    # The score kernel: posterior mean Σ w_μ a_μ (what ε* needs), streamed over chunks.
    t_kernel = best_of(lambda: ks.stats(x, 0.5, extras=False), args.repeats)
    t_mm = best_of(lambda: (x @ pts.T, w @ pts), args.repeats)
    ratio = t_kernel / t_mm
    print(
        f"kernel n={args.n} d={args.d} B={args.queries}: {t_kernel:.3f} s; two float32 matmuls {t_mm:.3f} s; ratio {ratio:.2f} (target <= 1.5)"
    )

    from hydra import compose, initialize_config_module

    from ddpm.commands import register_schemas
    from ddpm.regimes.data import data_source, load_points

    register_schemas()
    with initialize_config_module("ddpm.conf", version_base="1.3"):
        cfg = compose("regimes", overrides=["dataset=mnist", f"paths.data_dir={args.data_dir}"])
    mnist = load_points(data_source(cfg), cfg.paths.data_dir, cfg.paths.cache_dir)
    ms = ExactScore(mnist.x, dtype="float32", chunk_size=args.chunk_size)
    idx, z = draw_queries(ms.n, ms.d, args.curve_queries, 0)
    times = log_grid(0.01, 3.0, args.curve_points)
    t0 = time.perf_counter()
    cur = estimator_curves(ms, times, idx, z, 256)
    t_curve = time.perf_counter() - t0
    print(
        f"{args.curve_points}-point f/p_½ curve on all MNIST (n={ms.n}, d={ms.d}, {args.curve_queries} queries): {t_curve:.1f} s; ratio to 60 s {t_curve / 60:.2f} (target < 1)"
    )
    rec = {
        "command": command,
        "kernel_seconds": t_kernel,
        "two_matmul_seconds": t_mm,
        "kernel_over_matmul": ratio,
        "curve_seconds": t_curve,
        "curve_over_60s": t_curve / 60,
        "curve_points": args.curve_points,
        "curve_queries": args.curve_queries,
        "n": args.n,
        "d": args.d,
        "queries": args.queries,
        "chunk_size": args.chunk_size,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "p_half_first_last": [float(cur["p_half"][0]), float(cur["p_half"][-1])],
        "f_last": float(np.asarray(cur["f"])[-1]),
        "process_cpu_seconds": time.process_time() - cpu0,
        "load_average_1min": {"start": load_before[0], "end": os.getloadavg()[0]},
    }
    with open(args.out, "w") as f:
        json.dump(rec, f, indent=2)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
