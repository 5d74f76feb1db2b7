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
import subprocess
import sys
import time
from pathlib import Path

from ddpm.errors import EXIT_USAGE, USER_ERRORS, ConfigError
from ddpm.regimes.law import collect
from ddpm.regimes.plan import Job, check_budget, pack

BIN = Path(sys.executable).parent
COMMAND = shlex.join(["python", "scripts/memorisation_law.py", *(a for a in sys.argv[1:] if a != "--collect-only")])  # kept in the results
# Planning rates: training steps per CPU-second of one job on one thread, its regimes measurements
# included (cpu_seconds.json of the documented grid: docs/regimes.md#the-memorisation-law).
RATES = {8: 27.0, 12: 15.0, 16: 9.0}
GMM_RATE = 400.0  # steps per CPU-second of a Gaussian-mixture run (MLP 256 x 3, batch 64, d = 8) with its measurements


def parse_grid(args: argparse.Namespace) -> list[Job]:
    """The (n, image size) jobs of the command line, each with its scaled training length."""
    if args.halves:
        rate = args.rate or RATES[int(args.image_size.split(",")[0])]
        off = ["train.regimes_every=0", f"dataset.image_size={args.image_size.split(',')[0]}"]
        return [
            Job(f"halves_n{n}_part{p}", args.steps, args.steps / rate, [f"dataset.n={n}", f"dataset.subset_part={p}", *off])
            for n in (int(v) for v in args.n.split(","))
            for p in (0, 1)
        ]
    if args.gmm:
        jobs = []
        for n in (int(v) for v in args.n.split(",")):
            steps = int(round(args.steps_per_image * n))
            jobs.append(Job(f"gmm_d{args.dim}_n{n}", steps, steps / (args.rate or GMM_RATE), [str(n)]))
        return jobs
    sizes: dict[int, list[int]] = {}
    for s in args.image_size.split(","):
        sizes[int(s)] = [int(v) for v in args.n.split(",")]
    per_image = dict.fromkeys(sizes, args.steps_per_image)
    for spec in args.extra:
        s, _, rest = spec.partition(":")
        ns, _, scale = rest.partition(":")
        if not ns:
            raise ConfigError(f"--extra {spec!r}: expected SIZE:N1,N2,...[:STEPS_PER_IMAGE] (e.g. 12:64,128,256:40)")
        sizes[int(s)] = [int(v) for v in ns.split(",")]
        per_image[int(s)] = float(scale) if scale else args.steps_per_image
    jobs = []
    for size, ns in sizes.items():
        if size not in RATES and args.rate is None:
            raise ConfigError(f"no planning rate for image size {size}; give --rate STEPS_PER_S")
        for n in ns:
            if n < args.batch_size:  # ddpm-train needs one full batch per epoch
                raise ConfigError(f"n={n} is below the batch size {args.batch_size}: every job needs at least one full batch")
            steps = int(round(per_image[size] * n))
            jobs.append(Job(f"s{size}_n{n}", steps, steps / (args.rate or RATES[size]), [f"dataset.n={n}", f"dataset.image_size={size}"]))
    return jobs


