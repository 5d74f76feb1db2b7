"""Train (or re-measure) the MNIST domain classifier used by ``ddpm-evaluate feature_extractor=mnist``.

Usage::

    DDPM_DATA_DIR=/path/to/data python scripts/train_classifier.py [--cache-dir DIR] [--epochs 2] [--force]

Trains the classifier on the training split, measures its test accuracy and caches both under
``<cache-dir>/classifiers/`` (the place ``ddpm-evaluate`` looks), printing the training time and
accuracy. With an existing cache file it only re-measures the accuracy unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from omegaconf import OmegaConf

from ddpm.data import load_dataset
from ddpm.evaluate.classifier import accuracy, default_classifier_path, get_classifier


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("DDPM_DATA_DIR", "data"), help="data root holding MNIST/raw")
    parser.add_argument("--cache-dir", default=os.environ.get("DDPM_CACHE_DIR", "~/.cache/ddpm"), help="paths.cache_dir of ddpm-evaluate")
    parser.add_argument("--epochs", type=int, default=2, help="training passes over the 60,000 images")
    parser.add_argument("--force", action="store_true", help="retrain even if a cached classifier exists")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = OmegaConf.create(
        {
            "name": "mnist",
            "root": "MNIST",
            "image_size": 32,
            "channels": 1,
            "hflip": False,
            "resize": False,
            "download": False,
            "num_classes": 10,
        }
    )
    path = default_classifier_path(args.cache_dir, "mnist")
    if args.force and path.exists():
        path.unlink()
    t0 = time.time()
    clf = get_classifier(cfg, args.data_dir, args.cache_dir, device=args.device, epochs=args.epochs)
    seconds = time.time() - t0
    test = load_dataset(cfg, args.data_dir, args.cache_dir, "test")
    measured = accuracy(clf.model, test.images, test.labels, device=args.device)
    print(
        json.dumps(
            {
                "path": str(clf.path),
                "stored_test_accuracy": clf.test_accuracy,
                "measured_test_accuracy": measured,
                "seconds": round(seconds, 1),
                "torch_threads": torch.get_num_threads(),
            }
        )
    )
    return 0 if measured > 0.99 else 1


if __name__ == "__main__":
    sys.exit(main())
