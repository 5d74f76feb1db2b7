"""``dataset=folder`` as the README writes it (photos of any size, centre-cropped and resized), its
cached listing, and commands other than training reading a folder beyond the memory budget through
the streaming path (``ddpm.data.open_split``) with the numbers of the in-memory path. Every folder
is made here from a handful of images (a few thousand 8x8 ones for the memory cap)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, compose_config, encoded, folder_cfg, make_folder, tiny_train_overrides
from omegaconf import OmegaConf
from PIL import Image
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

import ddpm.data.datasets as datasets
import ddpm.data.sources as sources
import ddpm.data.streaming as streaming
from ddpm.checkpoint import load_checkpoint
from ddpm.data import SplitImages, load_dataset, open_split
from ddpm.data.sources import index_source, list_folder, listing_cache_path
from ddpm.errors import DataError

RNG = np.random.default_rng(22)


def age(root: Path, seconds: float = 60.0) -> None:
    """Date every folder below ``root`` ``seconds`` back (a listing of just-written folders is not cached)."""
    past = time.time() - seconds
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        os.utime(folder, (past, past))


def centre_crop_resize(arr: np.ndarray, size: int) -> np.ndarray:
    """What ``dataset=folder`` makes of an image, by PIL alone: the centred square, resized (Lanczos), CHW."""
    img = Image.fromarray(arr).convert("RGB")
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return np.asarray(img.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)).transpose(2, 0, 1)


# ---------------------------------------------------------------------------- the README's folder line
def readme_folder_overrides(path: Path) -> list[str]:
    """The overrides of the README's ``dataset=folder`` example, with its path replaced by ``path``."""
    readme = (REPO / "README.md").read_text()
    line = re.search(r"dataset=folder dataset\.path=\S+ dataset\.image_size=\d+", readme)
    assert line is not None, "the README no longer shows a dataset=folder example"
    words = line.group(0).split()
    assert words[1].startswith("dataset.path=") and words[2] == "dataset.image_size=64", words
    return [words[0], f"dataset.path={path}", words[2]]


def test_readme_folder_line_trains_on_photos_of_any_size(tmp_path: Path) -> None:
    """``ddpm-train dataset=folder dataset.path=... dataset.image_size=64``, as the README writes it, on
    photos of mixed sizes, modes and formats: it trains, on 64x64 centre crops of them."""
    photos = tmp_path / "photos"
    photos.mkdir()
    sources_ = {
        "a_wide.png": RNG.integers(0, 256, (80, 100, 3), dtype=np.uint8),  # 100x80
        "b_square.png": RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8),
        "c_photo.jpg": RNG.integers(0, 256, (200, 300, 3), dtype=np.uint8),  # 300x200 JPEG
        "d_tall_grey.png": RNG.integers(0, 256, (120, 50), dtype=np.uint8),  # 50x120, grey: upscaled
    }
    for name, arr in sources_.items():
        (photos / name).write_bytes(encoded(arr, "JPEG" if name.endswith(".jpg") else "PNG"))
    cache = tmp_path / "cache"
    tiny = tiny_train_overrides(tmp_path, cache, **{"train.max_steps": 2, "train.batch_size": 2, "train.ckpt_every": 2})
    args = [*readme_folder_overrides(photos), *tiny, "runtime.device=cpu", f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(Path(sys.executable).parent / "ddpm-train"), *args], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["step"] == 2
    stored = state["config"]["dataset"]
    assert (stored["name"], stored["image_size"], stored["resize"], stored["path"]) == ("folder", 64, True, str(photos))
    # The images it trained on: the decoded set the in-memory loader cached, in sorted-name order.
    (npy,) = cache.glob("photos-*.npy")
    trained = np.load(npy)
    assert trained.shape == (4, 3, 64, 64)
    for i, name in enumerate(sorted(sources_)):
        with Image.open(photos / name) as img:  # the file as written (the JPEG's own decoded pixels)
            want = centre_crop_resize(np.asarray(img), 64)
        assert np.array_equal(trained[i], want), name
    assert np.array_equal(trained[1], sources_["b_square.png"].transpose(2, 0, 1))  # 64x64 already: untouched


