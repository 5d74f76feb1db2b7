"""``ddpm-visualize ckpt=PATH``: watch a trained model denoise real images, step by step.

Real images of the checkpoint's dataset are noised to each chosen schedule step k (``steps=``)
and/or Ornstein–Uhlenbeck time t = -½ log ᾱ (``times=``, mapped to the first step with t_k >= t),
then denoised back to x_0 with the chosen ``sampler`` (``sampler.steps`` evaluations, or all k + 1
steps when fewer remain). Written into the run dir:

- ``denoise_k<k>.png``: original / noised / denoised images for each start, and
  ``denoise_overview.png`` with all starts;
- ``final_vs_start.png``: MSE and SSIM (per image, scikit-image, ``data_range`` 2 on [-1, 1])
  of the denoised images against the start step, and ``trajectory.png``: the same for the
  prediction x̂_0 along each reverse trajectory;
- ``metrics.csv`` and ``metrics.json``: final MSE/SSIM per start (mean and std over images),
  with k, t, ᾱ and log SNR of the start;
- ``x0_strip.png``: x_k and x̂_0 along the reverse trajectory from the highest start;
- ``schedules.png``: ᾱ_k, log SNR and t_k of the linear / cosine / quadratic schedules;
- ``tb/``: the same plots and numbers in TensorBoard with ``tensorboard=true``.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

import ddpm
from ddpm.errors import ConfigError
from ddpm.generate import denoise_from, noise_to_step
from ddpm.gifs import frame_indices
from ddpm.pretrained import load_for_inference, network, real_images
from ddpm.quality import mse_per_image, ssim_per_image
from ddpm.runlock import check_outputs
from ddpm.samplers import build_sampler, make_eps_fn
from ddpm.schedules import NoiseSchedule
from ddpm.visualize.config import OUTPUTS, validate_visualize
from ddpm.visualize.plots import image_table, plot_mse_ssim, plot_schedules, schedule_curves

log = logging.getLogger("ddpm.visualize")

CSV_FIELDS = (
    "step", "ou_time", "requested_time", "alpha_bar", "log_snr", "evaluations",
    "mse_noised", "ssim_noised", "mse_denoised", "mse_denoised_std", "ssim_denoised", "ssim_denoised_std",
)  # fmt: skip


@dataclass
class Start:
    """One starting point of the reverse process.

    Args:
        step: schedule step k the images are noised to.
        ou_time: its OU time t_k = -½ log ᾱ_k.
        requested_time: the t asked for with ``times=`` (None when given as a step).
    """

    step: int
    ou_time: float
    requested_time: float | None = None


def resolve_starts(steps: list[int], times: list[float], schedule: NoiseSchedule) -> list[Start]:
    """Steps k and OU times t as sorted, distinct starting steps (a time maps to the first k with t_k >= t).

    Args:
        steps: schedule steps, 0 <= k < T.
        times: OU times, 0 < t <= t_{T-1}.
        schedule: the checkpoint's schedule.
    """
    T, ou = schedule.T, schedule.ou_times
    found: dict[int, Start] = {}
    for k in steps:
        if not 0 <= int(k) < T:
            raise ConfigError(f"step {k} is outside the schedule's 0..{T - 1}")
        if int(k) in found:
            log.warning("steps=%s holds k=%d twice: that start is denoised once", list(steps), int(k))
        found[int(k)] = Start(int(k), float(ou[int(k)]))
    for t in times:
        if t > float(ou[-1]) + 1e-9:
            raise ConfigError(f"time t={t} lies beyond the schedule's end t_{T - 1}={float(ou[-1]):.4f}")
        k = int(schedule.time_to_step(float(t)))
        if k in found:  # a step grid is coarse at small k: nearby times land on one step
            other = f"time t={found[k].requested_time:g}" if found[k].requested_time is not None else f"k={k} of steps={list(steps)}"
            log.warning("time t=%g lands on step k=%d (t_k=%.4f), as does %s: that start is denoised once", t, k, float(ou[k]), other)
        found.setdefault(k, Start(k, float(ou[k])))
        found[k].requested_time = float(t)
    return [found[k] for k in sorted(found)]


@dataclass
class Trajectory:
    """Callback recording x̂_0 quality (and strip frames) along one reverse trajectory.

    Args:
        x0: the original images.
        keep: evaluation indices whose x_k and x̂_0 are kept for the strip.
        keep_images: how many images the strip shows.
        n_eval: evaluations of the sampler.
    """

    x0: torch.Tensor
    keep: set[int]
    keep_images: int
    n_eval: int
    steps: list[int] = field(default_factory=list)
    mse: list[np.ndarray] = field(default_factory=list)
    ssim: list[np.ndarray] = field(default_factory=list)
    frames: list[tuple[int, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    bar: Any = None

    def __call__(self, i: int, k: int, x: torch.Tensor, x0_hat: torch.Tensor) -> None:
        self.steps.append(int(k))
        self.mse.append(mse_per_image(x0_hat, self.x0))
        self.ssim.append(ssim_per_image(x0_hat, self.x0))
        if self.n_eval - 1 - i in self.keep:
            n = self.keep_images
            self.frames.append((int(k), x[:n].detach().cpu().clone(), x0_hat[:n].detach().cpu().clone()))
        if self.bar is not None:
            self.bar.update(1)


def sampler_config(cfg: DictConfig, k: int) -> DictConfig:
    """The sampler config for a start at step k: at most k + 1 evaluations fit between k and 0."""
    if cfg.steps is None or cfg.steps <= k + 1:
        return cfg
    return OmegaConf.merge(cfg, {"steps": k + 1})


def _stats(a: np.ndarray) -> tuple[float, float]:
    return float(np.mean(a)), float(np.std(a))


def _k_t_label(k: int, t: float) -> str:
    return f"k={k}\nt={t:.3f}"


def visualize(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Noise, denoise and plot into ``run_dir``; returns the content of metrics.json."""
    validate_visualize(cfg)
    run_dir = Path(run_dir)
    check_outputs(run_dir, OUTPUTS, bool(cfg.overwrite))
    pre, rt = load_for_inference(cfg)
    diffusion, sched = pre.diffusion, pre.diffusion.schedule
    starts = resolve_starts(list(cfg.steps), list(cfg.times), sched)
    samplers = {}
    for st in starts:  # fail before any work
        samplers[st.step] = build_sampler(sampler_config(cfg.sampler, st.step), diffusion, max_step=st.step)
        if cfg.sampler.steps is not None and cfg.sampler.steps > st.step + 1:
            log.warning(
                "sampler.steps=%d exceeds the %d steps from k=%d down to 0: that start is denoised in %d evaluations",
                int(cfg.sampler.steps),
                st.step + 1,
                st.step,
                samplers[st.step].num_evaluations,
            )
    x0 = real_images(cfg, pre, int(cfg.num_images), cfg.split, int(cfg.seed)).to(rt.device)
    if len(x0) < int(cfg.num_images):
        log.warning("num_images=%d exceeds the %d images of the %s split: using %d", int(cfg.num_images), len(x0), cfg.split, len(x0))
    eps_fn = make_eps_fn(network(pre, cfg.runtime), diffusion, rt.autocast)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed, ou, abar, log_snr = int(cfg.seed), sched.ou_times, sched.alphas_cumprod, sched.log_snr
    strip_start = starts[-1].step
    strip_n = min(int(cfg.strip_images), len(x0))
    if strip_n < int(cfg.strip_images):
        log.warning("strip_images=%d exceeds the %d images: the x̂_0 strip shows %d", int(cfg.strip_images), len(x0), strip_n)
    strip_eval = samplers[strip_start].num_evaluations
    if int(cfg.strip_frames) > strip_eval:
        log.warning(
            "strip_frames=%d exceeds the %d evaluations from k=%d: the x̂_0 strip shows %d frames",
            int(cfg.strip_frames),
            strip_eval,
            strip_start,
            strip_eval,
        )

    rows, per_image, traj, noised, denoised = [], {}, {}, {}, {}
    bar = tqdm(
        total=sum(s.num_evaluations for s in samplers.values()), desc="denoising", unit="eval", disable=not cfg.progress, dynamic_ncols=True
    )
    with torch.inference_mode():
        for st in starts:
            k, sampler = st.step, samplers[st.step]
            n_eval = sampler.num_evaluations
            keep = set(frame_indices(n_eval, min(int(cfg.strip_frames), n_eval))) if k == strip_start else set()
            rec = Trajectory(x0, keep, strip_n, n_eval, bar=bar)
            x_k = noise_to_step(diffusion, x0, k, seed)
            x_den = denoise_from(eps_fn, sampler, x_k, seed, callback=rec)
            noised[k], denoised[k] = x_k.cpu(), x_den.cpu()
            m_n, s_n = mse_per_image(x_k, x0), ssim_per_image(x_k, x0)
            m_d, s_d = mse_per_image(x_den, x0), ssim_per_image(x_den, x0)
            rows.append(
                {
                    "step": k,
                    "ou_time": st.ou_time,
                    "requested_time": st.requested_time,
                    "alpha_bar": float(abar[k]),
                    "log_snr": float(log_snr[k]),
                    "evaluations": n_eval,
                    "mse_noised": float(m_n.mean()),
                    "ssim_noised": float(s_n.mean()),
                    "mse_denoised": _stats(m_d)[0],
                    "mse_denoised_std": _stats(m_d)[1],
                    "ssim_denoised": _stats(s_d)[0],
                    "ssim_denoised_std": _stats(s_d)[1],
                }
            )
            per_image[k] = {
                "mse_noised": m_n.tolist(),
                "ssim_noised": s_n.tolist(),
                "mse_denoised": m_d.tolist(),
                "ssim_denoised": s_d.tolist(),
            }
            mse_t, ssim_t = np.stack(rec.mse), np.stack(rec.ssim)  # (evaluations, images)
            traj[k] = {
                "steps": rec.steps,
                "mse": mse_t.mean(1).tolist(),
                "mse_std": mse_t.std(1).tolist(),
                "ssim": ssim_t.mean(1).tolist(),
                "ssim_std": ssim_t.std(1).tolist(),
            }
            if k == strip_start:
                strip = rec.frames
            log.info(
                "k=%d (t=%.3f): MSE %.4f -> %.4f, SSIM %.3f -> %.3f (%d evaluations)",
                k,
                st.ou_time,
                m_n.mean(),
                m_d.mean(),
                s_n.mean(),
                s_d.mean(),
                n_eval,
            )
    bar.close()

    x0_cpu = x0.cpu()
    for st in starts:
        k = st.step
        image_table(
            [("original", x0_cpu), (f"noised\nk={k}, t={st.ou_time:.3f}", noised[k]), ("denoised", denoised[k])],
            run_dir / f"denoise_k{k:04d}.png",
            title=f"{cfg.sampler.name}: noised to k={k} (t={st.ou_time:.3f}) and denoised in {samplers[k].num_evaluations} evaluations",
        )
    overview = [("original", x0_cpu)]
    for st in starts:
        overview += [(f"noised k={st.step}\nt={st.ou_time:.3f}", noised[st.step]), ("denoised", denoised[st.step])]
    image_table(overview, run_dir / "denoise_overview.png")

    k_arr = np.arange(sched.T)
    ou_np = ou.numpy()
    to_t = (lambda k: np.interp(k, k_arr, ou_np), lambda t: np.interp(t, ou_np, k_arr))
    col = {
        key: np.array([r[key] for r in rows]) for key in ("step", "mse_denoised", "mse_denoised_std", "ssim_denoised", "ssim_denoised_std")
    }
    plot_mse_ssim(
        {
            "denoised": {
                "x": col["step"],
                "mse": col["mse_denoised"],
                "mse_std": col["mse_denoised_std"],
                "ssim": col["ssim_denoised"],
                "ssim_std": col["ssim_denoised_std"],
            }
        },
        run_dir / "final_vs_start.png",
        xlabel="start step k",
        title=f"denoised vs original ({len(x0)} images, {cfg.sampler.name})",
        top_axis=("OU time t", *to_t),
    )
    plot_mse_ssim(
        {
            f"from k={k} (t={float(ou[k]):.2f})": {key: np.asarray(v) for key, v in {**tr, "x": tr["steps"]}.items()}
            for k, tr in traj.items()
        },
        run_dir / "trajectory.png",
        xlabel="step k along the reverse process",
        title="prediction x̂_0 vs original along each reverse trajectory",
        invert_x=True,
        top_axis=("OU time t", *to_t),
    )
    strip_rows = []
    for j in range(strip_n):
        strip_rows += [(f"image {j}\nx_k", torch.stack([f[1][j] for f in strip])), ("x̂_0", torch.stack([f[2][j] for f in strip]))]
    image_table(
        strip_rows,
        run_dir / "x0_strip.png",
        col_labels=[_k_t_label(f[0], float(ou[f[0]])) for f in strip],
        title=f"reverse process from k={strip_start}: state x_k and prediction x̂_0",
    )
    names = list(dict.fromkeys([*cfg.schedules, pre.cfg.schedule.name]))
    plot_schedules(
        schedule_curves(names, sched.T, pre.cfg.schedule),
        run_dir / "schedules.png",
        current=pre.cfg.schedule.name,
        marks=[s.step for s in starts],
    )

    with open(run_dir / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)
    result = {
        "ckpt": str(pre.path),
        "ckpt_step": pre.step,
        "dataset": pre.cfg.dataset.name,
        "split": cfg.split,
        "num_images": len(x0),
        "seed": seed,
        "pixel_range": [-1.0, 1.0],
        "ssim_data_range": 2.0,
        "schedule": OmegaConf.to_container(pre.cfg.schedule, resolve=True),
        "sampler": OmegaConf.to_container(cfg.sampler, resolve=True),
        "rows": rows,
        "per_image": {str(k): v for k, v in per_image.items()},
        "trajectory": {str(k): v for k, v in traj.items()},
        "version": ddpm.__version__,
    }
    (run_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    if cfg.tensorboard:
        log_tensorboard(run_dir, rows, traj)
    return result


def log_tensorboard(run_dir: Path, rows: list[dict], traj: dict[int, dict]) -> None:
    """Scalars (per start step, and along each trajectory) and every PNG of the run dir as images."""
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run_dir / "tb")) as w:
        for r in rows:
            for key in ("mse_noised", "ssim_noised", "mse_denoised", "ssim_denoised"):
                w.add_scalar(f"final/{key}", r[key], r["step"])
        for k, tr in traj.items():
            for s, m, q in zip(tr["steps"], tr["mse"], tr["ssim"], strict=True):
                w.add_scalar(f"trajectory_from_k{k}/mse_x0_hat", m, s)
                w.add_scalar(f"trajectory_from_k{k}/ssim_x0_hat", q, s)
        for png in sorted(run_dir.glob("*.png")):
            w.add_image(f"plots/{png.stem}", np.asarray(Image.open(png).convert("RGB")), dataformats="HWC")
