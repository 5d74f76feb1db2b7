"""``ddpm-sample ckpt=PATH``: generate images from a trained checkpoint.

Writes into the run dir: ``samples.png`` (a grid), ``sampling.gif`` (the reverse process of the
first ``gif.num_images`` samples, x_T to x_0), ``noise.gif`` (the forward process of as many real
images of the checkpoint's dataset, same frame count and the same schedule steps in reverse),
``images/000000.png ...`` with ``save_images=true``, and ``sample.json`` (what was run, how long
it took). Sample i starts from a generator seeded ``seed + i``: it is the same image whatever
``batch_size`` is.

A class-conditional checkpoint samples ``class_label`` (with classifier-free guidance
``guidance_scale``), or, without one, sample i of class i % classes with one row per class in
``samples.png``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

import ddpm
from ddpm.conditioning import class_rows, round_robin_labels
from ddpm.errors import ConfigError
from ddpm.gifs import frame_indices, grid_frame, save_grid, write_gif
from ddpm.inference import image_of, open_run, write_json, write_png
from ddpm.pretrained import Pretrained, real_images
from ddpm.sample.config import OUTPUTS, validate_sample
from ddpm.samplers import Sampler, StackedRandomGenerator

log = logging.getLogger("ddpm.sample")


def forward_states(diffusion, x0: torch.Tensor, record: list[int], seed: int) -> dict[int, torch.Tensor]:
    """Run the forward Markov chain x_k = √(1-β_k) x_{k-1} + √β_k z_k from clean images and keep
    the states at the schedule steps in ``record`` (image i draws its noise from seed + i)."""
    if not record:
        return {}
    rng = StackedRandomGenerator(x0.device, range(seed, seed + x0.shape[0]))
    betas = diffusion.schedule.betas.tolist()
    wanted, out, x = set(record), {}, x0.float()
    for k in range(max(record) + 1):
        x = (1 - betas[k]) ** 0.5 * x + betas[k] ** 0.5 * rng.randn(x0.shape[1:])
        if k in wanted:
            out[k] = x.clone()
    return out


class TrajectoryRecorder:
    """Sampler callback keeping the states x_k of the first ``num_images`` samples at chosen indices.

    State s is the input of evaluation s (s = 0 is x_T); s = evaluations is the final sample,
    added with :meth:`finish`.

    Args:
        sampler: the sampler whose evaluations are recorded.
        states: state indices to keep.
        num_images: how many leading samples to keep.
        bar: a progress bar advanced once per evaluation.
    """

    def __init__(self, sampler: Sampler, states: list[int], num_images: int, bar: tqdm | None = None) -> None:
        self.n_eval = sampler.num_evaluations
        self.states, self.num_images, self.bar = set(states), num_images, bar
        self.start = 0  # index of the batch's first sample
        self.kept: dict[int, list[torch.Tensor]] = {s: [] for s in states}

    def __call__(self, i: int, k: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        s = self.n_eval - 1 - i
        rows = self.num_images - self.start
        if rows > 0 and s in self.states:
            self.kept[s].append(x[:rows].detach().cpu().clone())
        if self.bar is not None:
            self.bar.update(1)

    def finish(self, batch: torch.Tensor) -> None:
        """Record the batch's final samples and move on to the next batch."""
        rows = self.num_images - self.start
        if rows > 0 and self.n_eval in self.states:
            self.kept[self.n_eval].append(batch[:rows].detach().cpu())
        self.start += batch.shape[0]

    def frames(self) -> list[torch.Tensor]:
        return [torch.cat(self.kept[s]) for s in sorted(self.states)]


def state_steps(sampler: Sampler, states: list[int]) -> list[int | None]:
    """The schedule step k of each state index (None for the final, clean sample)."""
    n = sampler.num_evaluations
    return [sampler.timesteps[n - 1 - s] if s < n else None for s in states]


