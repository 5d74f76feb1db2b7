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

A folder's listing is cached under ``paths.cache_dir`` (:func:`list_folder`): the next run checks
the stat stamp of each folder of the tree instead of reading 100,000 file names again.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ddpm.checkpoint import atomic_write
from ddpm.errors import ConfigError, DataError

log = logging.getLogger(__name__)

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


@dataclass
class Listing:
    """The image files and ``.tar`` files below a folder, as sorted relative paths.

    Args:
        images: image files (relative paths, in :func:`list_folder`'s order).
        tars: ``.tar`` files, likewise.
        folders: per folder of the tree (relative path, "" for the top), its stat stamp
            (mtime in ns, inode, size, link count): the listing holds while every stamp does.
    """

    images: list[str]
    tars: list[str]
    folders: dict[str, list[int]]

    @property
    def fingerprint(self) -> str:
        """A digest of every folder's stamp: it changes when a file is added, removed or renamed anywhere below."""
        return hashlib.sha1(json.dumps(self.folders, sort_keys=True).encode()).hexdigest()[:16]


LISTING_VERSION = 1
# A folder modified less than this long before it was listed may change again within the resolution
# of its mtime (a clock tick; 2 s on FAT) without its stamp changing: such a listing is not cached.
RACY_S = 2.0


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_mtime_ns, st.st_ino, st.st_size, st.st_nlink]


def _walk(source: Path) -> Listing:
    """List ``source`` recursively (every folder read once); symbolic links to folders are not followed."""
    images: list[str] = []
    tars: list[str] = []
    folders: dict[str, list[int]] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        path = source / rel if rel else source
        try:
            folders[rel] = _stamp(os.stat(path))  # before reading it: a file added meanwhile changes the stamp
            entries = list(os.scandir(path))
        except OSError as exc:
            raise DataError(f"cannot list {path}: {one_line_reason(exc)}") from exc
        for entry in entries:
            rel_path = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir(follow_symlinks=False):
                stack.append(rel_path)
            elif is_image(entry.name) and entry.is_file():
                images.append(rel_path)
            elif entry.name.lower().endswith(SHARD_SUFFIX) and entry.is_file():
                tars.append(rel_path)
    images.sort(key=_path_key)
    tars.sort(key=_path_key)
    return Listing(images, tars, folders)


def listing_cache_path(source: Path, cache_dir: Path) -> Path:
    """Where the listing of ``source`` is cached: ``<cache_dir>/listings/<name>-<hash of its absolute path>.json.gz``."""
    key = hashlib.sha1(str(source.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return Path(cache_dir).expanduser() / "listings" / f"{source.name}-{key}.json.gz"


def _read_listing(path: Path, source: Path) -> Listing | None:
    """The cached listing at ``path`` if it is that of ``source`` and every folder's stamp still holds; else None."""
    try:
        data = json.loads(gzip.decompress(path.read_bytes()))
    except FileNotFoundError:
        return None
    except (OSError, EOFError, ValueError, zlib.error) as exc:  # a damaged cache is listed again, never trusted
        log.warning("ignoring the unreadable folder listing %s: %s", path, one_line_reason(exc))
        return None
    try:
        if data["version"] != LISTING_VERSION or data["source"] != str(source.resolve()):
            return None
        listing = Listing(list(data["images"]), list(data["tars"]), {str(k): list(v) for k, v in data["folders"].items()})
        if len(listing.images) != data["count"][0] or len(listing.tars) != data["count"][1]:
            return None
    except (KeyError, TypeError, AttributeError, IndexError):
        return None
    for rel, stamp in listing.folders.items():
        try:
            if _stamp(os.stat(source / rel if rel else source)) != stamp:
                return None
        except OSError:
            return None
    return listing


def list_folder(source: Path, cache_dir: str | Path | None = None) -> Listing:
    """Image files and ``.tar`` files below ``source`` (recursively), as sorted relative paths.

    With ``cache_dir`` the listing is cached there (:func:`listing_cache_path`, a small gzipped JSON
    written atomically) and reused while no folder of the tree has changed (the stat stamp of each,
    checked without reading them): a second run does not walk 100,000 files again, and a file added,
    removed or renamed anywhere below makes it list again. A file rewritten in place keeps its listing.

    Args:
        source: a folder. Symbolic links to files are followed, to folders not (as ``Path.rglob``).
        cache_dir: ``paths.cache_dir``, or None not to cache.
    """
    cache = listing_cache_path(source, Path(cache_dir)) if cache_dir is not None else None
    if cache is not None:
        cached = _read_listing(cache, source)
        if cached is not None:
            return cached
    started = time.time_ns()
    listing = _walk(source)
    newest = max(stamp[0] for stamp in listing.folders.values())
    if cache is not None and started - newest >= RACY_S * 1e9:
        record = {
            "version": LISTING_VERSION,
            "source": str(source.resolve()),
            "count": [len(listing.images), len(listing.tars)],
            "folders": listing.folders,
            "images": listing.images,
            "tars": listing.tars,
        }
        blob = gzip.compress(json.dumps(record).encode(), compresslevel=1, mtime=0)
        try:
            atomic_write(cache, lambda f: f.write(blob))
        except OSError as exc:  # a read-only cache is no reason to fail
            log.warning("could not write the folder listing %s: %s", cache, one_line_reason(exc))
    return listing


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


def index_source(source: Path, cache_dir: str | Path | None = None) -> ImageIndex:
    """Index the images of a folder, a ``.tar`` or a folder of ``.tar`` shards, without decoding them.

    Args:
        source: the dataset's folder or archive.
        cache_dir: ``paths.cache_dir``, where a folder's listing is cached (:func:`list_folder`); None not to cache.
    """
    if source.is_file():
        if is_image(source.name):
            raise DataError(f"{source} is a single image; give a folder or a .tar of images")
        shards = [source]
    else:
        listing = list_folder(source, cache_dir)
        if listing.images:
            return ImageIndex(source, Names(listing.images))
        shards = [source / t for t in listing.tars]
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
