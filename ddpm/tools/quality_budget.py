"""The machinery of ``scripts/quality_budget.py``: ours and diffusers' recipe trained on one time
budget, sampled, and scored side by side (see the script for the recipes and the clock).

Nothing heavy is imported at the top (torch, diffusers): the script's argument errors come back at once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ddpm.tables import markdown_table

if TYPE_CHECKING:
    import torch

TRAIN = Path(sys.executable).with_name("ddpm-train")
GRID = 64  # images in each saved grid (and the denominator of the blob count in the table)


class UsageError(Exception):
    """A bad argument: reported as one line, exit code 2."""


def compose_train(preset: str, overrides: list[str]):
    """Our training config as ddpm-train would compose it (its dataset and paths serve both recipes)."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from ddpm.commands import register_schemas

    register_schemas()
    try:
        with initialize_config_module("ddpm.conf", version_base="1.3"):
            return compose("train", overrides=[f"experiment={preset}", *(o for o in overrides if not o.startswith("hydra."))])
    except (HydraException, OmegaConfBaseException) as exc:
        raise UsageError(f"cannot compose experiment={preset} with {overrides}: {str(exc).splitlines()[0]}") from None


def default_sampler_cfg(ckpt: Path):
    """The ``sampler`` node ``ddpm-sample ckpt=...`` uses when none is given."""
    from hydra import compose, initialize_config_module

    from ddpm.commands import register_schemas

    register_schemas()
    with initialize_config_module("ddpm.conf", version_base="1.3"):
        return compose("sample", overrides=[f"ckpt={ckpt}"]).sampler


def fresh_dirs(paths: list[Path], overwrite: bool) -> None:
    """Empty run folders for this invocation; an earlier run's are only replaced with ``--overwrite``."""
    for path in paths:
        if path.exists() and any(path.iterdir()) and not overwrite:
            raise UsageError(f"{path} holds an earlier run: pass --overwrite or another --workdir")
    for path in paths:
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)


def save_grid(x: torch.Tensor, path: Path) -> None:
    from torchvision.utils import save_image

    from ddpm.data import from_model_range

    save_image(from_model_range(x[:GRID]).float() / 255.0, path, nrow=8)


def score_row(scorer, x: torch.Tensor, grid: Path) -> dict[str, Any]:
    save_grid(x, grid)
    scores = scorer.score(x)
    return {"scores": scores, "blobs_in_grid": int(scorer.is_blob(x[:GRID]).sum()), "grid_images": min(GRID, len(x)), "grid": str(grid)}


# --------------------------------------------------------------------------- ours
def run_ours(args: argparse.Namespace, device: torch.device, scorer, clock_cls) -> dict[str, Any]:
    """Train ours with ``ddpm-train`` on the budget (a subprocess), sample its EMA weights with
    ``ddpm-sample``'s default sampler, and score the samples.

    Args:
        args: the script's flags (preset, minutes, clock, device, threads, override, workdir, num_samples, seed).
        device: where to sample.
        scorer: the :class:`ddpm.evaluate.sample_quality.SampleScorer`.
        clock_cls: the budget clock (``ddpm.train.BudgetClock``).
    """
    import torch
    from omegaconf import OmegaConf

    from ddpm.generate import generate
    from ddpm.pretrained import load_pretrained
    from ddpm.samplers import build_sampler, make_eps_fn

    run_dir = args.workdir / "ours"
    cmd = [
        str(TRAIN),
        f"experiment={args.preset}",
        f"train.time_budget_min={args.minutes}",
        f"train.budget_clock={args.clock}",
        "train.max_steps=10000000",  # the budget, not a step count, ends the run
        "train.progress=false",
        f"runtime.device={args.device}",
        *([f"runtime.num_threads={args.threads}"] if args.threads else []),
        f"hydra.run.dir={run_dir}",
        *args.override,
    ]
    print("$", shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, env=os.environ.copy()).returncode
    if rc != 0:
        raise UsageError(f"ddpm-train exited with status {rc} (its log: {run_dir})")
    total = time.perf_counter() - t0
    summary = json.loads((run_dir / "metrics.json").read_text())
    print(f"ours: {summary['step']} steps in {summary['train_seconds']:.1f} s of training ({args.clock} clock); sampling", flush=True)
    ckpt = run_dir / "checkpoints" / "last.pt"
    pre = load_pretrained(ckpt, device)
    sampler_cfg = default_sampler_cfg(ckpt)
    sampler = build_sampler(sampler_cfg, pre.diffusion)
    clock = clock_cls(args.clock)
    with torch.inference_mode(), clock:
        x = generate(make_eps_fn(pre.model, pre.diffusion), sampler, pre.shape, args.num_samples, args.seed, 250, device)
    tc = pre.cfg.train
    batch = int(tc.batch_size) * int(tc.grad_accum_steps)
    return {
        "name": "ours",
        "recipe": {
            "preset": args.preset,
            "overrides": args.override,
            "model": pre.cfg.model.name,
            "params": sum(p.numel() for p in pre.model.parameters()),
            "train": OmegaConf.to_container(tc, resolve=True),
            "schedule": OmegaConf.to_container(pre.cfg.schedule, resolve=True),
        },
        "command": shlex.join(["ddpm-train", *cmd[1:]]),
        "steps": int(summary["step"]),
        "batch": batch,
        "images": int(summary["step"]) * batch,
        "train_seconds": float(summary["train_seconds"]),
        "ddpm_train_wall_seconds": round(total, 1),  # the whole subprocess: start-up, data, training, checkpoints
        "sampler": OmegaConf.to_container(sampler_cfg, resolve=True),
        "evaluations": sampler.num_evaluations,
        "sampling_seconds": clock.spent,
        "ckpt": str(ckpt),
        **score_row(scorer, x, run_dir / "budget_samples.png"),
    }


