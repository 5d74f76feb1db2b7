"""Where the images of a folder, a tar or a folder of tar shards are: a sorted index, read without decoding.

One listing serves both residencies: the in-memory loader decodes every entry once, the
streaming loader (:mod:`ddpm.data.streaming`) decodes entries on demand in worker processes, and
the ``dataset.in_memory=auto`` decision (:mod:`ddpm.data.residency`) counts them. Entries are
kept compactly (names in one byte string, offsets in arrays): millions of files cost tens of
bytes each, not a Python object each.

Order: files sort by their path components below the folder (the order of sorted
:class:`pathlib.Path` objects), tar members by name, shards by path then member name. A folder
that holds images is a folder of images (tars in it are ignored); a folder without images but
with ``.tar`` files is a set of shards (webdataset layout: members other than images, such as
``.cls`` or ``.json``, are ignored).
"""

from __future__ import annotations

import os
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ddpm.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
SHARD_SUFFIX = ".tar"
# What a torn or foreign archive makes tarfile (and the gzip/bz2/lzma layers below it) raise.
TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, ValueError)


def one_line_reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def missing(name: str, looked: Path, fix: str) -> DataError:
    return DataError(f"{name} dataset not found: looked for {looked}. {fix}")


# ---------------------------------------------------------------- folders
def is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _path_key(rel: str) -> list[str]:
    return rel.split("/")  # the order of sorted Path objects: component by component


def list_folder(source: Path) -> tuple[list[str], list[str]]:
    """Image files and ``.tar`` files below ``source`` (recursively), as sorted relative paths.

    Args:
        source: a folder. Symbolic links to files are followed, to folders not (as ``Path.rglob``).
    """
    images: list[str] = []
    tars: list[str] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            entries = list(os.scandir(source / rel if rel else source))
        except OSError as exc:
            raise DataError(f"cannot list {source / rel}: {one_line_reason(exc)}") from exc
        for entry in entries:
            path = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir(follow_symlinks=False):
                stack.append(path)
            elif is_image(entry.name) and entry.is_file():
                images.append(path)
            elif entry.name.lower().endswith(SHARD_SUFFIX) and entry.is_file():
                tars.append(path)
    images.sort(key=_path_key)
    tars.sort(key=_path_key)
    return images, tars


# ---------------------------------------------------------------- the index
class Names:
    """Strings stored as one byte string and an array of end offsets.

    Args:
        names: the strings, in order.
    """

    def __init__(self, names: list[str]) -> None:
        encoded = [n.encode("utf-8", "surrogateescape") for n in names]
        self.blob = b"".join(encoded)
        self.ends = np.cumsum(np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded)))

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i: int) -> str:
        start = int(self.ends[i - 1]) if i else 0
        return self.blob[start : int(self.ends[i])].decode("utf-8", "surrogateescape")

    def take(self, indices: np.ndarray) -> Names:
        return Names([self[int(i)] for i in indices])


@dataclass
class ImageIndex:
    """The images of one source in training order, with what it takes to read each one.

    Args:
        source: the folder, ``.tar`` or folder of shards, for messages and records.
        names: relative paths (a folder of images) or member names (tars).
        shards: the tar files (empty for a folder of images).
        shard: per entry, its tar in ``shards`` (int32); None for a folder of images.
        offset: per entry, the byte offset of its data in its tar (int64); None for a folder.
        size: per entry, its size in bytes (int64); None for a folder.
    """

    source: Path
    names: Names
    shards: list[Path] = field(default_factory=list)
    shard: np.ndarray | None = None
    offset: np.ndarray | None = None
    size: np.ndarray | None = None
    _fds: dict[int, int] = field(default_factory=dict, repr=False)
    _pid: int = field(default=-1, repr=False)

    def __len__(self) -> int:
        return len(self.names)

    def where(self, i: int) -> str:
        """The entry as messages name it: ``folder/rel/path.png`` or ``shard.tar:member.png``."""
        if self.shard is None:
            return str(self.source / self.names[i])
        return f"{self.shards[int(self.shard[i])]}:{self.names[i]}"

    def read(self, i: int) -> bytes | Path:
        """The encoded image ``i``: its path (a folder) or its bytes (read from its tar by offset)."""
        if self.shard is None:
            return self.source / self.names[i]
        if self._pid != os.getpid():  # descriptors are opened per process (worker processes fork)
            self._fds, self._pid = {}, os.getpid()
        s = int(self.shard[i])
        fd = self._fds.get(s)
        where = self.where(i)
        try:
            if fd is None:
                fd = self._fds[s] = os.open(self.shards[s], os.O_RDONLY)
            data = os.pread(fd, int(self.size[i]), int(self.offset[i]))
        except OSError as exc:
            raise DataError(f"cannot read {where} from the archive: {one_line_reason(exc)}") from exc
        if len(data) != int(self.size[i]):
            raise DataError(f"cannot read {where} from the archive (truncated): {len(data)} of {int(self.size[i])} bytes")
        return data

    def take(self, indices: np.ndarray | Any) -> ImageIndex:
        """The entries at ``indices`` (in that order) as a new index."""
        idx = np.asarray(indices, dtype=np.int64)
        if self.shard is None:
            return ImageIndex(self.source, self.names.take(idx))
        return ImageIndex(self.source, self.names.take(idx), self.shards, self.shard[idx], self.offset[idx], self.size[idx])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fds": {}, "_pid": -1}  # descriptors do not cross processes