def test_strict_mode_names_the_first_image_of_another_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd) -> None:
    """``dataset.resize=false`` is the opt-in strict mode: one line naming the image and the fix, exit 2."""
    from ddpm.train.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(encoded(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    (photos / "b.png").write_bytes(encoded(RNG.integers(0, 256, (80, 100, 3), dtype=np.uint8)))
    args = [*readme_folder_overrides(photos), "dataset.resize=false", *tiny_train_overrides(tmp_path, tmp_path / "cache")]
    monkeypatch.setattr(sys, "argv", ["ddpm-train", *args, f"hydra.run.dir={tmp_path / 'run'}"])
    capfd.readouterr()
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    assert capfd.readouterr().err == f"error: {photos / 'b.png'} is 100x80, expected 64x64 (set dataset.resize=true to resize)\n"
    # Without the override the folder default resizes: the same folder loads.
    cfg = compose_config("train", readme_folder_overrides(photos))
    assert cfg.dataset.resize is True
    assert tuple(load_dataset(cfg.dataset, tmp_path, tmp_path / "cache2").images.shape) == (2, 3, 64, 64)


# ---------------------------------------------------------------------------- the cached listing
def test_listing_is_cached_and_a_new_file_invalidates_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_folder(tmp_path / "imgs", 12, parts=3)
    age(src)
    cache = tmp_path / "cache"
    walked: list[Path] = []
    real_walk = sources._walk

    def counting_walk(source: Path) -> sources.Listing:
        walked.append(source)
        return real_walk(source)

    monkeypatch.setattr(sources, "_walk", counting_walk)
    first = list_folder(src, cache)
    assert len(walked) == 1 and len(first.images) == 12 and first.images[:2] == ["part0/00000.png", "part0/00003.png"]
    path = listing_cache_path(src, cache)
    assert path.is_file() and path.parent == cache / "listings" and path.stat().st_size < 1000

    def no_walk(source: Path) -> sources.Listing:
        raise AssertionError(f"walked {source} again")

    monkeypatch.setattr(sources, "_walk", no_walk)
    second = list_folder(src, cache)
    assert (second.images, second.tars, second.folders) == (first.images, first.tars, first.folders)
    assert len(index_source(src, cache)) == 12  # the streaming index reads it too

    # A file added in a sub-folder (the top folder's mtime does not change): listed again, with the file.
    (src / "part2" / "zzz.png").write_bytes(encoded(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)))
    monkeypatch.setattr(sources, "_walk", counting_walk)
    third = list_folder(src, cache)
    assert len(walked) == 2 and len(third.images) == 13 and "part2/zzz.png" in third.images
    # A folder changed less than RACY_S ago may change again within one mtime tick: not cached.
    assert sources._read_listing(path, src) is None
    list_folder(src, cache)
    assert len(walked) == 3
    # A new sub-folder and a removed file count too.
    age(src)
    list_folder(src, cache)
    assert len(walked) == 4 and list_folder(src, cache).images == third.images and len(walked) == 4
    (src / "part0" / "00000.png").unlink()
    assert len(list_folder(src, cache).images) == 12 and len(walked) == 5
    (src / "part3").mkdir()
    age(src)
    list_folder(src, cache)
    (src / "part3" / "new.png").write_bytes(encoded(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)))
    assert "part3/new.png" in list_folder(src, cache).images


def test_damaged_listing_is_listed_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = make_folder(tmp_path / "imgs", 3)
    age(src)
    cache = tmp_path / "cache"
    first = list_folder(src, cache)
    path = listing_cache_path(src, cache)
    path.write_bytes(path.read_bytes()[:20])
    assert list_folder(src, cache).images == first.images
    assert "ignoring the unreadable folder listing" in caplog.text
    assert sources._read_listing(path, src) is not None  # written again, whole


