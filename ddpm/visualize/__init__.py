"""``ddpm-visualize``: noise real images to chosen steps or OU times, denoise them back and plot it.

``cli`` runs the command (:func:`visualize`), ``config`` holds its schema (``VisualizeConfig``),
``plots`` draws its figures.
"""

from ddpm.visualize.cli import OUTPUTS, Start, Trajectory, main, resolve_starts, sampler_config, visualize
from ddpm.visualize.config import VisualizeConfig, validate_visualize

__all__ = [
    "OUTPUTS",
    "Start",
    "Trajectory",
    "VisualizeConfig",
    "main",
    "resolve_starts",
    "sampler_config",
    "validate_visualize",
    "visualize",
]
