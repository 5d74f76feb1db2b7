"""The work ``ddpm-train`` does beside training, as :class:`ddpm.train.trainer.TrainCallback` hooks of the
loop: ``train.eval_every`` (sample scores and ``best.pt``) and ``train.regimes_every`` (the memorised
fraction and the ε-gaps, :mod:`ddpm.regimes.monitor`). :func:`build_callbacks` assembles those a config
asks for; the loop itself imports neither ``ddpm.evaluate`` nor ``ddpm.regimes``.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from ddpm.checkpoint import FORMAT as CHECKPOINT_FORMAT
from ddpm.checkpoint import atomic_save
from ddpm.train.trainer import TrainCallback, Trainer

log = logging.getLogger("ddpm.train")


class EvalCallback(TrainCallback):
    """``train.eval_every``: domain FID (and the other sample scores) of ``train.eval_samples`` EMA samples
    every ``every`` steps and at the end; keeps ``checkpoints/best.pt`` at the lowest FID so far. Samples
    use seeds the grids do not.

    Args:
        every: steps between evaluations (> 0).
    """

    def __init__(self, every: int) -> None:
        self.every = int(every)
        self.scorer = None  # built on the first evaluation (it loads the domain classifier)

    def on_step(self, trainer: Trainer, writer: Any) -> None:
        if trainer.step % self.every == 0:
            self.evaluate(trainer, writer)

    def on_end(self, trainer: Trainer, writer: Any) -> None:
        if trainer.step % self.every:  # the last step was not evaluated yet
            self.evaluate(trainer, writer)

    def evaluate(self, trainer: Trainer, writer: Any) -> dict[str, float] | None:
        """Score the EMA samples now (main rank only); returns the scores.

        Args:
            trainer: the running trainer.
            writer: its ``SummaryWriter`` (None: no TensorBoard).
        """
        if not trainer.rt.is_main:
            return None
        cfg = trainer.cfg
        if self.scorer is None:
            from ddpm.evaluate.sample_quality import SampleScorer

            self.scorer = SampleScorer(cfg.dataset, cfg.paths.data_dir, cfg.paths.cache_dir, trainer.rt.device)
        scores = self.scorer.score(trainer.ema_samples(cfg.train.eval_samples, seed=1_000_000))
        log.info("step %d eval %s", trainer.step, " ".join(f"{k} {v:.4g}" for k, v in scores.items()))
        if writer is not None:
            for key, value in scores.items():
                writer.add_scalar(f"eval/{key}", value, trainer.step)
        if scores["fid"] < trainer.best_fid:
            trainer.best_fid = float(scores["fid"])
            atomic_save({"format": CHECKPOINT_FORMAT, **trainer.state_dict(), "eval": scores}, trainer.ckpt_dir / "best.pt")
            log.info("best.pt: FID %.3f at step %d", trainer.best_fid, trainer.step)
        return scores


class RegimesCallback(TrainCallback):
    """``train.regimes_every``: the memorised fraction, the losses and the ε-gaps at t_S and t_C
    (:func:`ddpm.regimes.monitor.log_regimes`) at the steps of :func:`ddpm.regimes.monitor.regimes_steps`;
    on a log grid (``train.regimes_per_decade``) a checkpoint at each, which ddpm-regimes can time the collapse at.

    Args:
        every: ``train.regimes_every`` (> 0).
        per_decade: ``train.regimes_per_decade`` (0: every ``every`` steps).
        max_steps: ``train.max_steps``.
        ckpt_every: ``train.ckpt_every`` (its steps have a checkpoint already).
    """

    def __init__(self, every: int, per_decade: int, max_steps: int, ckpt_every: int) -> None:
        from ddpm.regimes.monitor import regimes_steps

        self.at = set(regimes_steps(every, per_decade, max_steps))
        self.per_decade, self.ckpt_every = int(per_decade), int(ckpt_every)

    def on_step(self, trainer: Trainer, writer: Any) -> None:
        if trainer.step in self.at and trainer.rt.is_main:
            from ddpm.regimes.monitor import log_regimes

            log_regimes(trainer, writer)
            if self.per_decade and not (self.ckpt_every and trainer.step % self.ckpt_every == 0):
                trainer.save()

    def writes_checkpoint(self, step: int) -> bool:
        return bool(self.per_decade) and step in self.at


def build_callbacks(cfg: DictConfig) -> list[TrainCallback]:
    """The callbacks a ``train`` config asks for, in the order they run after each step.

    Args:
        cfg: the composed ``train`` config.
    """
    tc = cfg.train
    out: list[TrainCallback] = []
    if tc.eval_every:
        out.append(EvalCallback(tc.eval_every))
    if tc.regimes_every:
        out.append(RegimesCallback(tc.regimes_every, tc.regimes_per_decade, tc.max_steps, tc.ckpt_every))
    return out
