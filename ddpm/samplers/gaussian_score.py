"""``sampler=gaussian_score``: the ancestral DDPM chain driven by the exact score of the Gaussian
surrogate N(μ, Σ) of the training points (μ, Σ their mean and covariance) instead of a network.

This is what a linear denoiser draws: the best linear estimate of x_0 from x_t at every t (the
Wiener filter of :mod:`ddpm.regimes.linear`). Its samples have the data's first two moments and
nothing else: blurred, averaged shapes (see docs/regimes_families.md). The network's ε function
passed to :meth:`sample` is ignored.
"""

from __future__ import annotations

import torch

from ddpm.errors import ConfigError
from ddpm.samplers.base import Callback, EpsFn, StackedRandomGenerator
from ddpm.samplers.ddpm import DDPMSampler


class GaussianScoreSampler(DDPMSampler):
    """Args (besides :class:`DDPMSampler`'s):
    points: training points in model range, flattened (n, d) or as images (n, C, H, W).
    """

    def __init__(
        self,
        diffusion,
        steps=None,
        spacing="leading",
        clip_denoised=True,
        max_step=None,
        variance: str = "small",
        points: torch.Tensor | None = None,
        **grid,
    ) -> None:
        super().__init__(diffusion, steps, spacing, clip_denoised, max_step, variance, **grid)
        if points is None or len(points) < 2:
            raise ConfigError("sampler=gaussian_score needs training points (ddpm-sample uses the checkpoint's training set)")
        from ddpm.regimes.linear import GaussianScore

        self.gauss = GaussianScore.from_points(points.flatten(1).double(), points.device)
        self.ou_times = diffusion.schedule.ou_times

    def gaussian_eps(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """ε_G(x_k) of the Gaussian surrogate at step k (float32, the shape of ``x``)."""
        t = self.ou_times[k.cpu()].to(torch.float64)
        return self.gauss.eps(x.flatten(1), t).view_as(x).to(x.device, torch.float32)

    def sample(
        self,
        eps_fn: EpsFn | None,
        x_T: torch.Tensor,
        rng: StackedRandomGenerator | None = None,
        callback: Callback | None = None,
        progress=None,
        **kwargs,
    ) -> torch.Tensor:
        """Run the chain from ``x_T`` with the surrogate's score; ``eps_fn`` is not called."""
        if x_T[0].numel() != self.gauss.d:
            raise ConfigError(f"sampler=gaussian_score: samples have {x_T[0].numel()} values but the training points {self.gauss.d}")
        return super().sample(self.gaussian_eps, x_T, rng, callback, progress, **kwargs)
