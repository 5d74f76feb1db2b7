"""``ddpm-train``: ``cli`` is the console script, ``trainer`` holds the loop (:class:`Trainer`, :func:`train`),
``config`` its range checks (its schema ``TrainConfig`` is shared, in :mod:`ddpm.config`)."""

from ddpm.train.config import validate_train
from ddpm.train.trainer import (
    BudgetClock,
    Trainer,
    TrainingDiverged,
    config_differences,
    lr_factor,
    parse_step_ranges,
    train,
)

__all__ = [
    "BudgetClock",
    "Trainer",
    "TrainingDiverged",
    "config_differences",
    "lr_factor",
    "parse_step_ranges",
    "train",
    "validate_train",
]
