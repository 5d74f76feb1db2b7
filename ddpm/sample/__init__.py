"""``ddpm-sample``: generate images, a sampling GIF and a noising GIF from a trained checkpoint.

``cli`` runs the command (:func:`sample`), ``config`` holds its schema (``SampleConfig``).
"""

from ddpm.pretrained import data_dir_of, real_images, resolve_ckpt
from ddpm.sample.cli import OUTPUTS, TrajectoryRecorder, forward_states, main, sample, save_png, state_steps
from ddpm.sample.config import GifConfig, SampleConfig, validate_sample

__all__ = [
    "OUTPUTS",
    "GifConfig",
    "SampleConfig",
    "TrajectoryRecorder",
    "data_dir_of",
    "forward_states",
    "main",
    "real_images",
    "resolve_ckpt",
    "sample",
    "save_png",
    "state_steps",
    "validate_sample",
]
