"""``sampler=gaussian_score``: the ancestral DDPM chain driven by the exact score of the Gaussian
surrogate N(μ, Σ) of the training points (μ, Σ their mean and covariance) instead of a network.

This is what a linear denoiser draws: the best linear estimate of x_0 from x_t at every t (the
Wiener filter, :class:`ddpm.score.GaussianScore`). Its samples have the data's first two moments and
nothing else: blurred, averaged shapes (see docs/regimes_families.md). The network's ε function
passed to :meth:`sample` is ignored.
"""

from __future__ import annotations

import torch

from ddpm.errors import ConfigError
from ddpm.samplers.exact_score import ScoreSampler
from ddpm.score import GaussianScore


class GaussianScoreSampler(ScoreSampler):
    """Args (besides :class:`DDPMSampler`'s):
    points: training points in model range, flattened (n, d) or as images (n, C, H, W).
    """

    label = "gaussian_score"

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
        self.score = GaussianScore.from_points(points.flatten(1).double(), points.device)
