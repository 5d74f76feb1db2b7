"""Exponential moving average of the weights, on torch.optim.swa_utils.AveragedModel."""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel


def ema_multi_avg_fn(decay: float):
    """EMA update with the usual warm-up: the effective decay is min(decay, (1+n)/(10+n)), so
    early averages are not dominated by the random initialisation."""

    @torch.no_grad()
    def update(ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(ema_params, params, 1 - d)

    return update


def make_ema(model: torch.nn.Module, decay: float) -> AveragedModel:
    """An EMA copy of ``model`` (parameters and buffers)."""
    return AveragedModel(model, multi_avg_fn=ema_multi_avg_fn(decay), use_buffers=True)
