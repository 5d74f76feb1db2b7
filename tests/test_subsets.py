"""Training subsets (``dataset.n``): class balance, nesting, the checkpoint's record, and the
commands that must use exactly the network's training images (``ddpm-regimes``, memorisation)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_config, tiny_train_overrides

from ddpm.data import load_dataset
from ddpm.data.subset import balanced_subset, indices_hash, restore_subset, select_subset
from ddpm.errors import CheckpointError, ConfigError, DataError


def test_balanced_subset_counts_and_nesting() -> None:
    labels = torch.arange(1000) % 10  # 100 per class
    idx = balanced_subset(1000, labels, 64, seed=3)
    counts = torch.bincount(labels[idx], minlength=10)
    # 64 = 6 per class + 4 extra: four classes hold 7, six hold 6
    assert sorted(counts.tolist()) == [6] * 6 + [7] * 4
    assert idx.tolist() == sorted(set(idx.tolist()))
    assert torch.equal(idx, balanced_subset(1000, labels, 64, seed=3))  # reproducible
    assert not torch.equal(idx, balanced_subset(1000, labels, 64, seed=4))
    # one seed: every smaller subset lies inside every larger one
    prev = set()
    for n in (10, 64, 128, 500, 1000):
        cur = set(balanced_subset(1000, labels, n, seed=3).tolist())
        assert prev <= cur and len(cur) == n
        prev = cur


def test_small_class_gives_all_it_has() -> None:
    labels = torch.tensor([0] * 3 + [1] * 50 + [2] * 50)
    idx = balanced_subset(len(labels), labels, 30, seed=0)
    assert torch.bincount(labels[idx]).tolist() == [3, 14, 13] or torch.bincount(labels[idx]).tolist() == [3, 13, 14]


def test_unlabelled_subset_and_bounds() -> None:
    idx = balanced_subset(50, None, 7, seed=1)
    assert len(idx) == 7 and len(set(idx.tolist())) == 7 and int(idx.max()) < 50
    with pytest.raises(ConfigError, match=r"dataset.n=51 must lie in 1..50"):
        balanced_subset(50, None, 51, seed=1)


def test_record_restores_and_detects_other_data() -> None:
    from ddpm.data.datasets import ImageData

    images = torch.arange(200, dtype=torch.uint8).view(200, 1, 1, 1)
    data = ImageData(images, torch.arange(200) % 4, "toy", "memory")
    sub = select_subset(data, 20, 5)
    assert sub.subset["n"] == 20 and sub.subset["total"] == 200
    assert torch.bincount(sub.labels).tolist() == [5, 5, 5, 5]
    back = restore_subset(data, sub.subset, "ckpt")
    assert torch.equal(back.images, sub.images)
    # without stored indices the subset is drawn again and checked against the hash
    no_idx = {**sub.subset, "indices": None}
    assert torch.equal(restore_subset(data, no_idx, "ckpt").images, sub.images)
    with pytest.raises(CheckpointError, match="does not match its recorded hash"):
        restore_subset(data, {**no_idx, "sha256": indices_hash(torch.arange(20))}, "ckpt")
    with pytest.raises(CheckpointError, match="training split now holds 150"):
        restore_subset(ImageData(images[:150], None, "toy", "memory"), sub.subset, "ckpt")
    with pytest.raises(DataError, match="exceeds the 200 training images"):
        select_subset(data, 201, 0)
    assert select_subset(data, None, 0) is data and select_subset(data, 200, 0) is data


def test_parts_are_recorded_restored_and_checked() -> None:
    from ddpm.data.datasets import ImageData

    images = torch.arange(200, dtype=torch.uint8).view(200, 1, 1, 1)
    data = ImageData(images, torch.arange(200) % 4, "toy", "memory")
    parts = [select_subset(data, 20, 5, part) for part in (0, 1)]
    assert [p.subset["part"] for p in parts] == [0, 1] and select_subset(data, 20, 5).subset["part"] is None
    assert not set(parts[0].subset["indices"].tolist()) & set(parts[1].subset["indices"].tolist())
    assert [torch.bincount(p.labels).tolist() for p in parts] == [[5, 5, 5, 5]] * 2
    assert set(parts[1].subset["indices"].tolist()) < set(select_subset(data, 21, 5, 1).subset["indices"].tolist())
    for p in parts:  # drawn again from the record (no stored indices): the same part
        assert torch.equal(restore_subset(data, {**p.subset, "indices": None}, "ckpt").images, p.images)
    assert select_subset(data, 100, 5, 1).subset["n"] == 100  # 2n = the split: both halves, whole
    with pytest.raises(ConfigError, match=r"^dataset.n=101 with dataset.subset_part needs 2n=202 <= 200 training images$"):
        select_subset(data, 101, 5, 0)
    with pytest.raises(ConfigError, match=r"^dataset.subset_part=1 needs dataset.n$"):
        select_subset(data, None, 5, 1)
    with pytest.raises(ConfigError, match="dataset.subset_part must be 0 or 1 or null, got 2"):
        balanced_subset(200, None, 20, 5, 2)


def test_subset_part_is_checked_at_start_up() -> None:
    from ddpm.train.config import validate_train

    with pytest.raises(ConfigError, match=r"^dataset.subset_part=0 needs dataset.n$"):
        validate_train(compose_config("train", ["dataset.subset_part=0"]))
    with pytest.raises(ConfigError, match=r"^dataset.subset_part must be 0 or 1 or null, got -1$"):
        validate_train(compose_config("train", ["dataset.n=10", "dataset.subset_part=-1"]))
    validate_train(compose_config("train", ["dataset.n=10", "dataset.subset_part=1"]))


SUBSET_RUN = {
    "dataset.n": 40,
    "dataset.subset_seed": 7,
    "dataset.image_size": 8,
    "dataset.resize": "true",
    "model.channel_mult": "[1]",
    "model.attention_resolutions": "[]",
    "train.max_steps": 2,
    "train.ckpt_every": 2,
    "train.batch_size": 8,
    "runtime.num_threads": 1,
}


@pytest.fixture(scope="module")
def subset_ckpt(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MNIST network at 8x8 trained 2 steps on 40 seeded images."""
    from ddpm.train import train

    run_dir = tmp_path_factory.mktemp("subset_run")
    train(compose_config("train", tiny_train_overrides(data_dir, run_dir / "cache", **SUBSET_RUN)), run_dir)
    return run_dir / "checkpoints" / "last.pt"


