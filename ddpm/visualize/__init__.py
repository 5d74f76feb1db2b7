"""``ddpm-visualize``: noise real images to chosen steps or OU times, denoise them back and plot it.

``run`` does the work (:func:`visualize`), ``cli`` is the console script, ``config`` holds its schema
(``VisualizeConfig``), its checks and its outputs, ``plots`` draws its figures.
"""

from ddpm.visualize.config import OUTPUTS, VisualizeConfig, validate_visualize
from ddpm.visualize.run import Start, Trajectory, resolve_starts, sampler_config, visualize

__all__ = [
    "OUTPUTS",
    "Start",
    "Trajectory",
    "VisualizeConfig",
    "resolve_starts",
    "sampler_config",
    "validate_visualize",
    "visualize",
]