def test_in_memory_cache_sees_a_file_added_in_a_sub_folder(tmp_path: Path) -> None:
    """The decoded-images cache is keyed by every folder's stamp: a file added below the top folder is loaded."""
    src = make_folder(tmp_path / "imgs", 6, parts=2)
    age(src)
    cfg = folder_cfg(src, in_memory=True, test_fraction=0.0)
    top = src.stat().st_mtime_ns
    assert len(load_dataset(cfg, tmp_path, tmp_path / "cache")) == 6
    (src / "part1" / "new.png").write_bytes(encoded(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)))
    assert src.stat().st_mtime_ns == top
    assert len(load_dataset(cfg, tmp_path, tmp_path / "cache")) == 7


# ---------------------------------------------------------------------------- splits read as streamed
class DecodeCounter:
    """Wraps :meth:`SplitImages._decode`: how many images each read decodes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads: list[int] = []
        real = SplitImages._decode

        def counted(images: SplitImages, entries: np.ndarray) -> torch.Tensor:
            self.reads.append(len(entries))
            return real(images, entries)

        monkeypatch.setattr(SplitImages, "_decode", counted)


def refuse_full_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("the whole dataset was decoded into memory")

    monkeypatch.setattr(datasets, "_read_images", refused)


def test_open_split_streams_over_the_cap_with_the_in_memory_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_folder(tmp_path / "imgs", 40)
    mem = {s: load_dataset(folder_cfg(src, in_memory=True), tmp_path, tmp_path / "cache", s).images for s in ("train", "test")}
    # 40 images x 192 bytes = 7,680 bytes decoded: a cap of 4 KiB streams, the default keeps it in memory.
    assert isinstance(open_split(folder_cfg(src), tmp_path, tmp_path / "cache", "train").images, torch.Tensor)
    refuse_full_decode(monkeypatch)
    counter = DecodeCounter(monkeypatch)
    capped = folder_cfg(src, in_memory_max_gb=4096 / 2**30)
    for split in ("train", "test"):
        data = open_split(capped, tmp_path, tmp_path / "cache", split)
        images = data.images
        assert isinstance(images, SplitImages) and data.source == str(src)
        assert len(images) == len(mem[split]) and images.shape == mem[split].shape and images.dtype == torch.uint8
        view = images[2:30:3]
        assert isinstance(view, SplitImages) and counter.reads == [] and len(view) == len(mem[split][2:30:3])
    assert (len(mem["train"]), len(mem["test"])) == (36, 4)
    images = open_split(capped, tmp_path, tmp_path / "cache", "train").images
    idx = torch.tensor([35, 0, 7, 7])
    assert torch.equal(images[idx], mem["train"][idx]) and images[idx].is_contiguous() and counter.reads == [4, 4]
    assert torch.equal(images[5], mem["train"][5]) and torch.equal(images[-1], mem["train"][-1])
    assert torch.equal(images[10:20].decode(), mem["train"][10:20])
    assert torch.equal(images[3:9, :1], mem["train"][3:9, :1])  # rows, then channels
    assert torch.equal(images[4:8].float(), mem["train"][4:8].float())
    assert torch.equal(torch.cat(list(streaming.batches(images, 16))), mem["train"])
    assert max(counter.reads) == 16  # read a batch at a time
    with pytest.raises(IndexError):
        images[36]


def test_real_images_decode_only_the_picked_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ddpm-visualize`` / ``ddpm-sample``'s real images of a streamed dataset: the in-memory path's picks, n decoded."""
    from types import SimpleNamespace

    from ddpm.pretrained import real_images

    src = make_folder(tmp_path / "imgs", 50)
    cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path), "cache_dir": str(tmp_path / "cache")}})
    memory = SimpleNamespace(cfg=OmegaConf.create({"dataset": folder_cfg(src, in_memory=True)}), shape=(3, 8, 8))
    want = {split: real_images(cfg, memory, 5, split, 3) for split in ("train", "test")}
    refuse_full_decode(monkeypatch)
    counter = DecodeCounter(monkeypatch)
    streamed = SimpleNamespace(cfg=OmegaConf.create({"dataset": folder_cfg(src, in_memory=False)}), shape=(3, 8, 8))
    for split in ("train", "test"):
        got = real_images(cfg, streamed, 5, split, 3)
        assert got.dtype == torch.float32 and torch.equal(got, want[split])
    assert counter.reads == [5, 5]