def test_resume_refuses_another_subset(subset_ckpt: Path, data_dir: Path, tmp_path: Path) -> None:
    """Resuming with another subset_seed would silently train on other images: refused, checkpoint untouched."""
    from ddpm.train import train

    before = subset_ckpt.read_bytes()
    extra = dict(SUBSET_RUN, **{"dataset.subset_seed": 8, "train.max_steps": 3, "resume": str(subset_ckpt)})
    with pytest.raises(CheckpointError, match=r"another subset of the images \(n=40, subset_seed=7\), now n=40, subset_seed=8"):
        train(compose_config("train", tiny_train_overrides(data_dir, tmp_path / "cache", **extra)), tmp_path / "run")
    assert subset_ckpt.read_bytes() == before
    extra = dict(SUBSET_RUN, **{"dataset.subset_part": 0, "train.max_steps": 3, "resume": str(subset_ckpt)})
    match = r"\(n=40, subset_seed=7\), now n=40, subset_seed=7, subset_part=0: resume with .* dataset.subset_part"
    with pytest.raises(CheckpointError, match=match):
        train(compose_config("train", tiny_train_overrides(data_dir, tmp_path / "cache", **extra)), tmp_path / "run2")
    assert subset_ckpt.read_bytes() == before


def test_checkpoint_records_the_subset(subset_ckpt: Path, data_dir: Path) -> None:
    from ddpm.checkpoint import load_checkpoint
    from ddpm.pretrained import load_pretrained, training_set

    state = load_checkpoint(subset_ckpt)
    rec = state["data_subset"]
    full = load_dataset(
        compose_config("train", [f"paths.data_dir={data_dir}", "dataset.image_size=8", "dataset.resize=true"]).dataset,
        data_dir,
        "/tmp",
        "train",
    )
    assert rec["n"] == 40 and rec["seed"] == 7 and rec["part"] is None and rec["total"] == len(full) == 60000
    assert rec["indices"].tolist() == balanced_subset(60000, full.labels, 40, 7).tolist()
    assert torch.bincount(full.labels[rec["indices"].long()], minlength=10).tolist() == [4] * 10
    pre = load_pretrained(subset_ckpt)
    cfg = compose_config("evaluate", [f"ckpt={subset_ckpt}", f"paths.data_dir={data_dir}", f"paths.cache_dir={subset_ckpt.parent}"])
    train_set = training_set(cfg, pre)
    assert train_set.images.shape == (40, 1, 8, 8)
    assert torch.equal(train_set.images, full.images[rec["indices"].long()])


def test_regimes_uses_the_training_subset(subset_ckpt: Path, data_dir: Path, tmp_path: Path) -> None:
    from ddpm.regimes.cli import run_regimes

    base = [
        f"ckpt={subset_ckpt}",
        f"paths.data_dir={data_dir}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "runtime.num_threads=1",
        "regimes.analyses=[spectrum]",
        "plots=false",
    ]
    rec = run_regimes(compose_config("regimes", base + ["dataset.n=40"]), tmp_path / "ok")
    assert rec["n"] == 40 and rec["d"] == 64  # the network's 40 images at its 8x8 resolution
    with pytest.raises(ConfigError, match=r"^dataset.n=30, but .* was trained on 40 images; .* set dataset.n=40$"):
        run_regimes(compose_config("regimes", base + ["dataset.n=30"]), tmp_path / "bad")


