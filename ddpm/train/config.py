"""``ddpm-train``'s range checks. Its schema, ``TrainConfig``, is in :mod:`ddpm.config` with the
shared groups: every command reads it back from the checkpoints that ``ddpm-train`` writes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ddpm.config import MAX_REGIMES_SAMPLES, _check, check_dataset, check_memorisation, check_model, check_schedule, checks_runtime
from ddpm.data.residency import check_residency
from ddpm.schedules import NoiseSchedule


@checks_runtime
def validate_train(cfg: Any) -> None:
    """Range checks that the type system cannot express; raises :class:`ConfigError`."""
    t = cfg.train
    _check(t.max_steps >= 0, f"train.max_steps must be >= 0, got {t.max_steps}")
    _check(t.batch_size > 0, f"train.batch_size must be > 0, got {t.batch_size}")
    _check(t.lr > 0, f"train.lr must be > 0, got {t.lr}")
    _check(0.0 <= t.ema_decay < 1.0, f"train.ema_decay must lie in [0, 1), got {t.ema_decay}")
    _check(t.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {t.warmup_steps}")
    _check(t.lr_schedule in ("constant", "cosine"), f"train.lr_schedule must be constant or cosine, got {t.lr_schedule!r}")
    _check(t.objective in ("eps", "x0", "v"), f"train.objective must be eps, x0 or v, got {t.objective!r}")
    _check(t.grad_clip >= 0, f"train.grad_clip must be >= 0, got {t.grad_clip}")
    _check(t.weight_decay >= 0, f"train.weight_decay must be >= 0, got {t.weight_decay}")
    _check(len(t.betas) == 2 and all(0.0 <= b < 1.0 for b in t.betas), f"train.betas must be two values in [0, 1), got {list(t.betas)}")
    resume = cfg.get("resume")
    _check(
        resume in (None, "", "latest") or Path(str(resume)).expanduser().is_file(),
        f"resume={resume}: no such checkpoint file (use resume=latest or a path to a .pt file)",
    )
    for key in ("log_every", "sample_every", "ckpt_every", "num_sample_images", "keep_checkpoints"):
        _check(t[key] >= 0, f"train.{key} must be >= 0, got {t[key]}")
    _check(t.loss_weighting in ("none", "min_snr", "edm"), f"train.loss_weighting must be none, min_snr or edm, got {t.loss_weighting!r}")
    _check(
        t.timestep_sampling in ("uniform", "lognormal"),
        f"train.timestep_sampling must be uniform or lognormal, got {t.timestep_sampling!r}",
    )
    _check(t.min_snr_gamma > 0, f"train.min_snr_gamma must be > 0, got {t.min_snr_gamma}")
    _check(t.p_std > 0, f"train.p_std must be > 0, got {t.p_std}")
    _check(
        t.time_budget_min is None or 0 < t.time_budget_min < float("inf"),
        f"train.time_budget_min must be a positive number of minutes or null, got {t.time_budget_min}",
    )
    _check(t.budget_clock in ("wall", "process"), f"train.budget_clock must be wall or process, got {t.budget_clock!r}")
    _check(t.eval_every >= 0, f"train.eval_every must be >= 0, got {t.eval_every}")
    _check(t.eval_samples >= 2, f"train.eval_samples must be >= 2 (FID needs a covariance), got {t.eval_samples}")
    _check(t.get("regimes_every", 0) >= 0, f"train.regimes_every must be >= 0, got {t.get('regimes_every')}")
    _check(0 <= t.regimes_per_decade <= 100, f"train.regimes_per_decade must lie in 0..100, got {t.regimes_per_decade}")
    _check(
        1 <= t.get("regimes_samples", 16) <= MAX_REGIMES_SAMPLES,
        f"train.regimes_samples must lie in 1..{MAX_REGIMES_SAMPLES}, got {t.get('regimes_samples')}",
    )
    check_memorisation(cfg.memorisation)
    _check(t.max_bad_steps >= 1, f"train.max_bad_steps must be >= 1, got {t.max_bad_steps}")
    _check(t.grad_accum_steps >= 1, f"train.grad_accum_steps must be >= 1, got {t.grad_accum_steps}")
    _check(0.0 <= t.cond_drop_prob < 1.0, f"train.cond_drop_prob must lie in [0, 1), got {t.cond_drop_prob}")
    for key in ("lr", "weight_decay", "p_mean", "p_std"):  # NaN fails the range checks above; inf needs its own
        _check(math.isfinite(t[key]), f"train.{key} must be finite, got {t[key]}")
    check_schedule(cfg.schedule)
    schedule = NoiseSchedule.from_config(cfg.schedule)  # its own checks (betas, cosine_s) before any work
    if t.timestep_sampling == "lognormal":
        # ln σ_k of the steps: a mean outside them maps (nearly) every sampled σ to the first or last step
        log_sigma = (-schedule.half_log_snr).tolist()  # ln σ_k = -λ_k
        lo, hi = log_sigma[0], log_sigma[-1]
        _check(
            lo <= t.p_mean <= hi,
            f"train.p_mean must lie within the schedule's ln σ range [{lo:.4g}, {hi:.4g}] (timestep_sampling=lognormal), got {t.p_mean}",
        )
    check_dataset(cfg.dataset)
    check_residency(cfg.dataset)  # dataset.in_memory, in_memory_max_gb, workers
    check_model(cfg.model)
