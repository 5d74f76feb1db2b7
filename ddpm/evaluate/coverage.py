"""Mode coverage under the domain classifier: class histogram, its entropy and mean confidence."""

from __future__ import annotations

import math

import torch

from ddpm.evaluate.classifier import DomainClassifier


@torch.no_grad()
def class_probabilities(
    model: DomainClassifier, images: torch.Tensor, batch_size: int = 1000, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Softmax class probabilities (N, K) of uint8 images (N, C, H, W)."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = model.preprocess(images[i : i + batch_size, : model.channels].to(device))
        out.append(model(x).softmax(1).cpu())
    return torch.cat(out)


def coverage_from_probabilities(probs: torch.Tensor) -> dict:
    """Histogram of predicted classes, its entropy and the mean top-class confidence.

    Args:
        probs: class probabilities (N, K).

    The entropy is in nats; ``entropy_normalised`` divides it by log K, so 1 means every class is
    predicted equally often and 0 means a single class (mode collapse).
    """
    n, k = probs.shape
    pred = probs.argmax(1)
    counts = torch.bincount(pred, minlength=k).double()
    p = counts / n
    nz = p[p > 0]
    entropy = float(-(nz * nz.log()).sum()) + 0.0  # + 0.0 turns -0.0 (a single class) into 0.0
    return {
        "num_samples": int(n),
        "histogram": [int(c) for c in counts],
        "entropy": entropy,
        "entropy_normalised": entropy / math.log(k) if k > 1 else 0.0,
        "mean_confidence": float(probs.max(1).values.mean()),
        "classes_seen": int((counts > 0).sum()),
    }


def coverage(model: DomainClassifier, images: torch.Tensor, device: torch.device | str = "cpu") -> dict:
    """Coverage statistics (see :func:`coverage_from_probabilities`) of uint8 ``images``."""
    return coverage_from_probabilities(class_probabilities(model, images, device=device))
