"""Per-image reconstruction quality: MSE and SSIM (scikit-image) on the model's [-1, 1] range."""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import structural_similarity

DATA_RANGE = 2.0  # images live in [-1, 1]


def mse_per_image(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Mean squared error of each image pair (N, C, H, W) in [-1, 1]."""
    return ((a.float() - b.float()) ** 2).flatten(1).mean(1).cpu().numpy()


def ssim_per_image(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """SSIM of each image pair (N, C, H, W) in [-1, 1], channels treated as colour channels."""
    a_np, b_np = a.float().clamp(-1, 1).cpu().numpy(), b.float().clamp(-1, 1).cpu().numpy()
    out = []
    for x, y in zip(a_np, b_np, strict=True):
        win = min(7, x.shape[-1] - (1 - x.shape[-1] % 2))  # odd window no larger than the image
        out.append(structural_similarity(x, y, data_range=DATA_RANGE, channel_axis=0, win_size=win))
    return np.asarray(out)