def test_bad_file_in_a_streamed_split_is_one_line(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "imgs", 10)
    bad = src / "part0" / "00000.png"
    bad.write_bytes(bad.read_bytes()[:30])
    images = open_split(folder_cfg(src, in_memory=False, test_fraction=0.0), tmp_path, tmp_path / "cache").images
    assert images[1:3].decode().shape == (2, 3, 8, 8)  # the others read
    with pytest.raises(DataError, match=rf"^cannot read image {bad}: "):
        images[0]


# ---------------------------------------------------------------------------- ddpm-evaluate under a memory cap
class PoolFeatures(FeatureExtractorBase):
    """A stand-in for Inception (whose weights are a download): 2x2 average pools of the RGB image, 12 features."""

    def __init__(self, name: str, features_list: list[str], **kwargs: object) -> None:
        super().__init__(name, features_list)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("12", "logits_unbiased")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "logits_unbiased" if metric == "isc" else "12"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f = torch.nn.functional.adaptive_avg_pool2d(x.double() / 255.0, 2).flatten(1)
        return tuple(f for _ in self.features_list)


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """6,000 8x8 RGB PNGs (1.15 MB decoded) and a tiny network trained on them for 2 steps; (folder, last.pt)."""
    from ddpm.train import train

    root = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(5)
    for part in range(4):
        (root / "imgs" / f"part{part}").mkdir(parents=True)
    for i in range(6000):
        (root / "imgs" / f"part{i % 4}" / f"{i:05d}.png").write_bytes(encoded(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)))
    over = {"dataset": "folder", "dataset.path": str(root / "imgs"), "dataset.image_size": 8, "dataset.hflip": "false"}
    over.update({"dataset.in_memory": "true", "train.max_steps": 2, "train.batch_size": 4, "train.ckpt_every": 2, "runtime.device": "cpu"})
    train(compose_config("train", tiny_train_overrides(root, root / "train-cache", **over)), root / "run")
    return root / "imgs", root / "run" / "checkpoints" / "last.pt"


def _with_residency(ckpt: Path, out: Path, **dataset: object) -> Path:
    state = load_checkpoint(ckpt)
    state["config"]["dataset"].update(dataset)
    torch.save(state, out)
    return out


