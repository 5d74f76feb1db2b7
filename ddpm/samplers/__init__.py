"""Reverse-process samplers sharing one interface (see :class:`ddpm.samplers.base.Sampler`).

Adding a sampler is one module with a :class:`Sampler` subclass, registered in ``SAMPLERS``.
"""

from ddpm.samplers.base import Sampler, StackedRandomGenerator, make_eps_fn, timestep_sequence
from ddpm.samplers.ddim import DDIMSampler
from ddpm.samplers.ddpm import DDPMSampler
from ddpm.samplers.dpm_solver import DPMSolverSampler, SDEDPMSolverSampler
from ddpm.samplers.edm import EDMHeunSampler
from ddpm.samplers.exact_score import ExactScoreSampler
from ddpm.samplers.gaussian_score import GaussianScoreSampler
from ddpm.samplers.sde import EulerMaruyamaSampler, ProbabilityFlowSampler

SAMPLERS: dict[str, type[Sampler]] = {"ddpm": DDPMSampler, "ddim": DDIMSampler, "dpm_solver": DPMSolverSampler}
SAMPLERS.update({"euler_maruyama": EulerMaruyamaSampler, "pf_ode": ProbabilityFlowSampler, "exact_score": ExactScoreSampler})
SAMPLERS["gaussian_score"] = GaussianScoreSampler
# Samplers driven by the training points instead of a network (ddpm-sample passes them the checkpoint's training set).
POINT_SAMPLERS = ("exact_score", "gaussian_score")
SAMPLERS.update({"sde_dpm_solver": SDEDPMSolverSampler, "edm_heun": EDMHeunSampler})
# edm_heun's churn settings (EDM's S_churn, S_min, S_max, S_noise); null keeps the sampler's default.
CHURN_KEYS = ("s_churn", "s_min", "s_max", "s_noise")


def build_sampler(cfg, diffusion, max_step: int | None = None, points=None) -> Sampler:
    """Build the sampler named by a ``sampler`` config node.

    Args:
        cfg: ``sampler`` config (name, steps, eta, spacing, clip_denoised, grid, lambda_min, variance,
            and edm_heun's s_churn, s_min, s_max, s_noise).
        diffusion: the model's :class:`~ddpm.diffusion.GaussianDiffusion`.
        max_step: start the reverse process at this schedule step instead of T-1 (denoising
            from a noised image); ``steps`` then counts evaluations within 0..max_step.
        points: ``exact_score`` and ``gaussian_score`` only: the training points (model range) whose
            exact score (or Gaussian surrogate's score) it samples with.
    """
    from ddpm.errors import ConfigError

    if cfg.name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {cfg.name!r}; choose one of {', '.join(SAMPLERS)}")
    kwargs = {
        "steps": cfg.steps,
        "spacing": cfg.spacing,
        "clip_denoised": cfg.clip_denoised,
        "max_step": max_step,
        "grid": cfg.get("grid", "time"),
        "lambda_min": cfg.get("lambda_min"),
    }
    if cfg.name == "ddim":
        kwargs["eta"] = cfg.eta
    elif cfg.eta != 0:  # a noise scale the sampler would silently ignore
        raise ConfigError(f"sampler.eta applies to the ddim sampler only, not to {cfg.name!r}")
    variance = cfg.get("variance", "small")
    if cfg.name in ("ddpm", *POINT_SAMPLERS):
        kwargs["variance"] = variance
    elif variance != "small":
        raise ConfigError(f"sampler.variance applies to the ddpm sampler only, not to {cfg.name!r}")
    if cfg.name in POINT_SAMPLERS:
        kwargs["points"] = points
    churn = {key: cfg.get(key) for key in CHURN_KEYS if cfg.get(key) is not None}
    if cfg.name == "edm_heun":
        kwargs.update(churn)
    elif churn:  # settings the sampler would silently ignore
        raise ConfigError(f"sampler.{next(iter(churn))} applies to the edm_heun sampler only, not to {cfg.name!r}")
    return SAMPLERS[cfg.name](diffusion, **kwargs)


__all__ = [
    "SAMPLERS",
    "build_sampler",
    "Sampler",
    "StackedRandomGenerator",
    "make_eps_fn",
    "timestep_sequence",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverSampler",
    "SDEDPMSolverSampler",
    "EDMHeunSampler",
    "EulerMaruyamaSampler",
    "ProbabilityFlowSampler",
    "ExactScoreSampler",
    "GaussianScoreSampler",
    "POINT_SAMPLERS",
]
