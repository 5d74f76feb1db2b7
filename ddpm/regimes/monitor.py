"""Regimes during training (``train.regimes_every``): how far the network is from memorising.

Every ``regimes_every`` steps ``ddpm-train`` logs to TensorBoard, for its EMA network against the
exact empirical score of its own training images (the ``dataset.n`` subset or all of them):

- ``regimes/memorised_fraction``: the share of ``train.regimes_samples`` samples (the run's
  sampler, fixed seeds) whose nearest training image is 3x closer than the second nearest;
- ``regimes/eps_gap_t_S`` and ``regimes/eps_gap_t_C``: the relative gap E|ε_θ - ε*|² / E|ε*|² on
  noised training images at the speciation time t_S = ½ log Λ and the collapse time t_C of the
  exact score (measured once, at the first call, by :func:`ddpm.regimes.collapse.measure_collapse`).

The pieces are those of ``ddpm-regimes regimes=trained`` (:mod:`ddpm.regimes.trained`).
"""

from __future__ import annotations

import logging
from typing import Any

from ddpm.data import load_dataset, to_model_range
from ddpm.memorisation import DEFAULT_THRESHOLD
from ddpm.pretrained import Pretrained
from ddpm.regimes.collapse import measure_collapse
from ddpm.regimes.data import Points
from ddpm.regimes.score import ExactScore
from ddpm.regimes.spectrum import analyse_spectrum
from ddpm.regimes.tracking import end_statistics
from ddpm.regimes.trained import eps_gap, network_eps_fn

log = logging.getLogger("ddpm.regimes")

# Sizes of the once-per-run collapse measurement and of each gap estimate: seconds on a CPU.
COLLAPSE_QUERIES = 256
GAP_QUERIES = 64


class RegimesMonitor:
    """The exact score of a run's training images, its t_S and t_C, measured once.

    Args:
        trainer: the :class:`ddpm.train.Trainer` (its images, dataset, EMA network and sampler).
    """

    def __init__(self, trainer: Any) -> None:
        cfg = trainer.cfg
        self.x = to_model_range(trainer.images.cpu()).flatten(1).double()
        reference = None
        if trainer.data_subset is not None:  # Λ of a subset's covariance (rank < d) would be too small: use the full split
            full = load_dataset(cfg.dataset, cfg.paths.data_dir, cfg.paths.cache_dir, "train")
            reference = to_model_range(full.images).flatten(1).double()
        points = Points(self.x, None, tuple(trainer.shape), "[-1, 1]", None, reference)
        self.score = ExactScore(self.x, None, "float32", 4096, trainer.rt.device)
        spec, _, _ = analyse_spectrum(points)
        self.t_S = float(spec["t_S"])
        summary, _ = measure_collapse(self.score, 0.01, 3.0, 16, 6, COLLAPSE_QUERIES, 256, int(cfg.train.seed), 1.0)
        # no p_½ crossing on the grid: the Gaussian surrogate with the data spectrum stands in
        self.t_C = float(summary["t_C"]) if summary["t_C"] is not None else float(spec["t_C_gauss_spectral"])
        self.t_C_measured = summary["t_C"] is not None
        schedule = trainer.diffusion.schedule
        self.k_S, self.k_C = int(schedule.time_to_step(self.t_S)), int(schedule.time_to_step(self.t_C))
        log.info(
            "regimes: n=%d, d=%d, t_S=%.4f (k %d), t_C=%.4f (k %d, %s)",
            self.score.n,
            self.score.d,
            self.t_S,
            self.k_S,
            self.t_C,
            self.k_C,
            "measured" if self.t_C_measured else "Gaussian surrogate",
        )

    def measure(self, trainer: Any) -> dict[str, float]:
        """Memorised fraction and ε-gaps of the trainer's EMA network now."""
        model = trainer.ema.module.eval()
        try:
            samples = trainer.ema_samples(int(trainer.cfg.train.regimes_samples), seed=2_000_000)
            ends = end_statistics(self.score, samples.flatten(1).double().cpu(), DEFAULT_THRESHOLD)
            pre = Pretrained(model, trainer.diffusion, trainer.cfg, trainer.step, trainer.run_dir)
            net = network_eps_fn(pre, trainer.rt.device)
            gap = eps_gap(net, self.score, pre, self.x, sorted({self.k_S, self.k_C}), GAP_QUERIES, int(trainer.cfg.train.seed))
        finally:
            model.train()
        by_k = dict(zip(gap["k"].tolist(), gap["gap"].tolist(), strict=True))
        return {
            "memorised_fraction": ends["memorised_fraction"],
            "eps_gap_t_S": float(by_k[self.k_S]),
            "eps_gap_t_C": float(by_k[self.k_C]),
        }


def log_regimes(trainer: Any, writer: Any) -> dict[str, float]:
    """Measure the regimes of ``trainer`` now and write them to TensorBoard (``regimes/*``) and the log.

    Args:
        trainer: the running :class:`ddpm.train.Trainer`.
        writer: its ``SummaryWriter`` (None: log only).
    """
    monitor = getattr(trainer, "_regimes_monitor", None)
    if monitor is None:
        monitor = trainer._regimes_monitor = RegimesMonitor(trainer)
    values = monitor.measure(trainer)
    log.info(
        "step %d regimes: memorised %.3f, ε-gap %.4g at t_S=%.3f, %.4g at t_C=%.3f",
        trainer.step,
        values["memorised_fraction"],
        values["eps_gap_t_S"],
        monitor.t_S,
        values["eps_gap_t_C"],
        monitor.t_C,
    )
    if writer is not None:
        for key, value in values.items():
            writer.add_scalar(f"regimes/{key}", value, trainer.step)
    return values
