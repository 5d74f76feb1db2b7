#!/usr/bin/env python
"""The memorisation law in training time, end to end: train on n images per job, collect τ_mem and τ_gen.

Each job is ``ddpm-train experiment=memorisation_law dataset.n=<n> dataset.image_size=<s>
train.max_steps=<steps_per_image x n>``: f_mem and the held-out loss on a log grid of steps go to
its ``regimes.jsonl``. Jobs run one per core with one thread each (longest first); a rerun resumes
unfinished jobs and skips finished ones. Then :func:`ddpm.regimes.law.collect` writes ``law.csv``,
``law.json`` and the plots into the study folder.

    python scripts/memorisation_law.py outputs/memorisation_law --n 64,128,256,384,512 --image-size 8 \\
        --steps-per-image 80 --extra 12:64,128,256:40 --budget-min 60

With ``--gmm`` the jobs are Gaussian-mixture runs with a small MLP (:mod:`ddpm.regimes.gmm`) in d =
``--dim`` dimensions, trained in this process's workers, one per core:

    python scripts/memorisation_law.py outputs/memorisation_law_gmm --gmm --n 32,48,64,96,128,192,256,384,512 --steps-per-image 120 --budget-min 10

With ``--halves`` each N trains two networks on disjoint halves (``dataset.subset_part=0|1``) for
``--steps`` steps each, and :mod:`ddpm.regimes.halves` compares their samples from the same seeds:

    python scripts/memorisation_law.py outputs/halves --halves --n 64,128,256,1024,4096 --steps 4000 --budget-min 30

The planned wall time (steps / planning rate, packed onto the cores) must fit ``--budget-min``;
otherwise the study stops before it starts, with one line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

from ddpm.errors import EXIT_USAGE, USER_ERRORS
from ddpm.regimes.law import collect
from ddpm.regimes.plan import Job, check_budget, pack
from ddpm.tools.law_study import compare_halves, parse_grid, run_gmm, run_jobs

COMMAND = shlex.join(["python", "scripts/memorisation_law.py", *(a for a in sys.argv[1:] if a != "--collect-only")])  # kept in the results


def main(argv: list[str] | None = None) -> int:
    """Plan, run and collect the study; a user error is one line and exit 2 (nothing written is touched)."""
    try:
        return study(argv)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def study(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="study folder (train/<job>/ holds each run)")
    ap.add_argument("--n", default="64,128,256,384,512", help="dataset.n values, comma-separated")
    ap.add_argument("--image-size", default="8", help="dataset.image_size values (d = size²) for --n, comma-separated")
    ap.add_argument("--extra", nargs="*", default=[], help="more grids as SIZE:N1,N2,... (e.g. a second resolution)")
    ap.add_argument("--steps-per-image", type=float, default=40.0, help="train.max_steps = this x n")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument(
        "--budget-min", type=float, default=60.0, help="planned budget of the whole grid: wall minutes (CPU-minutes with --gmm)"
    )
    ap.add_argument("--rate", type=float, default=None, help="planning rate in steps/s per job (default: measured per image size)")
    ap.add_argument("--cores", type=int, default=min(2, os.cpu_count() or 1), help="jobs at a time (one thread each)")
    ap.add_argument("--train", nargs="*", default=[], help="more ddpm-train overrides for every job")
    ap.add_argument("--gmm", action="store_true", help="Gaussian-mixture runs with a small MLP instead of MNIST U-Nets")
    ap.add_argument("--halves", action="store_true", help="the disjoint-halves test: two networks per N on disjoint subsets")
    ap.add_argument("--steps", type=int, default=4000, help="--halves: training steps of every network")
    ap.add_argument("--samples", type=int, default=256, help="--halves: paired samples per N")
    ap.add_argument("--dim", type=int, default=8, help="--gmm: dimension d of the mixture")
    ap.add_argument("--collect-only", action="store_true", help="only collect the runs already there")
    args = ap.parse_args(argv)
    jobs = parse_grid(args)
    plan = pack(jobs, args.cores)
    check_budget(plan, args.budget_min, cpu=args.gmm)
    for core, js in enumerate(plan):
        print(f"core {core}: {', '.join(j.name for j in js)} ({sum(j.seconds for j in js) / 60:.1f} min planned)")
    t0 = time.perf_counter()
    if args.halves:
        if not args.collect_only:
            run_jobs(jobs, args.out / "train", args.cores, args.train, args.batch_size)
        data_dir = next((o.split("=", 1)[1] for o in args.train if o.startswith("paths.data_dir=")), None)
        compare_halves(jobs, args.out, args.samples, data_dir, COMMAND)
        print(f"wall time {time.perf_counter() - t0:.0f} s")
        return 0
    if not args.collect_only:
        if args.gmm:
            cpu = run_gmm(jobs, args.out / "train", args.cores, args.dim)
        else:
            cpu = run_jobs(jobs, args.out / "train", args.cores, args.train, args.batch_size)
        measured = [Job(j.name, j.steps, cpu.get(j.name, 0.0)) for j in jobs]
        print(
            f"CPU time {sum(cpu.values()) / 60:.1f} min; on {args.cores} idle cores (longest first) {check_budget(pack(measured, args.cores), math.inf):.1f} min wall"
        )
    result = collect(args.out / "train", args.out, command=COMMAND)
    times = args.out / "train" / "cpu_seconds.json"
    if times.is_file():  # the grid's cost, kept with its results
        cpu = json.loads(times.read_text())
        measured = [Job(j.name, j.steps, cpu.get(j.name, 0.0)) for j in jobs]
        result["cpu"] = {
            "seconds": cpu,
            "total_min": sum(cpu.values()) / 60,
            "cores": args.cores,
            "idle_wall_min": check_budget(pack(measured, args.cores), math.inf),
        }
        (args.out / "law.json").write_text(json.dumps(result, indent=2))
    print(f"wall time {time.perf_counter() - t0:.0f} s; {len(result['runs'])} runs -> {args.out / 'law.csv'}, law.json, plots")
    for d, fit in result["fits"].items():
        for key in ("tau_mem", "tau_gen"):
            f = fit[key]
            print(f"d={d} {key}: exponent {f['exponent']} (95% {f['interval95']}) from {f['points']} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
