"""Denoising quality: noise held-out images to step k, run the sampler back to x_0, compare.

This measures how much of an image the model can recover from x_k: at small k nearly all of it
(low MSE, SSIM near 1), at large k the model has to invent content and the scores fall.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ddpm.errors import ConfigError
from ddpm.generate import denoise_from, noise_to_step
from ddpm.quality import mse_per_image, ssim_per_image
from ddpm.samplers import Sampler, build_sampler

log = logging.getLogger(__name__)


def denoising_sampler(sampler_cfg, diffusion, k: int, warnings: list[str] | None = None) -> Sampler:
    """The sampler that runs x_k back to x_0: ``trailing`` spacing over the k + 1 steps 0..k, so
    that it starts exactly at k, with its evaluations capped at k + 1 (a warning says so).

    Args:
        sampler_cfg: the ``sampler`` config node.
        diffusion: the model's :class:`~ddpm.diffusion.GaussianDiffusion`.
        k: the start step, 0 <= k < T.
        warnings: collects (besides the log) the cap at k + 1, when it applies.
    """
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(sampler_cfg, {"spacing": "trailing", "steps": min(int(sampler_cfg.steps or k + 1), k + 1)})
    if sampler_cfg.steps is not None and sampler_cfg.steps > k + 1:
        msg = f"sampler.steps={sampler_cfg.steps} exceeds the {k + 1} steps from k={k} down to 0: denoise.steps k={k} uses {k + 1} evaluations"
        log.warning(msg)
        if warnings is not None:
            warnings.append(msg)
    return build_sampler(cfg, diffusion, max_step=k)


def denoising_quality(
    eps_fn, diffusion, sampler_cfg, x0: torch.Tensor, steps: list[int], seed: int, batch_size: int = 256, warnings: list[str] | None = None
) -> dict:
    """MSE and SSIM between ``x0`` and its reconstruction from x_k, for each k in ``steps``.

    Args:
        eps_fn: the ε-predictor.
        diffusion: the model's :class:`~ddpm.diffusion.GaussianDiffusion`.
        sampler_cfg: the ``sampler`` config node. The reverse process must start exactly at k, so
            ``trailing`` spacing is used and the evaluations are capped at k + 1.
        x0: clean held-out images in [-1, 1] on the model's device.
        steps: schedule steps k (0 <= k < T) to noise to.
        seed: image i is noised (and denoised) with generator seed ``seed + i``.
        batch_size: images per sampler call.
        warnings: collects (besides the log) the starts whose evaluations are capped at k + 1.
    """
    out: dict = {"num_images": int(len(x0)), "sampler": sampler_cfg.name, "spacing": "trailing", "steps": {}}
    for k in steps:
        k = int(k)
        if not 0 <= k < diffusion.T:
            raise ConfigError(f"denoise.steps contains {k}, outside the schedule's 0..{diffusion.T - 1}")
        sampler = denoising_sampler(sampler_cfg, diffusion, k, warnings)
        mse, ssim = [], []
        for i in range(0, len(x0), batch_size):
            batch = x0[i : i + batch_size]
            x_k = noise_to_step(diffusion, batch, k, seed + i)
            rec = denoise_from(eps_fn, sampler, x_k, seed + i).to(batch.device)
            mse.append(mse_per_image(rec, batch))
            ssim.append(ssim_per_image(rec, batch))
        m, s = np.concatenate(mse), np.concatenate(ssim)
        out["steps"][str(k)] = {
            "evaluations": sampler.num_evaluations,
            "mse": float(m.mean()),
            "mse_std": float(m.std()),
            "ssim": float(s.mean()),
            "ssim_std": float(s.std()),
        }
    return out
