"""The roots every command shares, and the one rule that picks each (``paths/default.yaml`` reads
them from the environment; this module is light, so the dashboard's launcher can import it).

- ``paths.data_dir`` (``DDPM_DATA_DIR``): null reads the root stored in the checkpoint a command
  loads, else :data:`DEFAULT_DATA_DIR`.
- ``paths.output_dir`` (``DDPM_OUTPUT_DIR``): every command's run dirs, ``<output_dir>/<command>/<time>``,
  and the runs the dashboard lists.
"""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig, open_dict

DEFAULT_DATA_DIR = "data"  # the data root when neither paths.data_dir nor a checkpoint names one
DEFAULT_OUTPUT_DIR = "outputs"  # paths.output_dir without DDPM_OUTPUT_DIR


def default_output_dir() -> str:
    """``paths.output_dir`` outside Hydra (the dashboard): DDPM_OUTPUT_DIR, else :data:`DEFAULT_OUTPUT_DIR`."""
    return os.environ.get("DDPM_OUTPUT_DIR") or DEFAULT_OUTPUT_DIR


def data_root(paths: Any, stored: str | None = None) -> str:
    """The data root a command reads: ``paths.data_dir`` when set, else the root ``stored`` in the
    checkpoint it loads, else :data:`DEFAULT_DATA_DIR`.

    Args:
        paths: a ``paths`` node.
        stored: the ``paths.data_dir`` recorded in a loaded checkpoint's config (None: no checkpoint).
    """
    return str(paths.data_dir or stored or DEFAULT_DATA_DIR)


def resolve_data_root(cfg: DictConfig, stored: str | None = None) -> str:
    """Set ``cfg.paths.data_dir`` to :func:`data_root` once, where a command starts, so every reader
    (and the config a training run stores in its checkpoints) sees the root actually read.

    Args:
        cfg: a command config with a ``paths`` node.
        stored: the data root recorded in the checkpoint the command loads, if any.
    """
    root = data_root(cfg.paths, stored)
    with open_dict(cfg):
        cfg.paths.data_dir = root
    return root
