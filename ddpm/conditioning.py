"""Class conditioning and classifier-free guidance (Ho & Salimans 2022).

A conditional network takes a class label per image; label ``num_classes`` is the learned *null*
class that training substitutes for a share ``train.cond_drop_prob`` of the labels, so that the
same network also predicts the unconditional ε. Guidance with scale s mixes the two predictions:
ε = ε_∅ + s (ε_y - ε_∅); s = 0 is the unconditional model, s = 1 the conditional one.
"""

from __future__ import annotations

from typing import Any

import torch

from ddpm.errors import ConfigError, DataError

AUTO = "auto"


def check_num_classes(value: Any, where: str = "model.num_classes") -> None:
    """``null`` (unconditional), ``auto`` (from the dataset's labels) or a class count >= 1; raises :class:`ConfigError`.

    Args:
        value: the configured value.
        where: its key, for the message.
    """
    if value is None or value == AUTO:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} must be null (unconditional), auto (the dataset's classes) or an int >= 1, got {value!r}")


def resolve_num_classes(value: Any, dataset_cfg: Any, labels: torch.Tensor | None) -> int | None:
    """The class count a network is built with: ``auto`` becomes the dataset's; labels outside it are refused.

    Args:
        value: ``model.num_classes`` (null, ``auto`` or an int).
        dataset_cfg: the ``dataset`` node (its ``num_classes`` when it declares one).
        labels: the training labels, or None for an unlabelled dataset.
    """
    check_num_classes(value)
    if value is None:
        return None
    if labels is None or len(labels) == 0:
        raise DataError(
            f"model.num_classes={value} needs class labels, but dataset {dataset_cfg.name} has none; use model.num_classes=null"
        )
    seen = int(labels.max()) + 1
    if value == AUTO:
        declared = dataset_cfg.get("num_classes")
        return int(declared) if declared else seen
    if int(labels.min()) < 0 or seen > int(value):
        raise DataError(f"dataset {dataset_cfg.name} has labels {int(labels.min())}..{seen - 1}, outside model.num_classes={value}")
    return int(value)


def drop_labels(labels: torch.Tensor, p: float, null_class: int, generator: torch.Generator) -> torch.Tensor:
    """Replace each label by ``null_class`` with probability ``p``, with ``len(labels)`` numbers from ``generator``.

    Args:
        labels: (G,) class labels of the whole global batch.
        p: the drop probability (``train.cond_drop_prob``).
        null_class: the null label (the class count).
        generator: the run's shared generator, so that every rank drops the same labels.
    """
    drop = torch.rand(labels.shape, generator=generator, device=labels.device) < p
    return torch.where(drop, torch.full_like(labels, null_class), labels)


def round_robin_labels(n: int, num_classes: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Label ``i % num_classes`` for sample i: whatever ``n`` is, sample i keeps its class (and its seed).

    Args:
        n: how many samples.
        num_classes: the model's class count.
        device: where the labels go.
    """
    return torch.arange(n, device=device) % num_classes


def class_rows(x: torch.Tensor, labels: torch.Tensor, num_classes: int, per_row: int) -> torch.Tensor:
    """Reorder samples into a grid of one row per class: row c holds the first ``per_row`` samples of class c.

    Args:
        x: samples (N, C, H, W).
        labels: their labels (N,).
        num_classes: rows of the grid.
        per_row: samples per row; every class must have that many.
    """
    order = []
    for c in range(num_classes):
        idx = torch.nonzero(labels.cpu() == c).flatten()[:per_row]
        if len(idx) < per_row:
            raise ValueError(f"class {c} has {len(idx)} samples, fewer than the {per_row} of a row")
        order.append(idx)
    return x[torch.cat(order)]


def guided(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """ε_∅ + s (ε_y - ε_∅).

    Args:
        eps_uncond: the prediction for the null class.
        eps_cond: the prediction for the requested classes.
        scale: the guidance scale s.
    """
    return eps_uncond + scale * (eps_cond - eps_uncond)


def per_class_accuracy(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """How often the classifier names the requested class, overall and per class.

    Args:
        probs: classifier probabilities (N, K) of the samples.
        labels: the class each sample was generated for (N,).
        num_classes: the model's class count.
    """
    pred = probs.argmax(1).cpu()
    labels = labels.cpu()
    per = {}
    for c in range(num_classes):
        mask = labels == c
        n = int(mask.sum())
        per[str(c)] = {"num_samples": n, "accuracy": float((pred[mask] == c).float().mean()) if n else None}
    return {
        "num_samples": len(labels),
        "accuracy": float((pred == labels).float().mean()),
        "chance": 1.0 / num_classes,
        "per_class": per,
    }
