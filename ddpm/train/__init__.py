"""``ddpm-train``: ``cli`` is the console script, ``run`` the job (:func:`train`), ``trainer`` the loop
(:class:`Trainer`, :class:`TrainCallback`), ``callbacks`` the evaluation and regimes hooks of the loop,
``config`` its range checks (its schema ``TrainConfig`` is shared, in :mod:`ddpm.config`)."""

from ddpm.train.callbacks import EvalCallback, RegimesCallback, build_callbacks
from ddpm.train.config import validate_train
from ddpm.train.run import train
from ddpm.train.trainer import (
    BudgetClock,
    TrainCallback,
    Trainer,
    TrainingDiverged,
    config_differences,
    lr_factor,
    parse_step_ranges,
)

__all__ = [
    "BudgetClock",
    "EvalCallback",
    "RegimesCallback",
    "TrainCallback",
    "Trainer",
    "TrainingDiverged",
    "config_differences",
    "lr_factor",
    "parse_step_ranges",
    "build_callbacks",
    "train",
    "validate_train",
]
