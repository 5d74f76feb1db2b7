"""Headless matplotlib figures: schedule comparison, metric curves and labelled image strips.

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas directly, so no
display, GUI backend or pyplot global state is involved.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from omegaconf import OmegaConf

from ddpm.checkpoint import atomic_write
from ddpm.config import ScheduleConfig
from ddpm.data import from_model_range
from ddpm.schedules import NoiseSchedule


def _save(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` into ``path`` atomically (its format from the suffix)."""
    path = Path(path)
    FigureCanvasAgg(fig)
    return atomic_write(path, lambda f: fig.savefig(f, dpi=fig.dpi, format=path.suffix.lstrip(".") or "png"))


def schedule_config(name: str, T: int, stored=None):
    """The ``schedule`` config of ``name`` with ``T`` steps: ``stored`` (a checkpoint's) when it is
    that schedule, else the packaged ``conf/schedule/<name>.yaml``."""
    if stored is not None and stored.name == name:
        cfg = OmegaConf.create(OmegaConf.to_container(stored))
    else:
        packaged = OmegaConf.create(resources.files("ddpm.conf").joinpath("schedule", f"{name}.yaml").read_text())
        cfg = OmegaConf.merge(OmegaConf.structured(ScheduleConfig), packaged)
    cfg.T = int(T)
    return cfg


def schedule_curves(names: Sequence[str], T: int, stored=None) -> dict[str, dict[str, np.ndarray]]:
    """ᾱ_k, log SNR_k = log(ᾱ/(1-ᾱ)) and OU time t_k = -½ log ᾱ_k of each named schedule.

    Args:
        names: schedule names (linear, cosine, quadratic).
        T: steps of every schedule.
        stored: a checkpoint's schedule config, used for its own schedule's parameters.
    """
    out = {}
    for name in names:
        s = NoiseSchedule.from_config(schedule_config(name, T, stored))
        out[name] = {"alpha_bar": s.alphas_cumprod.numpy(), "log_snr": s.log_snr.numpy(), "ou_time": s.ou_times.numpy()}
    return out


def plot_schedules(
    curves: dict[str, dict[str, np.ndarray]], path: str | Path, current: str | None = None, marks: Sequence[int] = ()
) -> Path:
    """Three panels against the step k: ᾱ_k, log SNR and the OU time t_k = -½ log ᾱ_k.

    Args:
        curves: output of :func:`schedule_curves`.
        path: PNG file to write.
        current: the checkpoint's schedule (drawn thicker, with ``marks``).
        marks: steps to mark on the current schedule (e.g. where images were noised to).
    """
    fig = Figure(figsize=(13, 3.8), dpi=100, layout="constrained")
    axes = fig.subplots(1, 3)
    panels = [("alpha_bar", "ᾱ_k"), ("log_snr", "log SNR = log(ᾱ/(1-ᾱ))"), ("ou_time", "OU time t = -½ log ᾱ")]
    for ax, (key, label) in zip(axes, panels, strict=True):
        for name, c in curves.items():
            k = np.arange(len(c[key]))
            lw = 2.5 if name == current else 1.3
            ax.plot(k, c[key], lw=lw, label=f"{name} (T={len(k)}, t_T={c['ou_time'][-1]:.2f})" if key == "ou_time" else name)
            if name == current and len(marks):
                m = np.asarray(marks)
                ax.plot(m, c[key][m], "o", color="k", ms=4)
        ax.set_xlabel("step k")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[2].legend(fontsize=8)
    return _save(fig, path)


def plot_mse_ssim(
    series: dict[str, dict[str, np.ndarray]], path: str | Path, xlabel: str, title: str, invert_x: bool = False, top_axis=None
) -> Path:
    """MSE (left) and SSIM (right) curves, mean with a ±1 std band, one line per series.

    Args:
        series: label -> arrays ``x``, ``mse``, ``mse_std``, ``ssim``, ``ssim_std``.
        path: PNG file to write.
        xlabel: x label.
        title: figure title.
        invert_x: draw x decreasing (the reverse process runs from high to low steps).
        top_axis: optional (label, forward, inverse) for a secondary x axis (e.g. OU time of a step).
    """
    fig = Figure(figsize=(11, 3.8), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2)
    for label, c in series.items():
        for ax, key in zip(axes, ("mse", "ssim"), strict=True):
            (line,) = ax.plot(c["x"], c[key], marker="o" if len(c["x"]) < 30 else None, ms=3, label=label)
            ax.fill_between(c["x"], c[key] - c[f"{key}_std"], c[key] + c[f"{key}_std"], color=line.get_color(), alpha=0.15)
    for ax, yl in zip(axes, ("MSE vs original (range [-1, 1])", "SSIM vs original"), strict=True):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
        if invert_x:
            ax.invert_xaxis()
        if top_axis is not None:
            sec = ax.secondary_xaxis("top", functions=(top_axis[1], top_axis[2]))
            sec.xaxis.set_major_locator(MaxNLocator(5))
            sec.set_xlabel(top_axis[0])
    if len(series) > 1:
        axes[0].legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def image_table(
    rows: Sequence[tuple[str, torch.Tensor]],
    path: str | Path,
    col_labels: Sequence[str] | None = None,
    title: str | None = None,
    cell: float = 0.9,
) -> Path:
    """A table of images: one labelled row per (label, images (N, C, H, W) in [-1, 1]).

    Args:
        rows: (row label, images); all rows have the same number of images.
        path: PNG file to write.
        col_labels: optional column titles.
        title: optional figure title.
        cell: inches per image.
    """
    n_rows, n_cols = len(rows), max(r[1].shape[0] for r in rows)
    fig = Figure(figsize=(1.6 + cell * n_cols, 0.4 + cell * n_rows + (0.3 if col_labels else 0)), dpi=100, layout="constrained")
    axes = np.atleast_2d(fig.subplots(n_rows, n_cols, squeeze=False))
    for r, (label, imgs) in enumerate(rows):
        arr = from_model_range(imgs.detach().cpu()).numpy()
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for sp in ax.spines.values():
                sp.set_visible(False)
            if c < len(arr):
                img = arr[c]
                ax.imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
            if r == 0 and col_labels:
                ax.set_title(col_labels[c], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)
