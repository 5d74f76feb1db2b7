"""Seeded, class-balanced training subsets (``dataset.n``, ``dataset.subset_seed``,
``dataset.subset_part``) and their record.

Images join a subset in one fixed, seeded order (:func:`subset_order`): round-robin over the
classes in a seeded class order, each class giving the next image of its own seeded permutation,
and a class that has given all its images is skipped. The subset of n images is the first n of
that order, so for one seed the subset of n holds the subset of every smaller n (a sweep over n
adds images, it never swaps them), and the classes that still have images hold shares that differ
by at most one. Unlabelled data is one seeded permutation.

``dataset.subset_part`` (0 or 1) draws from half of the split: each class's permutation is cut
into alternate positions (the odd one out of odd-sized classes going to the parts in turn, so
the halves differ by at most one image), and the same order runs over that half. The two parts
of n are disjoint, each is balanced and each nests across n (the disjoint-halves test).

The checkpoint records the subset (:func:`subset_record`): n, the seed, the part, the size of
the full split, a SHA-256 of the sorted indices and, up to :data:`MAX_RECORDED_INDICES`, the indices.
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


def subset_order(total: int, labels: torch.Tensor | None, seed: int, part: int | None = None) -> torch.Tensor:
    """The int64 indices of the split (or of its half ``part``) in the order they join a subset.

    Args:
        total: images in the full split.
        labels: int64 classes (total,), or None for unlabelled data (a plain seeded permutation).
        seed: ``dataset.subset_seed``.
        part: ``dataset.subset_part``: 0 or 1 for alternate positions of each class's permutation,
            None for all images.
    """
    if labels is None:
        perm = torch.randperm(total, generator=_generator(seed, 0))
        return perm if part is None else perm[int(part) :: 2]
    classes = torch.unique(labels)
    order = torch.randperm(len(classes), generator=_generator(seed, 0))
    position = torch.empty_like(order)
    position[order] = torch.arange(len(classes))  # where each class comes in a round
    members = [torch.nonzero(labels == c).flatten() for c in classes.tolist()]
    # the odd one out of each odd-sized class goes to part 0 and part 1 in turn (in the class
    # order): the halves differ by at most one image, so n <= total // 2 fits in either
    odd = torch.tensor([len(m) % 2 for m in members], dtype=torch.long)
    flip = (torch.cumsum(odd[order], 0) - odd[order])[position] % 2  # odd-sized classes before it, mod 2
    picked, keys = [], []
    for i, (c, m) in enumerate(zip(classes.tolist(), members, strict=True)):
        m = m[torch.randperm(len(m), generator=_generator(seed, 1 + int(c)))]
        if part is not None:
            m = m[(int(part) + int(flip[i])) % 2 :: 2]
        picked.append(m)
        keys.append(torch.arange(len(m)) * len(classes) + position[i])  # round j, then the class's place in it
    return torch.cat(picked)[torch.argsort(torch.cat(keys))]


def balanced_subset(total: int, labels: torch.Tensor | None, n: int, seed: int, part: int | None = None) -> torch.Tensor:
    """Sorted int64 indices of a seeded subset of ``n`` of ``total`` images, class-balanced when
    labelled: the first ``n`` of :func:`subset_order`.

    Args:
        total: images in the full split.
        labels: int64 classes (total,), or None for unlabelled data (a plain seeded draw).
        n: subset size, 1 <= n <= total (<= total // 2 with ``part``).
        seed: ``dataset.subset_seed``.
        part: ``dataset.subset_part`` (0 or 1: one of two disjoint halves), or None.
    """
    if part is not None and part not in (0, 1):
        raise ConfigError(f"dataset.subset_part must be 0 or 1 or null, got {part}")
    if part is not None and 2 * n > total:
        raise ConfigError(f"dataset.n={n} with dataset.subset_part needs 2n={2 * n} <= {total} training images")
    if not 1 <= n <= total:
        raise ConfigError(f"dataset.n={n} must lie in 1..{total} (the training images)")
    return subset_order(total, labels, seed, part)[:n].sort().values


def indices_hash(indices: torch.Tensor) -> str:
    """SHA-256 (hex) of sorted indices as little-endian int64."""
    return hashlib.sha256(indices.to(torch.int64).sort().values.numpy().astype("<i8").tobytes()).hexdigest()


def subset_record(indices: torch.Tensor, n: int, seed: int, total: int, part: int | None = None) -> dict[str, Any]:
    """What a checkpoint stores about its training subset.

    Args:
        indices: sorted indices into the full training split.
        n: ``dataset.n``.
        seed: ``dataset.subset_seed``.
        total: images of the full split.
        part: ``dataset.subset_part`` (None: the subset of the whole split; old records lack the key).
    """
    return {
        "n": int(n),
        "seed": int(seed),
        "part": None if part is None else int(part),
        "total": int(total),
        "sha256": indices_hash(indices),
        "indices": indices.to(torch.int32).clone() if len(indices) <= MAX_RECORDED_INDICES else None,
    }


def take(data: ImageData, indices: torch.Tensor, n: int, seed: int, part: int | None = None) -> ImageData:
    """The images (and labels) of the full split ``data`` at ``indices``, carrying their record.

    Args:
        data: the full training split.
        indices: sorted indices into it.
        n: ``dataset.n``.
        seed: ``dataset.subset_seed``.
        part: ``dataset.subset_part``, or None.
    """
    return replace(
        data,
        images=data.images[indices].contiguous(),
        labels=None if data.labels is None else data.labels[indices],
        subset=subset_record(indices, n, seed, len(data), part),
    )


def subset_indices(total: int, labels: torch.Tensor | None, n: int | None, seed: int, part: int | None, name: str) -> torch.Tensor | None:
    """The indices of the training images ``ddpm-train`` trains on: None when ``n`` is null or covers
    the whole split, else the balanced subset of ``n`` of the ``total`` images.

    Args:
        total: images of the full training split.
        labels: their labels (the subset is class-balanced), or None.
        n: ``dataset.n`` (null: all images).
        seed: ``dataset.subset_seed``.
        part: ``dataset.subset_part``: one of two disjoint subsets of ``n`` (None: the subset of all images).
        name: the dataset, for messages.
    """
    if part is not None and n is None:
        raise ConfigError(f"dataset.subset_part={part} needs dataset.n")
    if n is None or (part is None and int(n) == total):
        return None
    if int(n) > total:
        raise DataError(f"dataset.n={n} exceeds the {total} training images of {name}")
    return balanced_subset(total, labels, int(n), int(seed), part)


def select_subset(data: ImageData, n: int | None, seed: int, part: int | None = None) -> ImageData:
    """``data`` itself when ``n`` is null or covers it all, else its balanced subset of ``n`` images
    (:func:`subset_indices`).

    Args:
        data: the full training split.
        n: ``dataset.n`` (null: all images).
        seed: ``dataset.subset_seed``.
        part: ``dataset.subset_part``: one of two disjoint subsets of ``n`` (None: the subset of all images).
    """
    keep = subset_indices(len(data), data.labels, n, seed, part, data.name)
    return data if keep is None else take(data, keep, int(n), int(seed), part)


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
    if idx is None:  # drawn again: a subset drawn by an older allocation no longer matches its hash
        idx = balanced_subset(total, labels, int(record["n"]), int(record["seed"]), record.get("part"))
    else:
        idx = idx.to(torch.int64)
    if indices_hash(idx) != record["sha256"]:
        raise CheckpointError(
            f"{where}: the training subset ({describe_record(record)}) does not match its recorded hash; "
            "its indices are not stored and this version draws other images for them (or the data changed)"
        )
    return idx


def describe_record(record: dict[str, Any] | None) -> str:
    """``n=.., subset_seed=..`` (and ``subset_part=..``) of a subset record, for messages."""
    if record is None:
        return "all images"
    part = record.get("part")
    return f"n={record['n']}, subset_seed={record['seed']}" + ("" if part is None else f", subset_part={part}")


def restore_subset(data: ImageData, record: dict[str, Any] | None, where: str) -> ImageData:
    """The training subset a checkpoint recorded (see :func:`recorded_indices`), taken from the full split ``data``.

    Args:
        data: the full training split, loaded as in training.
        record: the checkpoint's ``data_subset`` (None: it trained on every image, ``data`` is returned).
        where: the checkpoint, for messages.
    """
    if record is None:
        return data
    idx = recorded_indices(len(data), data.labels, record, where)
    return take(data, idx, int(record["n"]), int(record["seed"]), record.get("part"))


def load_training_set(cfg: Any, data_dir: str | Path, cache_dir: str | Path) -> ImageData:
    """The images a network trains on: the train split, narrowed to ``dataset.n`` when set.

    Args:
        cfg: the ``dataset`` node (``n``, ``subset_seed`` and ``subset_part`` may be absent in old checkpoints).
        data_dir: the data root (``paths.data_dir``).
        cache_dir: decoded-archive cache (``paths.cache_dir``).
    """
    data = load_dataset(cfg, data_dir, cache_dir, "train")
    return select_subset(data, cfg.get("n"), int(cfg.get("subset_seed", 0) or 0), cfg.get("subset_part"))
