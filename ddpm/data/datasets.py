"""Loaders for the supported datasets. Each returns all images of a split as one uint8 tensor.

Small image datasets fit in memory (MNIST: 60,000 x 1 x 32 x 32 bytes = 61 MB), so training
slices batches out of a tensor on the training device: no worker processes, no loader stalls.
Folders and tars too large for that stream instead (:mod:`ddpm.data.streaming`, chosen by
``dataset.in_memory``); both decode an image with :func:`decode_image`. Files are only read,
never written, under the data root; decoded archives are cached under ``paths.cache_dir``.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import logging
import re
import socket
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ddpm.data.residency import check_residency
from ddpm.data.sources import IMAGE_SOURCES, IMAGE_SUFFIXES, TAR_ERRORS, Listing, decode_channels, is_image, list_folder
from ddpm.data.sources import missing as _missing
from ddpm.data.sources import one_line_reason as _one_line_reason
from ddpm.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "test")


@dataclass
class ImageData:
    """All images of one split.

    Args:
        images: uint8 tensor (N, C, H, W), already at the configured image size; for a split read
            by :func:`ddpm.data.streaming.open_split`, a ``SplitImages`` that decodes on demand.
        labels: int64 class labels (N,), or None for unlabelled data.
        name: dataset name.
        source: where the images were read from (for messages and records).
        subset: for a training subset (``dataset.n``), its record (n, seed, size of the full split,
            hash and sorted indices, see :func:`ddpm.data.subset.subset_record`); else None.
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    name: str
    source: str
    subset: dict | None = None

    def __len__(self) -> int:
        return self.images.shape[0]


