"""Score N real MNIST test images exactly as ``ddpm-evaluate feature_extractor=mnist`` scores N samples.

Usage::

    DDPM_DATA_DIR=/path/to/data python scripts/eval_real_baseline.py [--cache-dir DIR] [--num 500]

Prints JSON: FID/KID/IS (classifier features, against the whole training split), coverage and
memorisation of the first ``--num`` test images. This is the best a generator can do at that sample
count, the floor to read ``ddpm-evaluate`` numbers against. Uses the cached classifier (trained on
first use) and the same real-feature cache as ``ddpm-evaluate``.
"""

from __future__ import annotations

import argparse
import json
import os

from omegaconf import OmegaConf

from ddpm.data import load_dataset
from ddpm.evaluate.classifier import get_classifier
from ddpm.evaluate.coverage import coverage
from ddpm.evaluate.fidelity import domain_extractor, fidelity_metrics
from ddpm.memorisation import memorisation


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("DDPM_DATA_DIR", "data"), help="data root holding MNIST/raw")
    parser.add_argument("--cache-dir", default=os.environ.get("DDPM_CACHE_DIR", "~/.cache/ddpm"), help="paths.cache_dir of ddpm-evaluate")
    parser.add_argument("--num", type=int, default=500, help="test images scored (compare with num_samples)")
    args = parser.parse_args(argv)

    cfg = OmegaConf.create(
        {"name": "mnist", "root": "MNIST", "image_size": 32, "channels": 1, "resize": False, "download": False, "num_classes": 10}
    )
    train = load_dataset(cfg, args.data_dir, args.cache_dir, "train").images
    test = load_dataset(cfg, args.data_dir, args.cache_dir, "test").images[: args.num]
    clf = get_classifier(cfg, args.data_dir, args.cache_dir)
    cache_name = f"mnist-32px-train-{len(train)}-mnist-classifier-{clf.digest}"  # the name ddpm-evaluate uses
    fid = fidelity_metrics(
        test,
        train,
        domain_extractor(),
        ["fid", "kid", "isc"],
        weights_path=str(clf.path),
        cache_root=os.path.join(os.path.expanduser(args.cache_dir), "fidelity"),
        real_cache_name=cache_name,
    )
    out = {"fidelity": {"mnist": fid}, "coverage": coverage(clf.model, test), "memorisation": memorisation(test, train).summary(len(train))}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
