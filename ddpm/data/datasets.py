"""Loaders for the supported datasets. Each returns all images of a split as one uint8 tensor.

Small image datasets fit in memory (MNIST: 60,000 x 1 x 32 x 32 bytes = 61 MB), so training
slices batches out of a tensor on the training device: no worker processes, no loader stalls.
Files are only read, never written, under the data root; decoded archives are cached under
``paths.cache_dir``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ddpm.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
SPLITS = ("train", "test")


@dataclass
class ImageData:
    """All images of one split.

    Args:
        images: uint8 tensor (N, C, H, W), already at the configured image size.
        labels: int64 class labels (N,), or None for unlabelled data.
        name: dataset name.
        source: where the images were read from (for messages and records).
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    name: str
    source: str

    def __len__(self) -> int:
        return self.images.shape[0]


def _missing(name: str, looked: Path, fix: str) -> DataError:
    return DataError(f"{name} dataset not found: looked for {looked}. {fix}")


# ---------------------------------------------------------------- MNIST (IDX files)
def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(raw: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (raw / name).is_file():
            return raw / name
    return None


def load_mnist(cfg, data_dir: Path, cache_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    raw = data_dir / cfg.root / "raw"
    prefix = "train" if split == "train" else "t10k"
    img_path = _find_idx(raw, f"{prefix}-images-idx3-ubyte")
    lbl_path = _find_idx(raw, f"{prefix}-labels-idx1-ubyte")
    if img_path is None or lbl_path is None:
        if cfg.download:
            from torchvision.datasets import MNIST

            ds = MNIST(str(data_dir), train=split == "train", download=True)
            return ds.data[:, None].clone(), ds.targets.clone(), str(data_dir / "MNIST")
        raise _missing(
            "MNIST",
            raw / f"{prefix}-images-idx3-ubyte.gz",
            "Set paths.data_dir (or DDPM_DATA_DIR) to the folder holding MNIST/raw, or pass dataset.download=true.",
        )
    images = torch.from_numpy(_read_idx(img_path).copy())[:, None]
    labels = torch.from_numpy(_read_idx(lbl_path).astype(np.int64))
    return images, labels, str(raw)


# ---------------------------------------------------------------- CryptoPunks (one sprite sheet)
def load_cryptopunks(cfg, data_dir: Path, cache_dir: Path, split: str) -> tuple[torch.Tensor, None, str]:
    path = data_dir / cfg.root / "punks.png"
    if not path.is_file():
        raise _missing("CryptoPunks", path, "Set paths.data_dir (or DDPM_DATA_DIR) to the folder holding cryptopunks/punks.png.")
    sheet = Image.open(path).convert("RGBA")
    tile = 24
    rows, cols = sheet.height // tile, sheet.width // tile
    bg = Image.new("RGBA", sheet.size, tuple(int(c) for c in cfg.background) + (255,))
    rgb = np.asarray(Image.alpha_composite(bg, sheet).convert("RGB"))
    # (rows*24, cols*24, 3) -> (rows*cols, 3, 24, 24); punk i sits at row i // cols, column i % cols.
    tiles = rgb.reshape(rows, tile, cols, tile, 3).transpose(0, 2, 4, 1, 3).reshape(rows * cols, 3, tile, tile)
    return torch.from_numpy(tiles.copy()), None, str(path)


# ---------------------------------------------------------------- image folders and tars
# 8-bit modes convert to L/RGB without loss of meaning; 16-bit, 32-bit and float images would be clipped.
EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")


def _decode(data: bytes | Path, channels: int, size: int, resize: bool, where: str) -> np.ndarray:
    try:
        img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        img.load()
    except (OSError, Image.UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"cannot read image {where}: {exc}") from exc
    if img.mode not in EIGHT_BIT_MODES:
        raise DataError(f"{where} has pixel mode {img.mode}; only 8-bit images (grey, palette, RGB, RGBA) are supported")
    if not resize and img.size != (size, size):
        raise DataError(f"{where} is {img.size[0]}x{img.size[1]}, expected {size}x{size} (set dataset.resize=true to resize)")
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.LANCZOS)
    arr = np.asarray(img)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def _read_images(source: Path, channels: int, size: int, resize: bool) -> np.ndarray:
    """Decode every image in a folder (recursively) or a tar archive, in sorted name order."""
    arrays = []
    if source.is_file() and tarfile.is_tarfile(source):
        with tarfile.open(source) as tar:
            members = sorted(
                (m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith(IMAGE_SUFFIXES)),
                key=lambda m: m.name,
            )
            for m in members:
                arrays.append(_decode(tar.extractfile(m).read(), channels, size, resize, f"{source}:{m.name}"))
    else:
        for p in sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            arrays.append(_decode(p, channels, size, resize, str(p)))
    if not arrays:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {source}")
    return np.stack(arrays)


def _cached_images(source: Path, cache_dir: Path, channels: int, size: int, resize: bool) -> torch.Tensor:
    """Decode once, then reuse a .npy cache keyed by the source's path, size and mtime."""
    stat = source.stat()
    key = hashlib.sha1(f"{source.resolve()}|{stat.st_mtime_ns}|{stat.st_size}|{channels}|{size}|{resize}".encode()).hexdigest()[:16]
    cache = cache_dir / f"{source.name}-{key}.npy"
    if cache.is_file():
        return torch.from_numpy(np.load(cache))
    arr = _read_images(source, channels, size, resize)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npy")
        np.save(tmp, arr)
        tmp.replace(cache)
    except OSError as exc:  # a read-only cache is no reason to fail
        log.warning("could not write the image cache %s: %s", cache, exc)
    return torch.from_numpy(arr)


def load_cats(cfg, data_dir: Path, cache_dir: Path, split: str) -> tuple[torch.Tensor, None, str]:
    base = data_dir / cfg.root
    for candidate in (base / "afhq_cat_64.tar", base / "afhq_cat_64", base):
        if candidate.is_file() or (candidate.is_dir() and candidate != base):
            return _cached_images(candidate, cache_dir, 3, cfg.image_size, cfg.resize), None, str(candidate)
    if base.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in base.iterdir()):
        return _cached_images(base, cache_dir, 3, cfg.image_size, cfg.resize), None, str(base)
    raise _missing(
        "cats",
        base / "afhq_cat_64.tar",
        "Set paths.data_dir (or DDPM_DATA_DIR) to the folder holding cats/afhq_cat_64.tar or an image folder cats/.",
    )


