"""Seeded, class-balanced training subsets (``dataset.n``, ``dataset.subset_seed``) and their record.

A subset of n images is drawn per class where labels exist: each class gets ⌊n/C⌋ images, the
n mod C left over go to the first classes of a seeded class order, and each class takes the
first images of its own seeded permutation (a class smaller than its share gives its images and
the rest is spread over the others). Shares grow with n, so for one seed the subset of n images
holds the subset of every smaller n: a sweep over n adds images, it never swaps them.

The checkpoint records the subset (:func:`subset_record`): n, the seed, the size of the full
split, a SHA-256 of the sorted indices and, up to :data:`MAX_RECORDED_INDICES`, the indices.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ddpm.data.datasets import ImageData, load_dataset
from ddpm.errors import CheckpointError, ConfigError, DataError

# Indices stored in the checkpoint up to this n (240 KB as int32); above it only the hash.
MAX_RECORDED_INDICES = 60_000


def _generator(seed: int, stream: int) -> torch.Generator:
    # distinct streams of one seed: the class order and each class's permutation
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + stream)


def balanced_subset(total: int, labels: torch.Tensor | None, n: int, seed: int) -> torch.Tensor:
    """Sorted int64 indices of a seeded subset of ``n`` of ``total`` images, class-balanced when labelled.

    Args:
        total: images in the full split.
        labels: int64 classes (total,), or None for unlabelled data (a plain seeded draw).
        n: subset size, 1 <= n <= total.
        seed: ``dataset.subset_seed``.
    """
    if not 1 <= n <= total:
        raise ConfigError(f"dataset.n={n} must lie in 1..{total} (the training images)")
    if labels is None:
        return torch.randperm(total, generator=_generator(seed, 0))[:n].sort().values
    classes = torch.unique(labels)
    members = [torch.nonzero(labels == c).flatten() for c in classes]
    order = torch.randperm(len(classes), generator=_generator(seed, 0)).tolist()
    share = torch.zeros(len(classes), dtype=torch.long)
    left = n
    open_ = list(order)  # classes that can still take images, in the seeded order
    while left > 0:
        base, extra = divmod(left, len(open_))
        for rank, i in enumerate(open_):
            share[i] += base + (rank < extra)
        left = 0
        for i in open_:  # a class smaller than its share keeps all it has; the excess goes round again
            over = int(share[i]) - len(members[i])
            if over > 0:
                share[i] -= over
                left += over
        open_ = [i for i in open_ if int(share[i]) < len(members[i])]
    picked = [
        m[torch.randperm(len(m), generator=_generator(seed, 1 + int(c)))[: int(s)]] for c, m, s in zip(classes, members, share, strict=True)
    ]
    return torch.cat(picked).sort().values


def indices_hash(indices: torch.Tensor) -> str:
    """SHA-256 (hex) of sorted indices as little-endian int64."""
    return hashlib.sha256(indices.to(torch.int64).sort().values.numpy().astype("<i8").tobytes()).hexdigest()


def subset_record(indices: torch.Tensor, n: int, seed: int, total: int) -> dict[str, Any]:
    """What a checkpoint stores about its training subset.

    Args:
        indices: sorted indices into the full training split.
        n: ``dataset.n``.
        seed: ``dataset.subset_seed``.
        total: images of the full split.
    """
    return {
        "n": int(n),
        "seed": int(seed),
        "total": int(total),
        "sha256": indices_hash(indices),
        "indices": indices.to(torch.int32).clone() if len(indices) <= MAX_RECORDED_INDICES else None,
    }


def take(data: ImageData, indices: torch.Tensor, n: int, seed: int) -> ImageData:
    """The images (and labels) of the full split ``data`` at ``indices``, carrying their record.

    Args:
        data: the full training split.
        indices: sorted indices into it.
        n: ``dataset.n``.
        seed: ``dataset.subset_seed``.
    """
    return replace(
        data,
        images=data.images[indices].contiguous(),
        labels=None if data.labels is None else data.labels[indices],
        subset=subset_record(indices, n, seed, len(data)),
    )


def select_subset(data: ImageData, n: int | None, seed: int) -> ImageData:
    """``data`` itself when ``n`` is null or covers it all, else its balanced subset of ``n`` images.

    Args:
        data: the full training split.
        n: ``dataset.n`` (null: all images).
        seed: ``dataset.subset_seed``.
    """
    if n is None or int(n) == len(data):
        return data
    if int(n) > len(data):
        raise DataError(f"dataset.n={n} exceeds the {len(data)} training images of {data.name}")
    return take(data, balanced_subset(len(data), data.labels, int(n), int(seed)), int(n), int(seed))


def recorded_indices(total: int, labels: torch.Tensor | None, record: dict[str, Any], where: str) -> torch.Tensor:
    """Sorted indices of the training subset a checkpoint recorded, into a full split of ``total`` images.

    The recorded indices are used when present (whatever the current sampling code would draw);
    otherwise the subset is drawn again from n and the seed. Either way they must match the recorded hash.

    Args:
        total: images of the full training split, loaded as in training.
        labels: its labels (to draw the balanced subset again), or None.
        record: the checkpoint's ``data_subset``.
        where: the checkpoint, for messages.
    """
    if int(record["total"]) != total:
        raise CheckpointError(
            f"{where} trained on {record['n']} of {record['total']} images, but the training split now holds {total}; "
            "point paths.data_dir at the data it was trained on"
        )
    idx = record.get("indices")
    idx = balanced_subset(total, labels, int(record["n"]), int(record["seed"])) if idx is None else idx.to(torch.int64)
    if indices_hash(idx) != record["sha256"]:
        raise CheckpointError(f"{where}: the training subset (n={record['n']}, seed={record['seed']}) does not match its recorded hash")
    return idx


def restore_subset(data: ImageData, record: dict[str, Any] | None, where: str) -> ImageData:
    """The training subset a checkpoint recorded (see :func:`recorded_indices`), taken from the full split ``data``.

    Args:
        data: the full training split, loaded as in training.
        record: the checkpoint's ``data_subset`` (None: it trained on every image, ``data`` is returned).
        where: the checkpoint, for messages.
    """
    if record is None:
        return data
    return take(data, recorded_indices(len(data), data.labels, record, where), int(record["n"]), int(record["seed"]))


def load_training_set(cfg: Any, data_dir: str | Path, cache_dir: str | Path) -> ImageData:
    """The images a network trains on: the train split, narrowed to ``dataset.n`` when set.

    Args:
        cfg: the ``dataset`` node (``n`` and ``subset_seed`` may be absent in old checkpoints).
        data_dir: the data root (``paths.data_dir``).
        cache_dir: decoded-archive cache (``paths.cache_dir``).
    """
    data = load_dataset(cfg, data_dir, cache_dir, "train")
    return select_subset(data, cfg.get("n"), int(cfg.get("subset_seed", 0) or 0))
