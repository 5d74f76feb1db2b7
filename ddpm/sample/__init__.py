"""``ddpm-sample``: generate images, a sampling GIF and a noising GIF from a trained checkpoint.

``run`` does the work (:func:`sample`), ``cli`` is the console script, ``config`` holds its schema
(``SampleConfig``), its checks and its outputs.
"""

from ddpm.pretrained import data_dir_of, real_images, resolve_ckpt
from ddpm.sample.config import OUTPUTS, GifConfig, SampleConfig, validate_sample
from ddpm.sample.run import TrajectoryRecorder, forward_states, sample, save_png, state_steps

__all__ = [
    "OUTPUTS",
    "GifConfig",
    "SampleConfig",
    "TrajectoryRecorder",
    "data_dir_of",
    "forward_states",
    "real_images",
    "resolve_ckpt",
    "sample",
    "save_png",
    "state_steps",
    "validate_sample",
]