def launch(job: Job, core: int, train_dir: Path, extra: list[str], batch_size: int) -> subprocess.Popen:
    """Start one training job pinned to ``core`` with one thread (resumed if it started before)."""
    run_dir = train_dir / job.name
    cmd = [str(BIN / "ddpm-train"), "experiment=memorisation_law", *job.overrides, f"train.max_steps={job.steps}"]
    cmd += [f"train.batch_size={batch_size}", f"hydra.run.dir={run_dir}", *extra]
    if (run_dir / "checkpoints").is_dir():
        cmd.append("resume=latest")
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > core:
        cmd = ["taskset", "-c", str(core), *cmd]
    print(f"[core {core}] $ {' '.join(cmd)}", flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir / "study.log", "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=log, stderr=subprocess.STDOUT)


def finished(run_dir: Path, steps: int) -> bool:
    """The run in ``run_dir`` has trained ``steps`` steps (a longer grid resumes a shorter one: the learning rate is constant)."""
    metrics = run_dir / "metrics.json"
    return metrics.is_file() and json.loads(metrics.read_text()).get("step", 0) >= steps


def run_jobs(jobs: list[Job], train_dir: Path, cores: int, extra: list[str], batch_size: int) -> dict[str, float]:
    """Run ``jobs`` (longest first) with at most ``cores`` at a time; stop on the first failure.

    Returns each job's CPU seconds (user + system of its process, summed over resumed runs), kept in
    ``<train_dir>/cpu_seconds.json``: the wall time the grid takes on otherwise idle cores is the
    busiest core's sum of them, whatever else ran beside the study.
    """
    times_file = train_dir / "cpu_seconds.json"
    cpu = json.loads(times_file.read_text()) if times_file.is_file() else {}
    todo = [j for j in sorted(jobs, key=lambda j: -j.seconds) if not finished(train_dir / j.name, j.steps)]
    running: dict[int, tuple[Job, subprocess.Popen, float]] = {}
    while todo or running:
        for core in range(cores):
            if core not in running and todo:
                job = todo.pop(0)
                running[core] = (job, launch(job, core, train_dir, extra, batch_size), time.perf_counter())
        time.sleep(2)
        for core, (job, proc, t0) in list(running.items()):
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == 0:
                continue
            del running[core]
            code = os.waitstatus_to_exitcode(status)
            cpu[job.name] = cpu.get(job.name, 0.0) + usage.ru_utime + usage.ru_stime
            times_file.write_text(json.dumps(cpu, indent=2))
            print(
                f"[core {core}] {job.name}: exit {code} after {time.perf_counter() - t0:.0f} s wall, {cpu[job.name]:.0f} s CPU", flush=True
            )
            if code:
                for _, other, _ in running.values():
                    other.terminate()
                raise SystemExit(f"{job.name} failed (exit {code}); see {train_dir / job.name / 'study.log'}")
    return cpu


def _gmm_job(job: Job, out: Path, dim: int) -> tuple[str, float]:
    import torch

    from ddpm.regimes.gmm import GMMRun, train_gmm

    torch.set_num_threads(1)
    c0 = time.process_time()
    train_gmm(GMMRun(n=int(job.overrides[0]), d=dim, steps=job.steps), out / job.name)
    return job.name, time.process_time() - c0


def run_gmm(jobs: list[Job], train_dir: Path, cores: int, dim: int) -> dict[str, float]:
    """Run the Gaussian-mixture jobs (longest first) in ``cores`` worker processes; their CPU seconds."""
    from concurrent.futures import ProcessPoolExecutor

    todo = [j for j in sorted(jobs, key=lambda j: -j.seconds) if not (train_dir / j.name / "run.json").is_file()]
    cpu = {}
    with ProcessPoolExecutor(max_workers=cores) as pool:
        for name, seconds in pool.map(_gmm_job, todo, [train_dir] * len(todo), [dim] * len(todo)):
            cpu[name] = seconds
            print(f"{name}: {seconds:.0f} s CPU", flush=True)
    (train_dir / "cpu_seconds.json").write_text(json.dumps(cpu, indent=2))
    return cpu


def compare_halves(jobs: list[Job], out: Path, samples: int, data_dir: str | None) -> None:
    """Sample both networks of every N from the same seeds; write halves.csv, halves.json and the figures."""
    from omegaconf import OmegaConf

    from ddpm.pretrained import load_pretrained
    from ddpm.regimes.halves import sample_pair, write_results

    results = []
    for n in sorted({int(j.overrides[0].split("=")[1]) for j in jobs}):
        ckpts = tuple(out / "train" / f"halves_n{n}_part{p}" / "checkpoints" / "last.pt" for p in (0, 1))
        stored = load_pretrained(ckpts[0]).cfg
        cfg = OmegaConf.create(
            {
                "paths": {"data_dir": data_dir or stored.paths.data_dir, "cache_dir": stored.paths.cache_dir},
                "sampler": stored.sampler,
                "memorisation": {"threshold": stored.memorisation.threshold},
            }
        )
        r = sample_pair(ckpts, cfg, samples, seed=0)
        print(f"N={n}: cosine {r['cosine_mean']:.3f}, f_mem {r['f_mem_0']:.3f} / {r['f_mem_1']:.3f}", flush=True)
        results.append(r)
    paths = write_results(results, out, command=COMMAND)
    print(f"-> {out / 'halves.csv'}, halves.json, {', '.join(p.name for p in paths)}")


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
        compare_halves(jobs, args.out, args.samples, data_dir)
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