def save_png(x: torch.Tensor, path: Path) -> None:
    """One image (C, H, W) in model range as an 8-bit PNG (grey for one channel), written atomically."""
    write_png(path, image_of(x))


def sample_labels(cfg: DictConfig, pre: Pretrained) -> tuple[torch.Tensor | None, int]:
    """The class of every sample and the samples per row of a one-row-per-class grid (0: a plain grid).

    Args:
        cfg: the ``sample`` config (``class_label``, ``guidance_scale``, ``num_samples``, ``grid_images``).
        pre: the loaded checkpoint.
    """
    n, classes = int(cfg.num_samples), pre.model.num_classes
    if not classes:
        if cfg.class_label is not None or float(cfg.guidance_scale) != 1.0:
            raise ConfigError(f"class_label and guidance_scale need a class-conditional checkpoint; {pre.path} is unconditional")
        return None, 0
    if float(cfg.guidance_scale) != 1.0 and not OmegaConf.select(pre.cfg, "train.cond_drop_prob", default=0.0):
        log.warning("guidance_scale=%s: %s was trained without label dropout, its null class is untrained", cfg.guidance_scale, pre.path)
    if cfg.class_label is not None:
        if not 0 <= int(cfg.class_label) < classes:
            raise ConfigError(f"class_label={cfg.class_label} is outside the checkpoint's classes 0..{classes - 1}")
        return torch.full((n,), int(cfg.class_label), dtype=torch.long), 0
    if n < classes:
        log.warning("num_samples=%d is fewer than the %d classes: samples.png shows classes 0..%d in one grid", n, classes, n - 1)
        return round_robin_labels(n, classes), 0
    return round_robin_labels(n, classes), max(1, min(int(cfg.grid_images), n) // classes)


def gif_counts(cfg: DictConfig, n_eval: int) -> tuple[int, int]:
    """The images per GIF frame and the frame count, clamped to what there is (each clamp said once
    in the log, so that a smaller output than asked for is no surprise).

    Args:
        cfg: the ``sample`` config (``gif``, ``num_samples``, ``grid_images``).
        n_eval: the sampler's network evaluations.
    """
    g = cfg.gif
    gif_n = min(int(g.num_images), int(cfg.num_samples))
    n_frames = min(int(g.frames), n_eval + 1)
    if int(g.num_images) > gif_n:
        log.warning("gif.num_images=%d exceeds num_samples=%d: the GIFs show %d images", int(g.num_images), int(cfg.num_samples), gif_n)
    if int(cfg.grid_images) > int(cfg.num_samples):
        log.warning(
            "grid_images=%d exceeds num_samples=%d: the grid shows %d images",
            int(cfg.grid_images),
            int(cfg.num_samples),
            int(cfg.num_samples),
        )
    if n_frames < g.frames:
        log.warning(
            "gif.frames=%d exceeds the %d states of a %d-evaluation sampler: writing %d frames", g.frames, n_eval + 1, n_eval, n_frames
        )
    return gif_n, n_frames


def sample(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Generate ``cfg.num_samples`` images into ``run_dir``; returns the summary written to sample.json."""
    run_dir = Path(run_dir)
    run = open_run(cfg, run_dir, validate_sample, OUTPUTS)
    pre, rt, diffusion = run.pre, run.rt, run.pre.diffusion
    sampler = run.sampler()  # sampler=exact_score samples with the training images' exact score
    n_eval = sampler.num_evaluations
    g = cfg.gif
    gif_n, n_frames = gif_counts(cfg, n_eval)
    states = frame_indices(n_eval + 1, n_frames) if n_frames else []
    real = None
    if n_frames and g.noise:  # load the data first: a missing dataset should fail before the sampling work
        real = real_images(cfg, pre, gif_n, "train", int(cfg.seed)).to(rt.device)

    run_dir.mkdir(parents=True, exist_ok=True)
    img_dir = run_dir / "images"
    if cfg.save_images:
        img_dir.mkdir(exist_ok=True)
        for old in img_dir.glob("[0-9][0-9][0-9][0-9][0-9][0-9].png"):  # overwrite=true: no stale samples of a bigger earlier run
            old.unlink()
    labels, per_row = sample_labels(cfg, pre)
    # one row per class: sample i is of class i % C, so the first C x per_row samples fill the rows
    grid_n = per_row * pre.model.num_classes if per_row else int(cfg.grid_images)
    n, bs, seed = int(cfg.num_samples), int(cfg.batch_size), int(cfg.seed)
    bar = tqdm(total=n_eval * -(-n // bs), desc=f"{cfg.sampler.name} x{n_eval}", unit="eval", disable=not cfg.progress, dynamic_ncols=True)
    rec = TrajectoryRecorder(sampler, states, gif_n, bar)
    grid: list[torch.Tensor] = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, n, bs):
            m = min(bs, n - start)
            batch_labels = None if labels is None else labels[start : start + m]
            x = run.generate(sampler, m, seed + start, m, float(cfg.guidance_scale), callback=rec, labels=batch_labels)
            rec.finish(x)
            if start < grid_n:
                grid.append(x[: grid_n - start])
            if cfg.save_images:
                for j, img in enumerate(x):
                    save_png(img, img_dir / f"{start + j:06d}.png")
    bar.close()
    seconds = time.perf_counter() - t0

    if per_row:
        shown = torch.cat(grid)
        save_grid(class_rows(shown, labels[: len(shown)], pre.model.num_classes, per_row), run_dir / "samples.png", nrow=per_row)
    else:
        save_grid(torch.cat(grid), run_dir / "samples.png")
    outputs = ["samples.png"]
    steps = state_steps(sampler, states)
    if n_frames:
        frames = [grid_frame(f, scale=int(g.scale)) for f in rec.frames()]
        write_gif(run_dir / "sampling.gif", frames, float(g.fps))
        outputs.append("sampling.gif")
        if real is not None:
            fwd = forward_states(diffusion, real, [k for k in steps if k is not None], seed)
            noise_frames = [grid_frame(real if k is None else fwd[k], scale=int(g.scale)) for k in reversed(steps)]
            write_gif(run_dir / "noise.gif", noise_frames, float(g.fps))
            outputs.append("noise.gif")
    if cfg.save_images:
        outputs.append("images")

    ou = diffusion.schedule.ou_times
    summary = {
        "ckpt": str(pre.path),
        "ckpt_step": pre.step,
        "use_ema": bool(cfg.use_ema),
        "sampler": OmegaConf.to_container(cfg.sampler, resolve=True),
        "timesteps": sampler.timesteps,
        "evaluations": n_eval,
        "num_samples": n,
        "batch_size": bs,
        "seed": seed,
        "num_classes": pre.model.num_classes,
        "class_label": None if cfg.class_label is None else int(cfg.class_label),
        "guidance_scale": float(cfg.guidance_scale) if pre.model.num_classes else None,
        "grid_rows": "one per class" if per_row else "plain",
        "device": str(rt.device),
        "precision": rt.precision,
        "seconds": round(seconds, 3),
        "seconds_per_image": round(seconds / n, 5),
        "gif": {
            "frames": n_frames,
            "fps": float(g.fps),
            "num_images": gif_n if n_frames else 0,
            "steps": steps,  # schedule step of each sampling.gif frame (null: the final sample); noise.gif runs them backwards
            "ou_times": [0.0 if k is None else float(ou[k]) for k in steps],
        },
        "outputs": outputs,
        "version": ddpm.__version__,
    }
    write_json(run_dir / "sample.json", summary)
    log.info(
        "%d samples with %s (%d evaluations) in %.1f s (%.3f s/image) -> %s", n, cfg.sampler.name, n_eval, seconds, seconds / n, run_dir
    )
    return summary
