"""``ddpm-train``'s rules that span several fields. Its schema, ``TrainConfig``, is in :mod:`ddpm.config`
with the shared groups (every command reads it back from the checkpoints that ``ddpm-train`` writes),
and each field's own range or choices is declared there beside the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddpm.conditioning import check_num_classes
from ddpm.config import TrainConfig, _check, dataset_rules, validates
from ddpm.data.residency import check_residency
from ddpm.schedules import NoiseSchedule


@validates(TrainConfig)
def validate_train(cfg: Any) -> None:
    """Checks of a ``train`` config before any work: every field rule of :class:`TrainConfig`, then
    the rules that span several fields below; raises :class:`ConfigError`.

    Args:
        cfg: the composed ``train`` config.
    """
    t = cfg.train
    resume = cfg.get("resume")
    _check(  # a path, not a range: it must name a checkpoint file
        resume in (None, "", "latest") or Path(str(resume)).expanduser().is_file(),
        f"resume={resume}: no such checkpoint file (use resume=latest or a path to a .pt file)",
    )
    schedule = NoiseSchedule.from_config(cfg.schedule)  # its own checks (betas against the name) before any work
    if t.timestep_sampling == "lognormal":
        # ln σ_k of the steps: a mean outside them maps (nearly) every sampled σ to the first or last step
        log_sigma = (-schedule.half_log_snr).tolist()  # ln σ_k = -λ_k
        lo, hi = log_sigma[0], log_sigma[-1]
        _check(
            lo <= t.p_mean <= hi,
            f"train.p_mean must lie within the schedule's ln σ range [{lo:.4g}, {hi:.4g}] (timestep_sampling=lognormal), got {t.p_mean}",
        )
    dataset_rules(cfg.dataset)
    check_residency(cfg.dataset)  # dataset.in_memory, in_memory_max_gb, workers
    check_num_classes(cfg.model.get("num_classes"))  # null, auto or a count (a field of type Any)