# --------------------------------------------------------------------------- diffusers
DIFFUSERS_RECIPE = {
    "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    "layers_per_block": 2,
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "prediction_type": "epsilon",
    "lr": 2e-4,
    "adam_betas": (0.95, 0.999),
    "weight_decay": 1e-6,
    "adam_eps": 1e-8,
    "grad_clip": 1.0,
    "warmup_steps": 200,
    "lr_schedule": "constant_with_warmup",
    "batch_size": 64,
    "ema_decay": 0.999,
    "precision": "fp32",
    "sampler": "DPMSolverMultistepScheduler",
    "sampling_steps": 20,
}


def run_diffusers(args: argparse.Namespace, device: torch.device, cfg, scorer, clock_cls) -> dict[str, Any]:
    """Train diffusers' recipe (:data:`DIFFUSERS_RECIPE`) in this process on the budget and on our
    data, sample it with DPM-Solver++ from the same initial noise as ours, and score the samples.

    Args:
        args: the script's flags (minutes, clock, seed, num_samples, workdir, diffusers channels).
        device: where to train and sample.
        cfg: our composed training config (its dataset and paths).
        scorer: the :class:`ddpm.evaluate.sample_quality.SampleScorer`.
        clock_cls: the budget clock (``ddpm.train.BudgetClock``).
    """
    import diffusers
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from ddpm.data import load_dataset, to_model_range
    from ddpm.paths import data_root
    from ddpm.samplers import StackedRandomGenerator

    r = DIFFUSERS_RECIPE
    run_dir = args.workdir / "diffusers"
    ds = cfg.dataset
    data = to_model_range(load_dataset(ds, data_root(cfg.paths), cfg.paths.cache_dir, "train").images).to(device)
    channels, size = int(ds.channels), int(ds.image_size)
    torch.manual_seed(args.seed)
    model = UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=args.channels,
        layers_per_block=r["layers_per_block"],
        down_block_types=r["down_block_types"],
        up_block_types=r["up_block_types"],
        norm_num_groups=math.gcd(32, *args.channels),  # diffusers' 32 for the recipe; narrower test nets need fewer
    ).to(device)
    noise_sched = DDPMScheduler(
        num_train_timesteps=r["num_train_timesteps"],
        beta_schedule=r["beta_schedule"],
        beta_start=r["beta_start"],
        beta_end=r["beta_end"],
        prediction_type=r["prediction_type"],
    )
    opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], betas=r["adam_betas"], weight_decay=r["weight_decay"], eps=r["adam_eps"])
    lr_sched = get_scheduler(r["lr_schedule"], optimizer=opt, num_warmup_steps=r["warmup_steps"])
    ema = EMAModel(model.parameters(), decay=r["ema_decay"])
    gen = torch.Generator().manual_seed(args.seed)
    bs, n = r["batch_size"], len(data)
    perm, pos = torch.randperm(n, generator=gen), 0
    budget_s = 60.0 * args.minutes
    clock = clock_cls(args.clock)
    steps = 0
    model.train()
    print(f"diffusers: training for {args.minutes} min ({args.clock} clock)", flush=True)
    while clock.spent < budget_s:
        with clock:
            if pos + bs > n:  # a new shuffled epoch, like a DataLoader with shuffle=True and drop_last=True
                perm, pos = torch.randperm(n, generator=gen), 0
            x0 = data[perm[pos : pos + bs].to(device)]
            pos += bs
            noise = torch.randn(x0.shape, generator=gen).to(device)
            t = torch.randint(0, r["num_train_timesteps"], (bs,), generator=gen).to(device)
            loss = F.mse_loss(model(noise_sched.add_noise(x0, noise, t), t).sample, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), r["grad_clip"])
            opt.step()
            lr_sched.step()
            ema.step(model.parameters())
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # the step's kernels inside the clock, not queued past it
            steps += 1
    train_seconds = clock.spent
    print(f"diffusers: {steps} steps in {train_seconds:.1f} s of training ({args.clock} clock); sampling", flush=True)
    ema.copy_to(model.parameters())
    model.eval()

    solver = DPMSolverMultistepScheduler.from_config(noise_sched.config)
    shape = (channels, size, size)
    out = []
    clock = clock_cls(args.clock)
    with torch.inference_mode(), clock:
        for start in range(0, args.num_samples, 250):
            m = min(250, args.num_samples - start)
            x = StackedRandomGenerator(device, range(args.seed + start, args.seed + start + m)).randn(shape)
            solver.set_timesteps(r["sampling_steps"], device=device)
            for t in solver.timesteps:
                x = solver.step(model(x, t).sample, t, x).prev_sample
            out.append(x.float().cpu())
    x = torch.cat(out)
    torch.save({"config": dict(model.config), "ema": model.state_dict(), "step": steps}, run_dir / "ema.pt")
    return {
        "name": "diffusers",
        "recipe": {
            **r,
            "diffusers": diffusers.__version__,
            "block_out_channels": list(args.channels),
            "params": sum(p.numel() for p in model.parameters()),
        },
        "steps": steps,
        "batch": bs,
        "images": steps * bs,
        "train_seconds": train_seconds,
        "sampler": {"name": "dpm_solver++ (diffusers DPMSolverMultistepScheduler)", "steps": r["sampling_steps"]},
        "evaluations": r["sampling_steps"],
        "sampling_seconds": clock.spent,
        **score_row(scorer, x, run_dir / "budget_samples.png"),
    }