# ---------------------------------------------------------------- downloads
# A socket timeout for torchvision's downloads: without one, a network that drops packets (rather
# than refusing them) makes urlopen wait for ever.
DOWNLOAD_TIMEOUT_S = 20.0


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _download_reason(exc: BaseException) -> str:
    """The network's reason in a few words (torchvision's message lists every mirror over many lines)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.strip().startswith("Tried ")]
    reason = lines[-1] if lines else type(exc).__name__
    return re.sub(r"^<urlopen error (.*)>$", r"\1", reason)


# ---------------------------------------------------------------- MNIST (IDX files)
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
IDX_UBYTE = 0x08  # the IDX type code of unsigned bytes, the only one MNIST uses


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzipped or not) with ``ndim`` dimensions; a one-line DataError otherwise.

    Args:
        path: the ``*-idx?-ubyte[.gz]`` file.
        ndim: 3 for images, 1 for labels.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError; a torn .gz ends in EOFError
        raise DataError(f"cannot read {path}: {_one_line_reason(exc)} (truncated or not a gzip file; download it again)") from exc
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != IDX_UBYTE:
        raise DataError(f"{path} is not an MNIST IDX file of unsigned bytes (it starts with {data[:4].hex() or 'nothing'})")
    if data[3] != ndim:
        raise DataError(f"{path} holds {data[3]}-dimensional data, expected {ndim} ({'images' if ndim == 3 else 'labels'})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated: its header is incomplete ({len(data)} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    want = int(np.prod(shape))
    if len(data) - header != want:
        what = "truncated" if len(data) - header < want else "longer than its header says"
        raise DataError(f"{path} is {what}: its header announces {'x'.join(map(str, shape))} = {want} bytes, it holds {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(raw: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (raw / name).is_file():
            return raw / name
    return None


def _download_mnist(data_dir: Path, split: str) -> None:
    """Let torchvision fetch the four MNIST files into ``data_dir/MNIST/raw``; one line if it cannot."""
    from torchvision.datasets import MNIST

    raw = data_dir / "MNIST" / "raw"
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            MNIST(str(data_dir), train=split == "train", download=True)
    except (RuntimeError, OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"could not download MNIST (tried {' and '.join(MNIST.mirrors)}: {_download_reason(exc)}); "
            f"put {', '.join(MNIST_FILES)} into {raw}/ or point paths.data_dir (DDPM_DATA_DIR) at a folder holding MNIST/raw"
        ) from exc


def load_mnist(cfg, data_dir: Path, cache_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    raw = data_dir / cfg.root / "raw"
    prefix = "train" if split == "train" else "t10k"
    img_path = _find_idx(raw, f"{prefix}-images-idx3-ubyte")
    lbl_path = _find_idx(raw, f"{prefix}-labels-idx1-ubyte")
    if img_path is None or lbl_path is None:
        if not cfg.download:
            raise _missing(
                "MNIST",
                raw / f"{prefix}-images-idx3-ubyte.gz",
                "Set paths.data_dir (or DDPM_DATA_DIR) to the folder holding MNIST/raw, or pass dataset.download=true.",
            )
        _download_mnist(data_dir, split)
        raw = data_dir / "MNIST" / "raw"  # where torchvision puts them, whatever dataset.root says
        img_path = _find_idx(raw, f"{prefix}-images-idx3-ubyte")
        lbl_path = _find_idx(raw, f"{prefix}-labels-idx1-ubyte")
        if img_path is None or lbl_path is None:
            raise _missing("MNIST", raw / f"{prefix}-images-idx3-ubyte.gz", "The download left no IDX files there.")
    images = _read_idx(img_path, 3)
    labels = _read_idx(lbl_path, 1)
    if images.shape[1] != images.shape[2]:
        raise DataError(f"{img_path} holds {images.shape[1]}x{images.shape[2]} images; only square images are supported")
    if len(images) != len(labels):
        raise DataError(f"{img_path} holds {len(images)} images but {lbl_path} holds {len(labels)} labels")
    num_classes = cfg.get("num_classes")  # absent from the configs of older checkpoints
    if num_classes and len(labels) and int(labels.max()) >= int(num_classes):
        raise DataError(f"{lbl_path} holds label {int(labels.max())}, outside 0..{int(num_classes) - 1}")
    return torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64)), str(raw)


# ---------------------------------------------------------------- CryptoPunks (one sprite sheet)
PUNK_TILE = 24


def load_cryptopunks(cfg, data_dir: Path, cache_dir: Path, split: str) -> tuple[torch.Tensor, None, str]:
    path = data_dir / cfg.root / "punks.png"
    if not path.is_file():
        raise _missing("CryptoPunks", path, "Set paths.data_dir (or DDPM_DATA_DIR) to the folder holding cryptopunks/punks.png.")
    sheet = _open_image(path, str(path)).convert("RGBA")
    tile = PUNK_TILE
    if sheet.width % tile or sheet.height % tile or sheet.width < tile or sheet.height < tile:
        raise DataError(
            f"{path} is {sheet.width}x{sheet.height}; a CryptoPunks sheet is a grid of {tile}x{tile} tiles (2400x2400 for 10,000)"
        )
    rows, cols = sheet.height // tile, sheet.width // tile
    bg = Image.new("RGBA", sheet.size, tuple(int(c) for c in cfg.background) + (255,))
    rgb = np.asarray(Image.alpha_composite(bg, sheet).convert("RGB"))
    # (rows*24, cols*24, 3) -> (rows*cols, 3, 24, 24); punk i sits at row i // cols, column i % cols.
    tiles = rgb.reshape(rows, tile, cols, tile, 3).transpose(0, 2, 4, 1, 3).reshape(rows * cols, 3, tile, tile)
    return torch.from_numpy(tiles.copy()), None, str(path)


# ---------------------------------------------------------------- image folders and tars
# 8-bit modes convert to L/RGB without loss of meaning; 16-bit, 32-bit and float images would be clipped.
EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")


def _open_image(data: bytes | Path, where: str) -> Image.Image:
    """Open and fully decode one image of 8 bits per channel; a one-line DataError naming ``where`` otherwise."""
    try:
        img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        img.load()
    except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, struct.error, DecompressionBombError, ...
        reason = "empty file" if (len(data) if isinstance(data, bytes) else data.stat().st_size) == 0 else _one_line_reason(exc)
        raise DataError(f"cannot read image {where}: {reason}") from exc
    if img.mode not in EIGHT_BIT_MODES:
        raise DataError(f"{where} has pixel mode {img.mode}; only 8-bit images (grey, palette, RGB, RGBA) are supported")
    return img


# Bumped whenever decoding changes what an image becomes, so that caches of the old pixels are not reused.
DECODE_VERSION = 2  # 2: non-square images are centre-cropped before the resize (1 distorted them)


def decode_image(data: bytes | Path, channels: int, size: int, resize: bool, where: str) -> np.ndarray:
    """One image as uint8 (channels, size, size): centre-cropped to a square, then resized (Lanczos).

    Args:
        data: the encoded image, or its path.
        channels: 1 (grey) or 3 (RGB).
        size: the side of the output.
        resize: allow images of another size (else they are a DataError naming ``where``).
        where: the file (or archive member) for messages.
    """
    img = _open_image(data, where)
    if not resize and img.size != (size, size):
        raise DataError(f"{where} is {img.size[0]}x{img.size[1]}, expected {size}x{size} (set dataset.resize=true to resize)")
    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    if w != h:  # crop first: resizing a non-square image to a square would distort it
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if img.size != (size, size):
        img = img.resize((size, size), Image.LANCZOS)
    arr = np.asarray(img)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def _read_tar(source: Path, channels: int, size: int, resize: bool) -> list[np.ndarray]:
    if source.stat().st_size == 0:
        raise DataError(f"{source} is empty (0 bytes); expected a .tar of images")
    try:
        tar = tarfile.open(source)  # noqa: SIM115 - closed by the with block below, once open succeeded
    except TAR_ERRORS as exc:
        raise DataError(f"{source} is not a readable tar archive (corrupt, or another format); expected a .tar of images") from exc
    arrays = []
    with tar:
        try:
            members = sorted(
                (m for m in tar.getmembers() if m.isfile() and is_image(m.name)),
                key=lambda m: m.name,
            )
        except TAR_ERRORS as exc:
            raise DataError(f"{source} is truncated or corrupt: {_one_line_reason(exc)}") from exc
        for m in members:
            where = f"{source}:{m.name}"
            try:
                data = tar.extractfile(m).read()
            except TAR_ERRORS as exc:
                raise DataError(f"cannot read {where} from the archive (truncated or corrupt): {_one_line_reason(exc)}") from exc
            arrays.append(decode_image(data, channels, size, resize, where))
    return arrays


def _read_images(source: Path, channels: int, size: int, resize: bool, listing: Listing | None = None) -> np.ndarray:
    """Decode every image in a folder (recursively), a tar archive or a folder of tar shards, in
    the order of :mod:`ddpm.data.sources` (sorted paths; members by name).

    Args:
        source: the folder or archive.
        channels: 1 or 3.
        size: side of the output.
        resize: ``dataset.resize``.
        listing: the folder's listing, if already made.
    """
    if source.is_file():
        if source.suffix.lower() in IMAGE_SUFFIXES:
            raise DataError(f"{source} is a single image; give a folder or a .tar of images")
        arrays = _read_tar(source, channels, size, resize)
    else:
        listing = listing or list_folder(source)
        if listing.images:
            arrays = [decode_image(source / p, channels, size, resize, str(source / p)) for p in listing.images]
        else:  # a folder of shards
            arrays = [a for shard in listing.tars for a in _read_tar(source / shard, channels, size, resize)]
    if not arrays:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {source}")
    return np.stack(arrays)


def _cached_images(source: Path, cache_dir: Path, channels: int, size: int, resize: bool) -> torch.Tensor:
    """Decode once, then reuse a .npy cache keyed by the source's path and stamp: a file's mtime and
    size; for a folder, the stamps of every folder below it (a file added in a sub-folder counts)."""
    listing = None
    if source.is_dir():
        listing = list_folder(source, cache_dir)
        stamp = listing.fingerprint
    else:
        stat = source.stat()
        stamp = f"{stat.st_mtime_ns}|{stat.st_size}"
    fingerprint = f"{source.resolve()}|{stamp}|{channels}|{size}|{resize}|decode{DECODE_VERSION}"
    key = hashlib.sha1(fingerprint.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    cache = cache_dir / f"{source.name}-{key}.npy"
    if cache.is_file():
        try:
            return torch.from_numpy(np.load(cache))
        except (OSError, ValueError, EOFError) as exc:  # a damaged cache is decoded again, never trusted
            log.warning("ignoring the unreadable image cache %s: %s", cache, _one_line_reason(exc))
    arr = _read_images(source, channels, size, resize, listing)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npy")
        np.save(tmp, arr)
        tmp.replace(cache)
    except OSError as exc:  # a read-only cache is no reason to fail
        log.warning("could not write the image cache %s: %s", cache, exc)
    return torch.from_numpy(arr)


def load_image_source(cfg, data_dir: Path, cache_dir: Path, split: str) -> tuple[torch.Tensor, None, str]:
    """Every image of a dataset read from files (``cats``, ``folder``: :data:`ddpm.data.sources.IMAGE_SOURCES`)."""
    source = IMAGE_SOURCES[cfg.name][0](cfg, data_dir)
    return _cached_images(source, cache_dir, decode_channels(cfg), cfg.image_size, cfg.resize), None, str(source)


load_cats = load_folder = load_image_source


def _require_cifar(root: Path, split: str) -> None:
    """Name the missing or damaged CIFAR-10 file (torchvision only says "not found or corrupted")."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    folder = root / CIFAR10.base_folder
    if not folder.is_dir():
        raise _missing(
            "CIFAR-10",
            folder,
            f"Put {CIFAR10.filename} (from {CIFAR10.url}) extracted into {root}/, pass dataset.download=true where a network exists, "
            "or set paths.data_dir.",
        )
    files = [*(CIFAR10.train_list if split == "train" else CIFAR10.test_list), [CIFAR10.meta["filename"], CIFAR10.meta["md5"]]]
    for name, md5 in files:
        path = folder / name
        if not path.is_file():
            raise DataError(f"CIFAR-10 file {path} is missing; extract {CIFAR10.filename} (from {CIFAR10.url}) into {root}/ again")
        if not check_integrity(str(path), md5):
            raise DataError(f"CIFAR-10 file {path} is damaged (its MD5 differs from the published one); extract {CIFAR10.filename} again")


