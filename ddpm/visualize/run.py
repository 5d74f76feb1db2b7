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
import io
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
from ddpm.inference import Inference, open_run, write_bytes, write_json
from ddpm.pretrained import real_images
from ddpm.quality import mse_per_image, ssim_per_image
from ddpm.samplers import Sampler
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


@dataclass
class Denoised:
    """The outcome of denoising every start: images, numbers and the x̂_0 strip.

    Args:
        rows: one metrics.csv row per start.
        per_image: MSE / SSIM per image, by start step.
        traj: x̂_0 quality along each reverse trajectory, by start step.
        noised: the noised images x_k, by start step (CPU).
        denoised: their reconstructions, by start step (CPU).
        strip: (k, x_k, x̂_0) frames along the trajectory from the highest start.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    per_image: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    traj: dict[int, dict[str, list]] = field(default_factory=dict)
    noised: dict[int, torch.Tensor] = field(default_factory=dict)
    denoised: dict[int, torch.Tensor] = field(default_factory=dict)
    strip: list[tuple[int, torch.Tensor, torch.Tensor]] = field(default_factory=list)


def build_samplers(cfg: DictConfig, run: Inference, starts: list[Start]) -> dict[int, Sampler]:
    """One sampler per start step (built before any work, so that a bad setting fails at once).

    Args:
        cfg: the ``visualize`` config.
        run: the loaded checkpoint.
        starts: the starting points.
    """
    samplers = {}
    for st in starts:
        samplers[st.step] = run.sampler(sampler_config(cfg.sampler, st.step), max_step=st.step)
        if cfg.sampler.steps is not None and cfg.sampler.steps > st.step + 1:
            log.warning(
                "sampler.steps=%d exceeds the %d steps from k=%d down to 0: that start is denoised in %d evaluations",
                int(cfg.sampler.steps),
                st.step + 1,
                st.step,
                samplers[st.step].num_evaluations,
            )
    return samplers


def strip_size(cfg: DictConfig, n_images: int, strip_eval: int, strip_start: int) -> int:
    """The images of the x̂_0 strip, clamped to the images there are (each clamp said in the log).

    Args:
        cfg: the ``visualize`` config (``strip_images``, ``strip_frames``).
        n_images: the real images being denoised.
        strip_eval: the evaluations of the strip's sampler.
        strip_start: the start step of the strip.
    """
    strip_n = min(int(cfg.strip_images), n_images)
    if strip_n < int(cfg.strip_images):
        log.warning("strip_images=%d exceeds the %d images: the x̂_0 strip shows %d", int(cfg.strip_images), n_images, strip_n)
    if int(cfg.strip_frames) > strip_eval:
        log.warning(
            "strip_frames=%d exceeds the %d evaluations from k=%d: the x̂_0 strip shows %d frames",
            int(cfg.strip_frames),
            strip_eval,
            strip_start,
            strip_eval,
        )
    return strip_n


def denoise_start(run: Inference, st: Start, sampler: Sampler, x0: torch.Tensor, seed: int, rec: Trajectory, out: Denoised) -> None:
    """Noise ``x0`` to the start's step, denoise it back and record the numbers into ``out``.

    Args:
        run: the loaded checkpoint.
        st: the start.
        sampler: its sampler (built with ``max_step=st.step``).
        x0: the original images on the device.
        seed: image i's forward noise is seeded ``seed + i``.
        rec: the trajectory recorder passed to the sampler.
        out: collects the results.
    """
    k, sched = st.step, run.pre.diffusion.schedule
    x_k = noise_to_step(run.pre.diffusion, x0, k, seed)
    x_den = denoise_from(run.eps_fn(), sampler, x_k, seed, callback=rec)
    out.noised[k], out.denoised[k] = x_k.cpu(), x_den.cpu()
    m_n, s_n = mse_per_image(x_k, x0), ssim_per_image(x_k, x0)
    m_d, s_d = mse_per_image(x_den, x0), ssim_per_image(x_den, x0)
    out.rows.append(
        {
            "step": k,
            "ou_time": st.ou_time,
            "requested_time": st.requested_time,
            "alpha_bar": float(sched.alphas_cumprod[k]),
            "log_snr": float(sched.log_snr[k]),
            "evaluations": sampler.num_evaluations,
            "mse_noised": float(m_n.mean()),
            "ssim_noised": float(s_n.mean()),
            "mse_denoised": _stats(m_d)[0],
            "mse_denoised_std": _stats(m_d)[1],
            "ssim_denoised": _stats(s_d)[0],
            "ssim_denoised_std": _stats(s_d)[1],
        }
    )
    out.per_image[k] = {
        "mse_noised": m_n.tolist(),
        "ssim_noised": s_n.tolist(),
        "mse_denoised": m_d.tolist(),
        "ssim_denoised": s_d.tolist(),
    }
    mse_t, ssim_t = np.stack(rec.mse), np.stack(rec.ssim)  # (evaluations, images)
    out.traj[k] = {
        "steps": rec.steps,
        "mse": mse_t.mean(1).tolist(),
        "mse_std": mse_t.std(1).tolist(),
        "ssim": ssim_t.mean(1).tolist(),
        "ssim_std": ssim_t.std(1).tolist(),
    }
    log.info(
        "k=%d (t=%.3f): MSE %.4f -> %.4f, SSIM %.3f -> %.3f (%d evaluations)",
        k,
        st.ou_time,
        m_n.mean(),
        m_d.mean(),
        s_n.mean(),
        s_d.mean(),
        sampler.num_evaluations,
    )


def denoise_all(
    cfg: DictConfig, run: Inference, starts: list[Start], samplers: dict[int, Sampler], x0: torch.Tensor, strip_n: int
) -> Denoised:
    """Denoise ``x0`` from every start; the highest start also records the x̂_0 strip.

    Args:
        cfg: the ``visualize`` config.
        run: the loaded checkpoint.
        starts: the starting points.
        samplers: one per start step (:func:`build_samplers`).
        x0: the original images on the device.
        strip_n: images in the strip.
    """
    out, strip_start = Denoised(), starts[-1].step
    total = sum(s.num_evaluations for s in samplers.values())
    bar = tqdm(total=total, desc="denoising", unit="eval", disable=not cfg.progress, dynamic_ncols=True)
    with torch.inference_mode():
        for st in starts:
            n_eval = samplers[st.step].num_evaluations
            keep = set(frame_indices(n_eval, min(int(cfg.strip_frames), n_eval))) if st.step == strip_start else set()
            rec = Trajectory(x0, keep, strip_n, n_eval, bar=bar)
            denoise_start(run, st, samplers[st.step], x0, int(cfg.seed), rec, out)
            if st.step == strip_start:
                out.strip = rec.frames
    bar.close()
    return out


def plot_denoising(
    cfg: DictConfig, run_dir: Path, starts: list[Start], samplers: dict[int, Sampler], x0: torch.Tensor, den: Denoised
) -> None:
    """denoise_k<k>.png and denoise_overview.png: original, noised and denoised images per start.

    Args:
        cfg: the ``visualize`` config.
        run_dir: where the figures go.
        starts: the starting points.
        samplers: one per start step.
        x0: the original images.
        den: the outcome of :func:`denoise_all`.
    """
    x0_cpu = x0.cpu()
    for st in starts:
        k = st.step
        image_table(
            [("original", x0_cpu), (f"noised\nk={k}, t={st.ou_time:.3f}", den.noised[k]), ("denoised", den.denoised[k])],
            run_dir / f"denoise_k{k:04d}.png",
            title=f"{cfg.sampler.name}: noised to k={k} (t={st.ou_time:.3f}) and denoised in {samplers[k].num_evaluations} evaluations",
        )
    overview = [("original", x0_cpu)]
    for st in starts:
        overview += [(f"noised k={st.step}\nt={st.ou_time:.3f}", den.noised[st.step]), ("denoised", den.denoised[st.step])]
    image_table(overview, run_dir / "denoise_overview.png")


def plot_quality(cfg: DictConfig, run: Inference, run_dir: Path, starts: list[Start], n_images: int, den: Denoised, strip_n: int) -> None:
    """final_vs_start.png, trajectory.png, x0_strip.png and schedules.png.

    Args:
        cfg: the ``visualize`` config.
        run: the loaded checkpoint.
        run_dir: where the figures go.
        starts: the starting points.
        n_images: the images denoised.
        den: the outcome of :func:`denoise_all`.
        strip_n: images in the strip.
    """
    sched, pre = run.pre.diffusion.schedule, run.pre
    ou = sched.ou_times
    k_arr, ou_np = np.arange(sched.T), ou.numpy()
    to_t = (lambda k: np.interp(k, k_arr, ou_np), lambda t: np.interp(t, ou_np, k_arr))
    col = {
        key: np.array([r[key] for r in den.rows])
        for key in ("step", "mse_denoised", "mse_denoised_std", "ssim_denoised", "ssim_denoised_std")
    }
    final = {
        "x": col["step"],
        "mse": col["mse_denoised"],
        "mse_std": col["mse_denoised_std"],
        "ssim": col["ssim_denoised"],
        "ssim_std": col["ssim_denoised_std"],
    }
    plot_mse_ssim(
        {"denoised": final},
        run_dir / "final_vs_start.png",
        xlabel="start step k",
        title=f"denoised vs original ({n_images} images, {cfg.sampler.name})",
        top_axis=("OU time t", *to_t),
    )
    plot_mse_ssim(
        {
            f"from k={k} (t={float(ou[k]):.2f})": {key: np.asarray(v) for key, v in {**tr, "x": tr["steps"]}.items()}
            for k, tr in den.traj.items()
        },
        run_dir / "trajectory.png",
        xlabel="step k along the reverse process",
        title="prediction x̂_0 vs original along each reverse trajectory",
        invert_x=True,
        top_axis=("OU time t", *to_t),
    )
    strip, strip_rows = den.strip, []
    for j in range(strip_n):
        strip_rows += [(f"image {j}\nx_k", torch.stack([f[1][j] for f in strip])), ("x̂_0", torch.stack([f[2][j] for f in strip]))]
    image_table(
        strip_rows,
        run_dir / "x0_strip.png",
        col_labels=[_k_t_label(f[0], float(ou[f[0]])) for f in strip],
        title=f"reverse process from k={starts[-1].step}: state x_k and prediction x̂_0",
    )
    names = list(dict.fromkeys([*cfg.schedules, pre.cfg.schedule.name]))
    plot_schedules(
        schedule_curves(names, sched.T, pre.cfg.schedule),
        run_dir / "schedules.png",
        current=pre.cfg.schedule.name,
        marks=[s.step for s in starts],
    )


def write_metrics(cfg: DictConfig, run: Inference, run_dir: Path, n_images: int, den: Denoised) -> dict[str, Any]:
    """metrics.csv and metrics.json (atomically); returns the content of metrics.json.

    Args:
        cfg: the ``visualize`` config.
        run: the loaded checkpoint.
        run_dir: where the files go.
        n_images: the images denoised.
        den: the outcome of :func:`denoise_all`.
    """
    table = io.StringIO(newline="")
    w = csv.DictWriter(table, fieldnames=CSV_FIELDS)
    w.writeheader()
    w.writerows(den.rows)
    write_bytes(run_dir / "metrics.csv", table.getvalue())
    pre = run.pre
    result = {
        "ckpt": str(pre.path),
        "ckpt_step": pre.step,
        "dataset": pre.cfg.dataset.name,
        "split": cfg.split,
        "num_images": n_images,
        "seed": int(cfg.seed),
        "pixel_range": [-1.0, 1.0],
        "ssim_data_range": 2.0,
        "schedule": OmegaConf.to_container(pre.cfg.schedule, resolve=True),
        "sampler": OmegaConf.to_container(cfg.sampler, resolve=True),
        "rows": den.rows,
        "per_image": {str(k): v for k, v in den.per_image.items()},
        "trajectory": {str(k): v for k, v in den.traj.items()},
        "version": ddpm.__version__,
    }
    write_json(run_dir / "metrics.json", result)
    return result


def visualize(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Noise, denoise and plot into ``run_dir``; returns the content of metrics.json.

    Args:
        cfg: the ``visualize`` config.
        run_dir: the run dir; an earlier run's outputs there are replaced only with ``overwrite=true``.
    """
    run_dir = Path(run_dir)
    run = open_run(cfg, run_dir, validate_visualize, OUTPUTS)
    starts = resolve_starts(list(cfg.steps), list(cfg.times), run.pre.diffusion.schedule)
    samplers = build_samplers(cfg, run, starts)  # fail before any work
    x0 = real_images(cfg, run.pre, int(cfg.num_images), cfg.split, int(cfg.seed)).to(run.device)
    if len(x0) < int(cfg.num_images):
        log.warning("num_images=%d exceeds the %d images of the %s split: using %d", int(cfg.num_images), len(x0), cfg.split, len(x0))
    run_dir.mkdir(parents=True, exist_ok=True)
    strip_n = strip_size(cfg, len(x0), samplers[starts[-1].step].num_evaluations, starts[-1].step)
    den = denoise_all(cfg, run, starts, samplers, x0, strip_n)
    plot_denoising(cfg, run_dir, starts, samplers, x0, den)
    plot_quality(cfg, run, run_dir, starts, len(x0), den, strip_n)
    result = write_metrics(cfg, run, run_dir, len(x0), den)
    if cfg.tensorboard:
        log_tensorboard(run_dir, den.rows, den.traj)
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