# --------------------------------------------------------------------------- report
def real_reference(args: argparse.Namespace, cfg, scorer) -> dict[str, Any]:
    """The first ``--num-samples`` test-split images, scored like the samples: FID and KID are biased
    upwards at small counts, so this row is the best any recipe can score at this count."""
    from ddpm.data import load_dataset, to_model_range
    from ddpm.paths import data_root

    test = load_dataset(cfg.dataset, data_root(cfg.paths), cfg.paths.cache_dir, "test").images[: args.num_samples]
    args.workdir.mkdir(parents=True, exist_ok=True)
    return {"name": f"real test images ({len(test)})", **score_row(scorer, to_model_range(test), args.workdir / "real_test.png")}


def markdown(rows: list[dict[str, Any]], real: dict[str, Any]) -> str:
    """The table of the recipes, and last the test images scored the same way (the floor of each score at this count)."""
    header = ["recipe", "steps", "images", "train s", "FID", "KID", "entropy", "confidence", "confident %", "blobs/64"]
    table = []
    for r in [*rows, real]:
        s = r["scores"]
        trained = [f"{r['steps']:,}", f"{r['images']:,}", f"{r['train_seconds']:.1f}"] if "steps" in r else ["-", "-", "-"]
        table.append(
            [
                r["name"],
                *trained,
                f"{s['fid']:.2f}",
                f"{s['kid']:.3g}",
                f"{s['class_entropy']:.3f}",
                f"{s['confidence']:.3f}",
                f"{100 * s['confident_fraction']:.1f}",
                f"{r['blobs_in_grid']}/{r['grid_images']}",
            ]
        )
    return markdown_table(header, table, align_right=True)