def load_folder(cfg, data_dir: Path, cache_dir: Path, split: str) -> tuple[torch.Tensor, None, str]:
    if not cfg.path:
        raise ConfigError("dataset=folder needs dataset.path=/path/to/images (a folder or a .tar of images)")
    source = Path(cfg.path).expanduser()
    if not source.is_absolute():
        source = data_dir / source
    if not source.exists():
        raise _missing("folder", source, "Pass dataset.path=<a folder or .tar of images>.")
    return _cached_images(source, cache_dir, cfg.channels, cfg.image_size, cfg.resize), None, str(source)


def load_cifar10(cfg, data_dir: Path, cache_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    from torchvision.datasets import CIFAR10

    root = data_dir / cfg.root
    try:
        ds = CIFAR10(str(root), train=split == "train", download=bool(cfg.download))
    except RuntimeError as exc:
        raise _missing(
            "CIFAR-10", root / "cifar-10-batches-py", "Download it (dataset.download=true where a network exists) or set paths.data_dir."
        ) from exc
    except OSError as exc:
        raise DataError(f"CIFAR-10 could not be downloaded into {root}: {exc}") from exc
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(ds.targets, dtype=torch.int64), str(root)


DATASETS: dict[str, Callable] = {
    "mnist": load_mnist,
    "cryptopunks": load_cryptopunks,
    "cats": load_cats,
    "cifar10": load_cifar10,
    "folder": load_folder,
}
# Datasets with an official test split; the others hold out a seeded fraction.
OFFICIAL_SPLITS = ("mnist", "cifar10")


def _fit_size(images: torch.Tensor, size: int, resize: bool, name: str) -> torch.Tensor:
    """Pad (centre, zeros) up to ``size``; resize only when allowed."""
    h = images.shape[-1]
    if h == size:
        return images
    if h < size and (size - h) % 2 == 0 and not resize:
        p = (size - h) // 2
        return F.pad(images, (p, p, p, p))
    if not resize:
        raise ConfigError(f"{name} images are {h}x{h}; dataset.image_size={size} needs dataset.resize=true")
    return (
        F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        .round()
        .clamp(0, 255)
        .to(torch.uint8)
    )


def load_dataset(cfg, data_dir: str | Path, cache_dir: str | Path, split: str = "train") -> ImageData:
    """Load one split of the dataset described by a ``dataset`` config node.

    Args:
        cfg: the ``dataset`` config (name, root, image_size, channels, ...).
        data_dir: the data root (``paths.data_dir``).
        cache_dir: where decoded archives may be cached (``paths.cache_dir``).
        split: ``train`` or ``test``; datasets without an official test split hold out a seeded
            ``test_fraction`` of the images.
    """
    if cfg.name not in DATASETS:
        raise ConfigError(f"unknown dataset {cfg.name!r}; choose one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    data_dir, cache_dir = Path(data_dir).expanduser(), Path(cache_dir).expanduser()
    if cfg.download and cfg.name in ("mnist", "cifar10"):
        data_dir.mkdir(parents=True, exist_ok=True)
    if not data_dir.is_dir() and not (cfg.name == "folder" and cfg.path and Path(cfg.path).is_absolute()):
        raise DataError(f"data root {data_dir} does not exist; set paths.data_dir=... or the DDPM_DATA_DIR environment variable")
    images, labels, source = DATASETS[cfg.name](cfg, data_dir, cache_dir, split if cfg.name in OFFICIAL_SPLITS else "train")
    if images.shape[1] != cfg.channels:
        raise ConfigError(f"{cfg.name} images have {images.shape[1]} channels but dataset.channels={cfg.channels}")
    if cfg.name not in OFFICIAL_SPLITS:
        perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
        n_test = int(round(len(images) * float(cfg.test_fraction)))
        keep = perm[:n_test] if split == "test" else perm[n_test:]
        keep = keep.sort().values
        images = images[keep]
        labels = labels[keep] if labels is not None else None
    if len(images) == 0:
        raise DataError(f"the {split} split of {cfg.name} at {source} is empty")
    images = _fit_size(images, int(cfg.image_size), bool(cfg.resize), cfg.name)
    return ImageData(images.contiguous(), labels, cfg.name, source)