def test_evaluate_streams_a_folder_beyond_the_cap_with_the_in_memory_numbers(
    big_folder: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ddpm-evaluate`` of a network trained on a folder over ``dataset.in_memory_max_gb``: FID/KID over the
    whole train split, denoising and the copy criterion against every training image, each read a batch
    at a time (never the whole set, never over the cap), with exactly the numbers of the in-memory path."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    from ddpm.evaluate.cli import evaluate
    from ddpm.evaluate.fidelity import INCEPTION_NAME

    folder, ckpt = big_folder
    cap_gb = 0.001  # 1,073,741 bytes; the 6,000 images are 1,152,000 bytes decoded
    image_bytes = 3 * 8 * 8
    assert 6000 * image_bytes > cap_gb * 2**30 > 4096 * image_bytes  # a copy-criterion chunk (4,096 images) fits
    streamed = _with_residency(ckpt, tmp_path / "streamed.pt", in_memory="auto", in_memory_max_gb=cap_gb)
    memory = _with_residency(ckpt, tmp_path / "memory.pt", in_memory=True)
    monkeypatch.setitem(FEATURE_EXTRACTORS_REGISTRY, INCEPTION_NAME, PoolFeatures)
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"unused by the stand-in")

    def run(ckpt_path: Path, name: str) -> dict:
        over = {
            "ckpt": ckpt_path,
            "feature_extractor": "inception",
            "feature_extractor.weights_path": weights,
            "feature_extractor.min_samples": 0,
            "metrics": "[fid,kid,denoise,memorisation]",
            "sampler": "ddim",
            "sampler.steps": 3,
            "num_samples": 16,
            "batch_size": 250,
            "kid_subsets": 5,
            "denoise.steps": "[5]",
            "denoise.num_images": 6,
            "memorisation.grid": 4,
            "runtime.device": "cpu",
            "progress": "false",
            "paths.data_dir": folder.parent,
            "paths.cache_dir": tmp_path / f"cache-{name}",
        }
        cfg = compose_config("evaluate", [f"{k}={v}" for k, v in over.items()])
        return evaluate(cfg, tmp_path / name)

    with monkeypatch.context() as m:
        refuse_full_decode(m)
        counter = DecodeCounter(m)
        got = run(streamed, "streamed")
    assert max(counter.reads) * image_bytes < cap_gb * 2**30
    assert max(counter.reads) == 4096  # the copy criterion's chunk; FID read 250 at a time, image by image
    assert sum(n for n in counter.reads if n > 1) == 5400 + 6 + 4  # every training image once, 6 test images, the grid's 4
    want = run(memory, "memory")
    assert got["fidelity"]["inception"]["num_real"] == want["fidelity"]["inception"]["num_real"] == 5400
    for key in ("fid", "kid_mean", "kid_std"):
        assert got["fidelity"]["inception"][key] == want["fidelity"]["inception"][key], key
    assert got["denoise"]["steps"] == want["denoise"]["steps"] and got["denoise"]["num_images"] == 6
    assert got["memorisation"] == want["memorisation"] and got["memorisation"]["num_train"] == 5400


def test_blob_bounds_of_a_streamed_split_equal_the_in_memory_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sample-quality reference's blob bounds, fitted a batch at a time from a streamed split."""
    from ddpm.evaluate.sample_quality import BlobBounds

    src = make_folder(tmp_path / "imgs", 30)
    mem = load_dataset(folder_cfg(src, in_memory=True), tmp_path, tmp_path / "cache").images
    refuse_full_decode(monkeypatch)
    counter = DecodeCounter(monkeypatch)
    streamed = open_split(folder_cfg(src, in_memory=False), tmp_path, tmp_path / "cache").images
    got, want = BlobBounds.fit(streamed, batch_size=8), BlobBounds.fit(mem, batch_size=8)
    assert torch.equal(got.low, want.low) and torch.equal(got.high, want.high)
    assert counter.reads == [8, 8, 8, 3]


def test_regimes_points_of_a_streamed_folder_equal_the_in_memory_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ddpm-regimes`` flattens every image of the split into points: read through the streamed path, no .npy cache."""
    from ddpm.regimes.data import load_points

    src = make_folder(tmp_path / "imgs", 20)
    node = {"name": "folder", "downsample": 2}  # the training subset: dataset.n=12, dataset.subset_seed=1
    want = load_points(
        OmegaConf.create({**node, "dataset": folder_cfg(src, in_memory=True, n=12, subset_seed=1)}), tmp_path, tmp_path / "cache"
    )
    refuse_full_decode(monkeypatch)
    got = load_points(
        OmegaConf.create({**node, "dataset": folder_cfg(src, in_memory=False, n=12, subset_seed=1)}), tmp_path, tmp_path / "c2"
    )
    assert torch.equal(got.x, want.x) and got.x.shape == (12, 48) and torch.equal(got.reference, want.reference)
    assert got.shape == want.shape == (3, 4, 4) and not list((tmp_path / "c2").glob("*.npy"))
