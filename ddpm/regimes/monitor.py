"""Regimes during training (``train.regimes_every``): memorisation and generalisation against steps.

At every regimes step (every ``regimes_every`` steps, or on a log grid of ``regimes_per_decade``
points per decade from ``regimes_every`` on) ``ddpm-train`` measures its EMA network and appends one
row to ``<run>/regimes.jsonl`` (and ``regimes/*`` scalars to TensorBoard):

- ``memorised_fraction`` (± ``memorised_se``, bootstrap): the share of ``train.regimes_samples``
  samples (the run's sampler, fixed seeds) that copy a training image under the copy criterion
  (``memorisation.threshold``, :mod:`ddpm.memorisation`), against the images the run saw (their
  mirrors too with ``dataset.hflip``);
- ``heldout_loss`` and ``train_loss``: the ε-MSE of the network on fixed held-out (test-split) and
  training images with the same noise and steps: the held-out loss is the quality figure whose best
  defines τ_gen, and ``heldout_loss - train_loss`` the generalisation gap;
- ``eps_gap_t_S`` and ``eps_gap_t_C``: the relative gap E|ε_θ - ε*|² / E|ε*|² on noised training
  images at the speciation time t_S = ½ log Λ and the collapse time t_C of the exact score (measured
  once, at the first call, by :func:`ddpm.regimes.collapse.measure_collapse`).

The memorisation-law collector (:mod:`ddpm.regimes.law`) reads ``regimes.jsonl``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from ddpm.data import load_dataset, to_model_range
from ddpm.memorisation import memorisation, reference_images
from ddpm.pretrained import Pretrained
from ddpm.regimes.collapse import measure_collapse
from ddpm.regimes.data import Points
from ddpm.regimes.spectrum import analyse_spectrum
from ddpm.regimes.trained import eps_gap, network_eps_fn
from ddpm.samplers import make_eps_fn
from ddpm.score import ExactScore

log = logging.getLogger("ddpm.regimes")

# Sizes of the once-per-run collapse measurement and of each gap estimate: seconds on a CPU.
COLLAPSE_QUERIES = 256
GAP_QUERIES = 64
LOSS_IMAGES = 512  # held-out and training images of the loss estimates (fixed noise and steps)
SAMPLE_SEED = 2_000_000  # seeds of the regimes samples: not those of the grids
LOG_FILE = "regimes.jsonl"


def regimes_steps(every: int, per_decade: int, max_steps: int) -> list[int]:
    """The steps at which the regimes are measured, in 1..max_steps.

    Args:
        every: ``train.regimes_every`` (0: never); the first step of a log grid.
        per_decade: ``train.regimes_per_decade``: 0 for every ``every`` steps, else that many
            log-spaced steps per decade from ``every`` (rounded, distinct) and always ``max_steps``.
        max_steps: the run's last step.
    """
    if every <= 0 or max_steps <= 0:
        return []
    if per_decade <= 0:
        return list(range(every, max_steps + 1, every))
    count = math.floor(per_decade * math.log10(max_steps / every)) + 1 if max_steps >= every else 0
    steps = {round(every * 10 ** (i / per_decade)) for i in range(count)}
    return sorted(s for s in steps | {max_steps} if 1 <= s <= max_steps)


class RegimesMonitor:
    """The exact score of a run's training images, its t_S and t_C, and the fixed loss batches.

    Args:
        trainer: the :class:`ddpm.train.Trainer` (its images, dataset, EMA network and sampler).
    """

    def __init__(self, trainer: Any) -> None:
        cfg = trainer.cfg
        hflip = bool(cfg.dataset.get("hflip", False))
        self.images = to_model_range(trainer.images.cpu())
        self.x = reference_images(self.images, hflip).flatten(1).double()
        reference = None
        if trainer.data_subset is not None:  # Λ of a subset's covariance (rank < d) would be too small: use the full split
            full = load_dataset(cfg.dataset, cfg.paths.data_dir, cfg.paths.cache_dir, "train")
            reference = to_model_range(full.images).flatten(1).double()
        points = Points(self.x, None, tuple(trainer.shape), "[-1, 1]", None, reference)
        self.score = ExactScore(self.x, None, "float32", 4096, trainer.rt.device)
        self.threshold = float(cfg.memorisation.threshold)
        spec, _, _ = analyse_spectrum(points)
        self.t_S = float(spec["t_S"])
        summary, _ = measure_collapse(self.score, 0.01, 3.0, 16, 6, COLLAPSE_QUERIES, 256, int(cfg.train.seed), 1.0)
        # no p_½ crossing on the grid: the Gaussian surrogate with the data spectrum stands in
        self.t_C = float(summary["t_C"]) if summary["t_C"] is not None else float(spec["t_C_gauss_spectral"])
        self.t_C_measured = summary["t_C"] is not None
        schedule = trainer.diffusion.schedule
        self.k_S, self.k_C = int(schedule.time_to_step(self.t_S)), int(schedule.time_to_step(self.t_C))
        self.heldout = self._heldout(cfg)
        g = torch.Generator().manual_seed(int(cfg.train.seed) + 17)
        self.loss_k = torch.randint(0, schedule.T, (LOSS_IMAGES,), generator=g)
        self.loss_noise = torch.randn(LOSS_IMAGES, *trainer.shape, generator=g)
        self.train_idx = torch.randint(0, len(self.images), (LOSS_IMAGES,), generator=g)
        log.info(
            "regimes: n=%d (%d reference images), d=%d, t_S=%.4f (k %d), t_C=%.4f (k %d, %s)",
            len(self.images),
            self.score.n,
            self.score.d,
            self.t_S,
            self.k_S,
            self.t_C,
            self.k_C,
            "measured" if self.t_C_measured else "Gaussian surrogate",
        )

    @staticmethod
    def _heldout(cfg: Any) -> torch.Tensor | None:
        """``LOSS_IMAGES`` test-split images in model range, or None for a dataset without one."""
        try:
            test = load_dataset(cfg.dataset, cfg.paths.data_dir, cfg.paths.cache_dir, "test")
        except Exception as exc:  # a folder of images has no test split: the held-out loss is left out
            log.warning("regimes: no held-out images for the held-out loss (%s)", exc)
            return None
        return to_model_range(test.images[:LOSS_IMAGES])

    @torch.no_grad()
    def _loss(self, trainer: Any, model: torch.nn.Module, x0: torch.Tensor) -> float:
        """ε-MSE of ``model`` on ``x0`` noised with the fixed steps and noise (the training loss's estimator, unweighted)."""
        m = len(x0)
        k, z = self.loss_k[:m].to(trainer.rt.device), self.loss_noise[:m].to(trainer.rt.device)
        x0 = x0.to(trainer.rt.device)
        xt = trainer.diffusion.q_sample(x0, k, z)
        net = make_eps_fn(model, trainer.diffusion, trainer.rt.autocast)
        total = 0.0
        for s in range(0, m, 256):
            eps = net(xt[s : s + 256], k[s : s + 256])
            total += float(((eps.float() - z[s : s + 256]) ** 2).mean(dim=(1, 2, 3)).sum())
        return total / m

    def measure(self, trainer: Any) -> dict[str, float]:
        """Memorised fraction, losses and ε-gaps of the trainer's EMA network now."""
        model = trainer.ema.module.eval()
        try:
            samples = trainer.ema_samples(int(trainer.cfg.train.regimes_samples), seed=SAMPLE_SEED)
            copies = memorisation(samples.flatten(1).double().cpu(), self.x, self.threshold)
            pre = Pretrained(model, trainer.diffusion, trainer.cfg, trainer.step, trainer.run_dir)
            net = network_eps_fn(pre, trainer.rt.device)
            gap = eps_gap(net, self.score, pre, self.x, sorted({self.k_S, self.k_C}), GAP_QUERIES, int(trainer.cfg.train.seed))
            train_loss = self._loss(trainer, model, self.images[self.train_idx])
            heldout_loss = None if self.heldout is None else self._loss(trainer, model, self.heldout)
        finally:
            model.train()
        by_k = dict(zip(gap["k"].tolist(), gap["gap"].tolist(), strict=True))
        values = {
            "memorised_fraction": copies.fraction,
            "memorised_se": copies.fraction_se,
            "train_loss": train_loss,
            "eps_gap_t_S": float(by_k[self.k_S]),
            "eps_gap_t_C": float(by_k[self.k_C]),
        }
        if heldout_loss is not None:
            values["heldout_loss"] = heldout_loss
        return values


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON row, dropping rows of steps at or after it first (a resumed run repeats them)."""
    rows = [r for r in read_rows(path) if r["step"] < row["step"]] if path.is_file() else []
    from ddpm.checkpoint import atomic_write

    text = "".join(json.dumps(r) + "\n" for r in [*rows, row])
    atomic_write(path, lambda f: f.write(text.encode()))


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``regimes.jsonl`` file, in step order."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["step"])


def log_regimes(trainer: Any, writer: Any) -> dict[str, float]:
    """Measure the regimes of ``trainer`` now; write them to ``regimes.jsonl``, TensorBoard (``regimes/*``) and the log.

    Args:
        trainer: the running :class:`ddpm.train.Trainer`.
        writer: its ``SummaryWriter`` (None: no TensorBoard).
    """
    monitor = getattr(trainer, "_regimes_monitor", None)
    if monitor is None:
        monitor = trainer._regimes_monitor = RegimesMonitor(trainer)
    values = monitor.measure(trainer)
    log.info(
        "step %d regimes: memorised %.3f ± %.3f, held-out loss %s, ε-gap %.4g at t_S=%.3f, %.4g at t_C=%.3f",
        trainer.step,
        values["memorised_fraction"],
        values["memorised_se"],
        f"{values['heldout_loss']:.5f}" if "heldout_loss" in values else "n/a",
        values["eps_gap_t_S"],
        monitor.t_S,
        values["eps_gap_t_C"],
        monitor.t_C,
    )
    row = {
        "step": trainer.step,
        "n": len(monitor.images),
        "d": monitor.score.d,
        "part": trainer.cfg.dataset.get("subset_part"),
        "samples": int(trainer.cfg.train.regimes_samples),
        "threshold": monitor.threshold,
        "t_S": monitor.t_S,
        "t_C": monitor.t_C,
        **values,
    }
    append_row(trainer.run_dir / LOG_FILE, row)
    if writer is not None:
        for key, value in values.items():
            writer.add_scalar(f"regimes/{key}", value, trainer.step)
    return values
