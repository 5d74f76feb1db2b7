"""Whether a training set is held in memory or streamed: ``dataset.in_memory`` (auto, true, false).

``auto`` keeps a dataset in memory when its decoded size, images x channels x image_size² bytes
(uint8), is at most ``dataset.in_memory_max_gb`` GiB (default 4: cats64 is 0.06 GiB, CelebA at 64
is 2.3 GiB; LSUN bedrooms at 64, 3 million images, is 35 GiB and streams). The count is that of
the image files (:mod:`ddpm.data.sources`), read without decoding. The in-memory path keeps the
uint8 images on the training device and, while decoding, about twice their size in host memory.

Only datasets read from image files (folders, tars, shards: ``cats``, ``folder``) can stream;
the others (MNIST, CIFAR-10, CryptoPunks) are single files decoded whole and always stay in memory.
"""

from __future__ import annotations

import math
import os
from typing import Any

from ddpm.data.sources import IMAGE_SOURCES
from ddpm.errors import ConfigError

AUTO = "auto"
DEFAULT_MAX_GB = 4.0
MAX_MAX_GB = 1_000_000.0  # a petabyte: beyond it a value is a typo
MAX_WORKERS = 256
DEFAULT_WORKERS_CAP = 8  # loader workers per rank when dataset.workers is null


def check_residency(d: Any) -> None:
    """Range checks of ``dataset.in_memory``, ``in_memory_max_gb`` and ``workers``; raises :class:`ConfigError`.

    Args:
        d: the ``dataset`` node (the keys may be absent: older checkpoints and hand-made nodes).
    """
    value = d.get("in_memory", AUTO)
    if not (value == AUTO or isinstance(value, bool)):
        raise ConfigError(f"dataset.in_memory must be auto, true or false, got {value!r}")
    if value is False and d.get("name") not in IMAGE_SOURCES:
        raise ConfigError(
            f"dataset.in_memory=false streams image folders and tars (dataset=folder or cats); {d.get('name')} is read whole, "
            "use dataset.in_memory=auto or true"
        )
    limit = d.get("in_memory_max_gb", DEFAULT_MAX_GB)
    if isinstance(limit, bool) or not isinstance(limit, int | float) or not (math.isfinite(limit) and 0 < limit <= MAX_MAX_GB):
        raise ConfigError(f"dataset.in_memory_max_gb must be a number of GiB > 0 and <= {MAX_MAX_GB:g}, got {limit!r}")
    workers = d.get("workers")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS):
        raise ConfigError(
            f"dataset.workers must lie in 1..{MAX_WORKERS} or be null (one per core, at most {DEFAULT_WORKERS_CAP}), got {workers!r}"
        )


def decoded_bytes(images: int, channels: int, image_size: int) -> int:
    """Bytes of ``images`` decoded uint8 images of ``channels`` x ``image_size``²."""
    return int(images) * int(channels) * int(image_size) ** 2


def keep_in_memory(d: Any, images: int | None) -> bool:
    """The one decision of ``dataset.in_memory``: True to hold the training set in memory, False to stream it.

    Args:
        d: the ``dataset`` node.
        images: image files of the dataset (counted without decoding), or None for a dataset that
            cannot stream (not read from image files).
    """
    check_residency(d)  # refuses in_memory=false for a dataset that cannot stream
    value = d.get("in_memory", AUTO)
    if images is None:
        return True
    if value != AUTO:
        return bool(value)
    limit = float(d.get("in_memory_max_gb", DEFAULT_MAX_GB)) * 2**30
    return decoded_bytes(images, d.channels, d.image_size) <= limit


def loader_workers(d: Any, world_size: int = 1) -> int:
    """Worker processes of one rank's streaming loader: ``dataset.workers``, or the cores shared out over the ranks (at most 8).

    Args:
        d: the ``dataset`` node.
        world_size: training processes (those on this machine, ``LOCAL_WORLD_SIZE``, share its cores).
    """
    workers = d.get("workers")
    if workers is not None:
        return int(workers)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    return max(1, min(DEFAULT_WORKERS_CAP, cores // max(1, local)))
