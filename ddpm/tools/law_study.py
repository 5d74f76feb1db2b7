"""The machinery of ``scripts/memorisation_law.py``: the study's grid of jobs (U-Nets on MNIST
subsets, Gaussian-mixture MLPs, or disjoint halves), run one per core with one thread each, and the
halves' comparison. The law itself is :mod:`ddpm.regimes.law`; the packing onto cores :mod:`ddpm.regimes.plan`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ddpm.errors import ConfigError
from ddpm.regimes.plan import Job

BIN = Path(sys.executable).parent
# Planning rates: training steps per CPU-second of one job on one thread, its regimes measurements
# included (cpu_seconds.json of the documented grid: docs/regimes.md#the-memorisation-law).
RATES = {8: 27.0, 12: 15.0, 16: 9.0}
GMM_RATE = 400.0  # steps per CPU-second of a Gaussian-mixture run (MLP 256 x 3, batch 64, d = 8) with its measurements


def parse_grid(args: argparse.Namespace) -> list[Job]:
    """The (n, image size) jobs of the command line, each with its scaled training length.

    Args:
        args: the script's flags (n, image_size, extra, steps_per_image, steps, rate, batch_size, dim, gmm, halves).
    """
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
    """Start one training job pinned to ``core`` with one thread (resumed if it started before).

    Args:
        job: the job.
        core: the core it runs on.
        train_dir: the folder of every job's run dir.
        extra: more ``ddpm-train`` overrides.
        batch_size: ``train.batch_size``.
    """
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

    Args:
        jobs: the grid.
        train_dir: the folder of every job's run dir.
        cores: jobs at a time.
        extra: more ``ddpm-train`` overrides for every job.
        batch_size: ``train.batch_size``.

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
    """Run the Gaussian-mixture jobs (longest first) in ``cores`` worker processes; their CPU seconds.

    Args:
        jobs: the grid.
        train_dir: the folder of every job's outputs.
        cores: worker processes.
        dim: the mixture's dimension d.
    """
    from concurrent.futures import ProcessPoolExecutor

    todo = [j for j in sorted(jobs, key=lambda j: -j.seconds) if not (train_dir / j.name / "run.json").is_file()]
    cpu = {}
    with ProcessPoolExecutor(max_workers=cores) as pool:
        for name, seconds in pool.map(_gmm_job, todo, [train_dir] * len(todo), [dim] * len(todo)):
            cpu[name] = seconds
            print(f"{name}: {seconds:.0f} s CPU", flush=True)
    (train_dir / "cpu_seconds.json").write_text(json.dumps(cpu, indent=2))
    return cpu


def compare_halves(jobs: list[Job], out: Path, samples: int, data_dir: str | None, command: str) -> None:
    """Sample both networks of every N from the same seeds; write halves.csv, halves.json and the figures.

    Args:
        jobs: the halves jobs (two per N).
        out: the study folder (``train/<job>/`` holds each run).
        samples: paired samples per N.
        data_dir: the data root (None: the one each run stored).
        command: the study's command line, kept in the results.
    """
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
    paths = write_results(results, out, command=command)
    print(f"-> {out / 'halves.csv'}, halves.json, {', '.join(p.name for p in paths)}")
