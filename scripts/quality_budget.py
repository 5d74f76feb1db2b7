#!/usr/bin/env python
"""Sample quality per unit of compute: train for a fixed time budget, sample, score; optionally diffusers too.

Ours: ``ddpm-train experiment=<preset> train.time_budget_min=M`` in a subprocess, then
``--num-samples`` images from ``checkpoints/last.pt`` (EMA weights) with ``ddpm-sample``'s default
sampler. ``--compare diffusers`` then trains diffusers' recipe on the same budget and clock, in
this process, on the identical data (``ddpm.data.load_dataset`` + ``to_model_range``):

- ``UNet2DModel`` (32, 64, 128) with two layers per block and attention at 8x8;
- ``DDPMScheduler`` (T = 1000, linear β 1e-4..0.02, ε prediction), uniform timesteps, MSE loss;
- AdamW at 2e-4 with the hyper-parameters of diffusers' ``train_unconditional.py`` example
  (β = (0.95, 0.999), weight decay 1e-6, ε 1e-8, gradient norm clipped at 1), a 200-step linear
  warm-up (``constant_with_warmup``), batch 64, ``EMAModel`` with decay 0.999, float32;
- sampling: ``DPMSolverMultistepScheduler`` (DPM-Solver++ 2M) from the DDPM scheduler's config,
  20 steps, from the same initial noise as ours (sample i drawn from a generator seeded seed + i).

Both are scored by :class:`ddpm.evaluate.sample_quality.SampleScorer` (domain FID/KID against the
training split, class entropy, confidence, blob tiles). Only training steps count against the
budget (``wall``: ``time.perf_counter``; ``process``: CPU time of the process per torch thread, fair
on a shared machine); data loading, start-up and sampling do not. Usage::

    python scripts/quality_budget.py --minutes 20 --compare diffusers --clock process

Prints a Markdown table and writes JSON (``--out``) with the command line, versions and threads.
The table's last row scores ``--num-samples`` real test images the same way: FID and KID are biased
upwards at small sample counts, so that row is the best any recipe can reach at this count.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import math
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

# torch is imported where it is used, so argument errors come back at once
from ddpm.paths import data_root
from ddpm.tools.quality_budget import UsageError, compose_train, fresh_dirs, markdown, real_reference, run_diffusers, run_ours


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, required=True, help="training budget of each recipe, in minutes")
    p.add_argument("--preset", default="mnist_cpu", help="our experiment preset (conf/experiment)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VAL", help="extra ddpm-train override (repeatable)")
    p.add_argument("--compare", choices=["diffusers"], help="also train diffusers' recipe on the same budget")
    p.add_argument("--clock", choices=["wall", "process"], default="wall", help="what the budget measures")
    p.add_argument("--num-samples", type=int, default=1000, help="generated images scored per recipe")
    p.add_argument("--seed", type=int, default=0, help="sample i starts from noise seeded seed + i; also seeds diffusers' training")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads of both recipes (default: torch's)")
    p.add_argument("--diffusers-channels", default="32,64,128", help="block_out_channels of the diffusers U-Net (smaller for tests)")
    p.add_argument("--num-reference", type=int, help="training images in the scorer's reference (default: the whole split)")
    p.add_argument("--out", type=Path, default=Path("docs/results/quality_budget.json"))
    p.add_argument("--workdir", type=Path, default=Path("outputs/quality_budget"))
    p.add_argument("--overwrite", action="store_true", help="replace the run folders of an earlier invocation in --workdir")
    args = p.parse_args(argv)
    if not (0 < args.minutes < math.inf):
        raise UsageError(f"--minutes must be a positive number, got {args.minutes}")
    if args.num_samples < 2:
        raise UsageError(f"--num-samples must be at least 2 (FID needs two images), got {args.num_samples}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    try:
        args.channels = tuple(int(c) for c in args.diffusers_channels.split(","))
    except ValueError:
        raise UsageError(f"--diffusers-channels must be comma-separated integers, got {args.diffusers_channels!r}") from None
    if len(args.channels) != 3 or min(args.channels) < 1:
        raise UsageError(f"--diffusers-channels needs three positive widths (one per resolution), got {args.diffusers_channels!r}")
    bad = [o for o in args.override if "=" not in o]
    if bad:
        raise UsageError(f"--override takes KEY=VAL, got {bad[0]!r}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.compare == "diffusers" and importlib.util.find_spec("diffusers") is None:
        raise UsageError('--compare diffusers needs the diffusers package: pip install -e ".[bench]"')
    cfg = compose_train(args.preset, args.override)
    import torch

    from ddpm.evaluate.sample_quality import SampleScorer
    from ddpm.runtime import resolve_device
    from ddpm.train import BudgetClock

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    fresh_dirs([args.workdir / "ours", *([args.workdir / "diffusers"] if args.compare else [])], args.overwrite)
    # The scorer first: a dataset without a classifier fails before any training.
    scorer = SampleScorer(cfg.dataset, data_root(cfg.paths), cfg.paths.cache_dir, device, num_reference=args.num_reference)
    rows = [run_ours(args, device, scorer, BudgetClock)]
    if args.compare == "diffusers":
        rows.append(run_diffusers(args, device, cfg, scorer, BudgetClock))
    real = real_reference(args, cfg, scorer)
    table = markdown(rows, real)
    result = {
        "command": shlex.join(["python", *sys.argv] if argv is None else ["python", "scripts/quality_budget.py", *argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "minutes": args.minutes,
        "clock": args.clock,
        "num_samples": args.num_samples,
        "seed": args.seed,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "scorer": {"classifier": scorer.classifier.digest, "num_reference": scorer.num_train, "dataset": cfg.dataset.name},
        "rows": rows,
        "real_test_reference": real,
        "table": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    try:
        main()
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        from ddpm.errors import USER_ERRORS

        if isinstance(exc, USER_ERRORS):
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        raise
