"""Animated GIFs of image grids: the reverse (sampling) and forward (noising) processes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddpm.checkpoint import atomic_write
from ddpm.data import from_model_range

HOLD_LAST_MS = 1000  # the final frame stays on screen at least this long before the loop restarts


def frame_indices(num_states: int, frames: int) -> list[int]:
    """``frames`` distinct indices into ``num_states`` states, evenly spread, first and last included.

    Args:
        num_states: states available (e.g. network evaluations + 1 for a sampling trajectory).
        frames: wanted frames, 1 <= frames <= num_states.
    """
    if not 1 <= frames <= num_states:
        raise ValueError(f"cannot pick {frames} distinct frames out of {num_states} states")
    if frames == 1:
        return [num_states - 1]
    return [int(round(j * (num_states - 1) / (frames - 1))) for j in range(frames)]


def save_grid(x: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Save images (N, C, H, W) in [-1, 1] as one PNG grid (default: a square-ish grid), atomically."""
    image = Image.fromarray(grid_frame(x, nrow))
    return atomic_write(path, lambda f: image.save(f, format="PNG"))


def grid_frame(x: torch.Tensor, nrow: int | None = None, scale: int = 1, pad: int = 2) -> np.ndarray:
    """One RGB uint8 frame (H, W, 3) showing a batch of images in [-1, 1] as a grid.

    Args:
        x: images (N, C, H, W) in model range; values outside [-1, 1] (noised images) are clipped.
        nrow: images per row (default: a square-ish grid).
        scale: nearest-neighbour upscaling factor (small images are easier to see).
        pad: pixels between images.
    """
    from torchvision.utils import make_grid  # here, not at the top: torchvision adds seconds to every command's start

    nrow = nrow or int(math.ceil(math.sqrt(x.shape[0])))
    images = from_model_range(x.detach().cpu())
    images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images  # a lone image comes back as it is
    grid = make_grid(images, nrow=nrow, padding=pad, pad_value=255)
    if scale > 1:
        grid = grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    return grid.permute(1, 2, 0).numpy()


def write_gif(path: str | Path, frames: Sequence[np.ndarray], fps: float) -> Path:
    """Write RGB uint8 frames as a looping GIF; the last frame is held for ``HOLD_LAST_MS``.

    Pillow merges consecutive identical frames, so callers pass distinct frames when the frame
    count matters (see :func:`frame_indices`).

    Args:
        path: output ``.gif`` file.
        frames: equally sized (H, W, 3) uint8 arrays.
        fps: frames per second.
    """
    images = [Image.fromarray(f) for f in frames]
    step_ms = 1000.0 / fps
    durations = [step_ms] * (len(images) - 1) + [max(step_ms, HOLD_LAST_MS)]
    return atomic_write(
        path, lambda f: images[0].save(f, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    )