def _index_tar(path: Path) -> tuple[list[str], list[int], list[int]]:
    """Image members of an uncompressed tar, sorted by name: (names, data offsets, sizes)."""
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty (0 bytes); expected a .tar of images")
    try:
        tar = tarfile.open(path, "r:")  # noqa: SIM115 - closed by the with block below
    except tarfile.ReadError as exc:
        try:
            with tarfile.open(path):
                pass
        except TAR_ERRORS:
            raise DataError(f"{path} is not a readable tar archive (corrupt, or another format); expected a .tar of images") from exc
        raise DataError(
            f"{path} is a compressed tar; streaming reads images by offset, which needs an uncompressed .tar "
            "(decompress it, or keep the dataset in memory: dataset.in_memory=true)"
        ) from exc
    except TAR_ERRORS as exc:
        raise DataError(f"{path} is not a readable tar archive (corrupt, or another format); expected a .tar of images") from exc
    with tar:
        try:
            members = sorted((m for m in tar.getmembers() if m.isfile() and is_image(m.name)), key=lambda m: m.name)
        except TAR_ERRORS as exc:
            raise DataError(f"{path} is truncated or corrupt: {one_line_reason(exc)}") from exc
    return [m.name for m in members], [m.offset_data for m in members], [m.size for m in members]


def index_source(source: Path) -> ImageIndex:
    """Index the images of a folder, a ``.tar`` or a folder of ``.tar`` shards, without decoding them.

    Args:
        source: the dataset's folder or archive.
    """
    if source.is_file():
        if is_image(source.name):
            raise DataError(f"{source} is a single image; give a folder or a .tar of images")
        shards = [source]
    else:
        images, tars = list_folder(source)
        if images:
            return ImageIndex(source, Names(images))
        shards = [source / t for t in tars]
    names: list[str] = []
    shard: list[np.ndarray] = []
    offsets: list[int] = []
    sizes: list[int] = []
    for s, path in enumerate(shards):
        n, o, z = _index_tar(path)
        names += n
        offsets += o
        sizes += z
        shard.append(np.full(len(n), s, dtype=np.int32))
    if not names:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {source}")
    return ImageIndex(
        source,
        Names(names),
        shards,
        np.concatenate(shard),
        np.asarray(offsets, dtype=np.int64),
        np.asarray(sizes, dtype=np.int64),
    )


# ---------------------------------------------------------------- where each dataset's images are
def cats_source(cfg: Any, data_dir: Path) -> Path:
    """``cats/afhq_cat_64.tar``, else a folder ``cats/afhq_cat_64`` or ``cats/`` itself."""
    base = data_dir / cfg.root
    for candidate in (base / "afhq_cat_64.tar", base / "afhq_cat_64"):
        if candidate.is_file() or candidate.is_dir():
            return candidate
    if base.is_dir() and any(is_image(p.name) for p in base.iterdir()):
        return base
    raise missing(
        "cats",
        base / "afhq_cat_64.tar",
        "Set paths.data_dir (or DDPM_DATA_DIR) to the folder holding cats/afhq_cat_64.tar or an image folder cats/.",
    )


def folder_source(cfg: Any, data_dir: Path) -> Path:
    """``dataset.path``: absolute, or relative to the data root."""
    if not cfg.path:
        raise ConfigError("dataset=folder needs dataset.path=/path/to/images (a folder or a .tar of images)")
    source = Path(cfg.path).expanduser()
    if not source.is_absolute():
        source = data_dir / source
    if not source.exists():
        raise missing("folder", source, "Pass dataset.path=<a folder or .tar of images>.")
    return source


# Datasets read from image files, which may stream: name -> (where their images are, their
# channel count when fixed by the dataset, else None for dataset.channels).
IMAGE_SOURCES = {"cats": (cats_source, 3), "folder": (folder_source, None)}


def decode_channels(cfg: Any) -> int:
    """The channel count a source's images decode to (cats: RGB; folders: ``dataset.channels``)."""
    fixed = IMAGE_SOURCES[cfg.name][1]
    return int(fixed if fixed is not None else cfg.channels)
