"""``sampler=exact_score``: the ancestral DDPM chain driven by the exact empirical score of n
training points instead of a network (the streamed kernel of :mod:`ddpm.score`).

The empirical law of n points is what a network that memorised perfectly would sample: below the
collapse time t_C each trajectory is captured by one training point, so every sample is a copy of
a training image (see docs/regimes.md). The network's ε function passed to :meth:`sample` is
ignored.
"""

from __future__ import annotations

from typing import Any

import torch

from ddpm.errors import ConfigError
from ddpm.samplers.base import Callback, EpsFn, StackedRandomGenerator
from ddpm.samplers.ddpm import DDPMSampler


class ScoreSampler(DDPMSampler):
    """The DDPM chain driven by a score object's ``eps(x, t)`` (in OU time) instead of a network.

    Subclasses set ``self.score`` (with ``eps`` and ``d``) and ``self.label`` (the sampler's name).
    """

    score: Any
    label: str

    def score_eps(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """ε(x_k) of the score at step k (in the sampler's dtype, the shape of ``x``)."""
        t = self.diffusion.schedule.ou_times[k.cpu()].to(torch.float64)
        return self.score.eps(x.flatten(1), t).view_as(x).to(x.device, self.dtype)

    def sample(
        self,
        eps_fn: EpsFn | None,
        x_T: torch.Tensor,
        rng: StackedRandomGenerator | None = None,
        callback: Callback | None = None,
        progress=None,
        **kwargs,
    ) -> torch.Tensor:
        """Run the chain from ``x_T`` with the score; ``eps_fn`` is not called (other keywords pass through)."""
        if x_T[0].numel() != self.score.d:
            raise ConfigError(f"sampler={self.label}: samples have {x_T[0].numel()} values but the training points {self.score.d}")
        return super().sample(self.score_eps, x_T, rng, callback, progress, **kwargs)


class ExactScoreSampler(ScoreSampler):
    """Args (besides :class:`DDPMSampler`'s):
    points: training points in model range, flattened (n, d) or as images (n, C, H, W).
    dtype: ``float32`` (fast) or ``float64`` kernel (see :class:`ddpm.score.ExactScore`).
    chunk_size: training points per streamed chunk.
    """

    label = "exact_score"

    def __init__(
        self,
        diffusion,
        steps=None,
        spacing="leading",
        clip_denoised=True,
        max_step=None,
        variance: str = "small",
        points: torch.Tensor | None = None,
        dtype: str = "float32",
        chunk_size: int = 4096,
        **grid,
    ) -> None:
        super().__init__(diffusion, steps, spacing, clip_denoised, max_step, variance, **grid)
        if points is None or len(points) < 1:
            raise ConfigError("sampler=exact_score needs training points (ddpm-sample uses the checkpoint's training set)")
        from ddpm.score import ExactScore

        self.score = ExactScore(points.flatten(1).double(), None, dtype, chunk_size, points.device)