def load_cifar10(cfg, data_dir: Path, cache_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    from torchvision.datasets import CIFAR10

    root = data_dir / cfg.root
    if cfg.download and not (root / CIFAR10.base_folder).is_dir():
        try:
            with _socket_timeout(DOWNLOAD_TIMEOUT_S):
                CIFAR10(str(root), train=split == "train", download=True)
        except (RuntimeError, OSError, EOFError, zlib.error, tarfile.TarError) as exc:
            raise DataError(
                f"could not download CIFAR-10 (tried {CIFAR10.url}: {_download_reason(exc)}); "
                f"put {CIFAR10.filename} extracted (the folder {CIFAR10.base_folder}/) into {root}/ or point paths.data_dir at a folder holding it"
            ) from exc
    _require_cifar(root, split)  # every file present with its published MD5: the pickles below are the genuine ones
    ds = CIFAR10(str(root), train=split == "train", download=False)
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


def heldout_split(total: int, test_fraction: float, split: str) -> torch.Tensor:
    """Sorted indices of ``split`` for a dataset without an official test split: a seeded
    ``test_fraction`` of the ``total`` images is the test split, the rest the train split.

    Args:
        total: images of the whole dataset.
        test_fraction: ``dataset.test_fraction``.
        split: ``train`` or ``test``.
    """
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(0))
    n_test = int(round(total * test_fraction))
    return (perm[:n_test] if split == "test" else perm[n_test:]).sort().values


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
    check_residency(cfg)
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
        keep = heldout_split(len(images), float(cfg.test_fraction), split)
        images = images[keep]
        labels = labels[keep] if labels is not None else None
    if len(images) == 0:
        raise DataError(f"the {split} split of {cfg.name} at {source} is empty")
    images = _fit_size(images, int(cfg.image_size), bool(cfg.resize), cfg.name)
    return ImageData(images.contiguous(), labels, cfg.name, source)