def test_regimes_refuses_other_n_in_one_line(subset_ckpt: Path, data_dir: Path, tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("ddpm-regimes")
    cmd = [str(exe), f"ckpt={subset_ckpt}", f"paths.data_dir={data_dir}", "dataset.n=1000", "regimes=trained", "runtime.num_threads=1"]
    cmd.append(f"hydra.run.dir={tmp_path / 'run'}")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: dataset.n=1000, but") and "trained on 40 images" in lines[0], r.stderr


def test_regimes_dataset_n_is_the_training_subset(data_dir: Path, tmp_path: Path) -> None:
    """``ddpm-regimes dataset.n=N`` (with ``dataset.subset_seed`` and ``dataset.subset_part``) takes
    exactly the class-balanced images that ``ddpm-train dataset.n=N`` trains on."""
    from ddpm.data.subset import load_training_set
    from ddpm.regimes.config import validate_regimes
    from ddpm.regimes.data import data_source, load_points

    paths = [f"paths.data_dir={data_dir}", f"paths.cache_dir={tmp_path}"]
    full = load_dataset(compose_config("train", paths).dataset, data_dir, tmp_path, "train")
    for n, part in ((40, None), (40, 1)):
        keys = [f"dataset.n={n}", "dataset.subset_seed=7"] + ([] if part is None else [f"dataset.subset_part={part}"])
        idx = balanced_subset(len(full), full.labels, n, 7, part)
        trained = load_training_set(compose_config("train", paths + keys).dataset, data_dir, tmp_path)
        assert torch.equal(trained.subset["indices"].long(), idx)  # what ddpm-train trains on
        pts = load_points(
            data_source(compose_config("regimes", ["dataset=mnist", "points.downsample=4", *paths, *keys])), data_dir, tmp_path
        )
        assert pts.n == n and torch.equal(pts.x, pts.reference[idx]) and torch.equal(pts.labels, full.labels[idx])
        assert torch.equal(pts.labels, trained.labels) and torch.bincount(pts.labels, minlength=10).tolist() == [4] * 10
    # one seed: the subset of a smaller n lies inside that of a larger one (a random draw would not nest)
    small = load_points(data_source(compose_config("regimes", ["dataset=mnist", "dataset.n=20", *paths])), data_dir, tmp_path)
    big = load_points(data_source(compose_config("regimes", ["dataset=mnist", "dataset.n=40", *paths])), data_dir, tmp_path)
    assert {tuple(r) for r in small.x.tolist()} <= {tuple(r) for r in big.x.tolist()}
    with pytest.raises(ConfigError, match=r"^dataset.n must be >= 2 for ddpm-regimes .*got 1$"):
        validate_regimes(compose_config("regimes", ["dataset.n=1"]))


def test_dataset_n_range_is_checked() -> None:
    from ddpm.train.config import validate_train

    with pytest.raises(ConfigError, match="dataset.n must lie in 1..100000000 or null"):
        validate_train(compose_config("train", ["dataset.n=0"]))


def test_exact_score_sampling_copies_the_training_subset(subset_ckpt: Path, data_dir: Path, tmp_path: Path) -> None:
    """``ddpm-sample sampler=exact_score`` samples with the exact score of the network's 40 images:
    every saved sample is one of them, and the GIF is written."""
    import numpy as np
    from PIL import Image

    from ddpm.checkpoint import load_checkpoint
    from ddpm.sample import sample

    over = [f"ckpt={subset_ckpt}", f"paths.data_dir={data_dir}", f"paths.cache_dir={tmp_path / 'cache'}", "runtime.num_threads=1"]
    over += ["sampler=exact_score", "num_samples=6", "batch_size=6", "save_images=true", "gif.num_images=4"]
    sample(compose_config("sample", over), tmp_path / "run")
    full = load_dataset(compose_config("train", ["dataset.image_size=8", "dataset.resize=true"]).dataset, data_dir, tmp_path / "c", "train")
    train = full.images[load_checkpoint(subset_ckpt)["data_subset"]["indices"].long()].flatten(1).int()
    for j in range(6):
        img = torch.from_numpy(np.asarray(Image.open(tmp_path / "run" / "images" / f"{j:06d}.png").convert("L")).copy()).flatten().int()
        assert int((train - img).abs().max(1).values.min()) <= 1, j  # a copy, up to the uint8 rounding
    assert (tmp_path / "run" / "sampling.gif").is_file()
