"""The domain classifier: a small CNN trained on a labelled dataset's training split.

It serves two purposes in evaluation: its penultimate layer is a feature space for FID/KID that
needs no download (registered with torch-fidelity in :mod:`ddpm.evaluate.fidelity`), and its
predictions give the class histogram, entropy and confidence of generated samples. A trained
classifier is cached on disk together with its accuracy on the test split, so it is trained once.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ddpm.errors import CheckpointError, DataError

log = logging.getLogger(__name__)

FEATURE_DIM = 128
CLASSIFIER_VERSION = 1  # bump when the architecture or recipe changes: old caches are retrained


def centre_pad(x: torch.Tensor, side: int, value: float) -> torch.Tensor:
    """Square images smaller than ``side`` by an even margin, centred on ``value`` (as the MNIST
    loader pads 28 px to 32); any other shape is returned unchanged.

    Args:
        x: images (..., H, W).
        side: the side to pad to.
        value: the fill (-1.0 for black in the model range, 0 in uint8).
    """
    h, w = x.shape[-2:]
    margin = side - h
    if h != w or margin <= 0 or margin % 2:
        return x
    return F.pad(x, (margin // 2,) * 4, value=value)


class DomainClassifier(nn.Module):
    """Three conv blocks (BatchNorm, max-pool) and a 128-d feature layer before the logits.

    Args:
        channels: image channels (1 for MNIST).
        image_size: image side; must be divisible by 8.
        num_classes: number of labels.
        width: channels of the first conv block (doubled in each later block).
    """

    def __init__(self, channels: int = 1, image_size: int = 32, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = channels
        for c_out in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c_out
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.embed = nn.Linear(c_in * (image_size // 8) ** 2, FEATURE_DIM)
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.3), nn.Linear(FEATURE_DIM, num_classes))
        self.channels, self.image_size, self.num_classes = channels, image_size, num_classes

    @staticmethod
    def preprocess(x: torch.Tensor) -> torch.Tensor:
        """uint8 [0, 255] -> float [-1, 1] (the project's model range)."""
        return x.float() / 127.5 - 1.0

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The 128-d embedding (before its ReLU) and the class logits of float images in [-1, 1]
        (images of a smaller side, e.g. MNIST at its native 28 px, are centre-padded with black)."""
        feats = self.embed(self.body(centre_pad(x, self.image_size, -1.0)))
        return feats, self.head(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(x)[1]


@dataclass
class TrainedClassifier:
    """A classifier and what is known about it.

    Args:
        model: the network in eval mode.
        test_accuracy: accuracy on the dataset's test split, measured after training.
        dataset: name of the dataset it was trained on.
        path: the cache file it was loaded from or saved to.
        digest: short SHA-256 of the file (names cached feature statistics).
    """

    model: DomainClassifier
    test_accuracy: float
    dataset: str
    path: Path
    digest: str


@torch.no_grad()
def accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000, device: torch.device | str = "cpu"
) -> float:
    """Top-1 accuracy of ``model`` on uint8 ``images`` (N, C, H, W) with int ``labels``."""
    model.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        x = DomainClassifier.preprocess(images[i : i + batch_size].to(device))
        correct += int((model(x).argmax(1).cpu() == labels[i : i + batch_size]).sum())
    return correct / len(images)


def train_classifier(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    num_classes: int,
    epochs: int = 2,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    width: int = 16,
) -> DomainClassifier:
    """Train a :class:`DomainClassifier` with AdamW and a one-cycle learning rate.

    Args:
        train_images: uint8 images (N, C, H, W).
        train_labels: int64 labels (N,).
        num_classes: number of labels.
        epochs: passes over the data (2 reach > 99% test accuracy on MNIST).
        batch_size: images per step.
        lr: peak learning rate.
        seed: seeds the initialisation, shuffling and dropout.
        device: where to train.
        width: channels of the first conv block.
    """
    if train_labels is None:
        raise DataError("the domain classifier needs a labelled dataset")
    torch.manual_seed(seed)
    n, c, h, _ = train_images.shape
    model = DomainClassifier(c, h, num_classes, width).to(device)
    steps_per_epoch = -(-n // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        t0, total = time.time(), 0.0
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            x = DomainClassifier.preprocess(train_images[idx].to(device))
            # Small random shifts (±2 px) make the features robust to the slight misplacements
            # that generated digits have.
            dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(x), train_labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        log.info("classifier epoch %d/%d: loss %.4f (%.0f s)", epoch + 1, epochs, total / n, time.time() - t0)
    return model.eval()


def file_digest(path: Path) -> str:
    """First 12 hex digits of the SHA-256 of a file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def save_classifier(
    model: DomainClassifier, test_accuracy: float, dataset: str, path: Path, extra: dict | None = None
) -> TrainedClassifier:
    """Write the classifier and its accuracy atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "version": CLASSIFIER_VERSION,
        "dataset": dataset,
        "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
        "arch": {
            "channels": model.channels,
            "image_size": model.image_size,
            "num_classes": model.num_classes,
            "width": model.body[0].out_channels,
        },
        "test_accuracy": float(test_accuracy),
        **(extra or {}),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return TrainedClassifier(model, float(test_accuracy), dataset, path, file_digest(path))


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> TrainedClassifier:
    """Load a cached classifier; raises :class:`CheckpointError` if it is not one."""
    path = Path(path).expanduser()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        arch = state["arch"]
        model = DomainClassifier(arch["channels"], arch["image_size"], arch["num_classes"], arch["width"])
        model.load_state_dict(state["state_dict"])
    except FileNotFoundError:
        raise CheckpointError(f"classifier file {path} does not exist") from None
    except Exception as exc:  # unpickling and key errors alike mean a foreign or damaged file
        raise CheckpointError(
            f"{path} is not a ddpm domain classifier: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
    if state.get("version") != CLASSIFIER_VERSION:
        raise CheckpointError(f"classifier {path} was written by another version of the recipe; delete it to retrain")
    model.to(device).eval().requires_grad_(False)
    return TrainedClassifier(model, float(state["test_accuracy"]), str(state["dataset"]), path, file_digest(path))


def default_classifier_path(cache_dir: str | Path, dataset: str) -> Path:
    """Where the classifier of ``dataset`` is cached: ``<cache_dir>/classifiers/<dataset>-v<N>.pt``."""
    return Path(cache_dir).expanduser() / "classifiers" / f"{dataset}-v{CLASSIFIER_VERSION}.pt"


def packaged_classifier_path(dataset: str) -> Path | None:
    """The classifier shipped with the package for ``dataset`` (trained by scripts/train_classifier.py), if any."""
    import importlib.resources as resources

    candidate = Path(str(resources.files("ddpm.evaluate") / "weights" / f"{dataset}-v{CLASSIFIER_VERSION}.pt"))
    return candidate if candidate.is_file() else None


def get_classifier(
    dataset_cfg,
    data_dir: str | Path,
    cache_dir: str | Path,
    path: str | Path | None = None,
    train_if_missing: bool = True,
    device: torch.device | str = "cpu",
    epochs: int = 2,
) -> TrainedClassifier:
    """Load the domain classifier of a dataset: the cached one, else the one shipped with the
    package, else train (and cache) it on first use.

    Args:
        dataset_cfg: the ``dataset`` config node (must name a labelled dataset).
        data_dir: the data root (``paths.data_dir``).
        cache_dir: ``paths.cache_dir``; the classifier lives under ``classifiers/`` there.
        path: an explicit classifier file instead of the cached one.
        train_if_missing: train when no file exists (a few minutes on CPU for MNIST); else fail.
        device: where to run.
        epochs: training passes when it has to be trained.
    """
    from ddpm.data import load_dataset

    target = Path(path).expanduser() if path else default_classifier_path(cache_dir, dataset_cfg.name)
    if not path and not target.is_file():
        target = packaged_classifier_path(dataset_cfg.name) or target  # the shipped copy, else train one
    if target.is_file():
        clf = load_classifier(target, device)
        if clf.dataset != dataset_cfg.name:
            raise CheckpointError(f"classifier {target} was trained on {clf.dataset}, not {dataset_cfg.name}")
        return clf
    if not train_if_missing:
        raise CheckpointError(
            f"no domain classifier at {target}; run scripts/train_classifier.py or set feature_extractor.train_if_missing=true"
        )
    train = load_dataset(dataset_cfg, data_dir, cache_dir, "train")
    test = load_dataset(dataset_cfg, data_dir, cache_dir, "test")
    if train.labels is None or test.labels is None:
        raise DataError(f"dataset {dataset_cfg.name} has no labels: a domain classifier cannot be trained on it")
    num_classes = int(dataset_cfg.num_classes or int(train.labels.max()) + 1)
    log.info("training the %s domain classifier on %d images (once; cached at %s)", dataset_cfg.name, len(train), target)
    t0 = time.time()
    model = train_classifier(train.images, train.labels, num_classes, epochs=epochs, device=device)
    seconds = time.time() - t0
    acc = accuracy(model, test.images, test.labels, device=device)
    log.info("%s classifier: test accuracy %.4f after %.0f s of training", dataset_cfg.name, acc, seconds)
    model.requires_grad_(False)
    return save_classifier(
        model, acc, dataset_cfg.name, target, {"train_seconds": seconds, "epochs": epochs, "num_train": len(train), "num_test": len(test)}
    )
