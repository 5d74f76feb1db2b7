"""Training sets larger than memory: each rank's batches decoded on demand by DataLoader workers.

The order is the in-memory trainer's: epoch e visits the training images in the seeded
permutation :func:`epoch_permutation` (seed, e), global batch after global batch, dropping the
remainder. A global batch of G = batch_size x ranks x grad_accum_steps images is laid out as
``grad_accum_steps`` micro-batches of ``ranks`` blocks of ``batch_size``; rank r reads block r
of each micro-batch (every ranks-th block), exactly the rows the trainer gives rank r of an
in-memory batch. So a streamed run sees the images an in-memory run sees, on any number of ranks.

Worker processes read a file (or an archive member, by offset), decode it, centre-crop it to a
square, resize it and flip it (:func:`ddpm.data.datasets.decode_image`). The flips are seeded
too: image i of epoch e is flipped when the e-th epoch's generator, after the permutation, drew a
number below one half at i. A batch therefore depends only on (seed, epoch, position), never on
the workers or on when the run was interrupted.

Exact resume: :meth:`StreamingBatches.state_dict` is the position of the next batch (epoch,
offset into the epoch's permutation) and the image count; the checkpoint stores it and a resumed
run starts its workers there, so it continues with the very batches an uninterrupted run reads.
"""

from __future__ import annotations

import atexit
import functools
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ddpm.data.datasets import SPLITS, ImageData, decode_image, heldout_split, load_dataset
from ddpm.data.residency import AUTO, DEFAULT_MAX_GB, check_residency, decoded_bytes, keep_in_memory, loader_workers
from ddpm.data.sources import IMAGE_SOURCES, ImageIndex, decode_channels, index_source
from ddpm.data.subset import balanced_subset, subset_record
from ddpm.errors import CheckpointError, ConfigError, DataError

log = logging.getLogger(__name__)

PREFETCH_BATCHES = 4  # per worker: smooths out slow files without holding much (4 x batch x image bytes)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order in which epoch ``epoch`` visits ``n`` training images (in memory and streamed).

    Args:
        seed: ``train.seed``.
        epoch: the epoch, from 0.
        n: training images.
    """
    return torch.randperm(n, generator=_epoch_generator(seed, epoch))


def epoch_plan(seed: int, epoch: int, n: int, hflip: bool) -> tuple[np.ndarray, np.ndarray]:
    """The epoch's permutation and, per image index, whether it is flipped (all False without ``hflip``).

    Args:
        seed: ``train.seed``.
        epoch: the epoch, from 0.
        n: training images.
        hflip: ``dataset.hflip``.
    """
    g = _epoch_generator(seed, epoch)
    perm = torch.randperm(n, generator=g)  # drawn first: the same permutation as epoch_permutation
    flips = torch.rand(n, generator=g) < 0.5 if hflip else torch.zeros(n, dtype=torch.bool)
    return perm.numpy(), flips.numpy()


def batch_start(position: tuple[int, int], global_batch: int, n: int) -> tuple[int, int]:
    """Where the batch at ``position`` (epoch, offset) starts: the next epoch when fewer than a global batch remain.

    Args:
        position: (epoch, offset into its permutation) after the previous batch.
        global_batch: images per global batch.
        n: training images (at least ``global_batch``).
    """
    epoch, offset = position
    return (epoch + 1, 0) if offset + global_batch > n else (epoch, offset)


def rank_rows(batch_size: int, accum: int, rank: int, world_size: int) -> np.ndarray:
    """Positions within a global batch that ``rank`` reads: block ``m * world_size + rank`` of each micro-batch m.

    Args:
        batch_size: images per rank and micro-batch.
        accum: micro-batches per step.
        rank: this process's rank.
        world_size: processes.
    """
    b, w = batch_size, world_size
    return np.concatenate([m * b * w + rank * b + np.arange(b) for m in range(accum)])


class EpochBatchSampler(Sampler):
    """This rank's share of every global batch from ``start`` on, as (image index, flip) pairs; never ends.

    Args:
        n: training images.
        seed: ``train.seed``.
        batch_size: images per rank and micro-batch.
        accum: micro-batches per step.
        rank: this process's rank.
        world_size: processes.
        hflip: ``dataset.hflip``.
        start: (epoch, offset) of the first batch.
    """

    def __init__(
        self, n: int, seed: int, batch_size: int, accum: int, rank: int, world_size: int, hflip: bool, start: tuple[int, int]
    ) -> None:
        self.n, self.seed, self.hflip, self.start = n, seed, hflip, start
        self.global_batch = batch_size * accum * world_size
        self.rows = rank_rows(batch_size, accum, rank, world_size)

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        position, planned = self.start, -1
        while True:
            epoch, offset = batch_start(position, self.global_batch, self.n)
            if epoch != planned:
                perm, flips = epoch_plan(self.seed, epoch, self.n, self.hflip)
                planned = epoch
            pos = offset + self.rows
            yield list(zip(perm[pos].tolist(), flips[perm[pos]].tolist(), strict=True))
            position = (epoch, offset + self.global_batch)


class StreamingImages(Dataset):
    """Images of an index, decoded on demand: item (i, flip) is image i, mirrored when ``flip``.

    A file that cannot be decoded gives its one-line message instead of an image, so that the
    training process reports it as one line (an exception in a worker arrives as a traceback).

    Args:
        index: the training images.
        channels: 1 or 3.
        image_size: side of the output.
        resize: ``dataset.resize``.
    """

    def __init__(self, index: ImageIndex, channels: int, image_size: int, resize: bool) -> None:
        self.index, self.channels, self.image_size, self.resize = index, channels, image_size, resize

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: tuple[int, bool]) -> torch.Tensor | str:
        i, flip = item
        try:
            arr = decode_image(self.index.read(i), self.channels, self.image_size, self.resize, self.index.where(i))
        except DataError as exc:
            return str(exc)
        return torch.from_numpy(np.array(arr[..., ::-1] if flip else arr))  # a copy: PIL's buffer is read-only


def collate(items: list[torch.Tensor | str]) -> torch.Tensor | str:
    """Stack a batch; the first error message instead, if an image failed."""
    for item in items:
        if isinstance(item, str):
            return item
    return torch.stack(items)


# Set when this (training) process exits: from then on a SIGTERM ends a loader worker.
_EXITING = multiprocessing.Value("b", 0, lock=False)


@atexit.register  # registered after multiprocessing's own exit handler, so it runs before it terminates the workers
def _mark_exiting() -> None:
    _EXITING.value = 1


def _worker_init(worker_id: int, exiting: Any = _EXITING) -> None:
    # Ctrl-C, and a scheduler's SIGTERM or SIGUSR2, reach the whole process group. Workers leave the
    # signal to the training process, which finishes its step, checkpoints and ends them; a worker
    # that died instead would abort that process with "DataLoader worker exited unexpectedly".
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0) if exiting.value else None)


class StreamingBatches:
    """One rank's training batches, read by worker processes, with the position a checkpoint stores.

    Args:
        index: the training images (train split, narrowed to ``dataset.n``).
        channels: 1 or 3.
        image_size: side of the images.
        resize: ``dataset.resize``.
        hflip: ``dataset.hflip``.
        seed: ``train.seed``.
        batch_size: images per rank and micro-batch.
        accum: micro-batches per step.
        rank: this process's rank.
        world_size: processes.
        workers: loader worker processes (0: decode in this process).
        device: where batches go.
        subset: the ``dataset.n`` record (:func:`ddpm.data.subset.subset_record`), or None.
    """

    def __init__(
        self,
        index: ImageIndex,
        *,
        channels: int,
        image_size: int,
        resize: bool,
        hflip: bool,
        seed: int,
        batch_size: int,
        accum: int = 1,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 0,
        device: torch.device | str = "cpu",
        subset: dict | None = None,
    ) -> None:
        self.dataset = StreamingImages(index, channels, image_size, resize)
        self.source = str(index.source)
        self.subset = subset
        self.labels = None  # image folders carry no classes
        self.shape = (channels, image_size, image_size)
        self.seed, self.hflip, self.workers = int(seed), bool(hflip), int(workers)
        self.batch_size, self.accum, self.rank, self.world_size = int(batch_size), int(accum), int(rank), int(world_size)
        self.global_batch = self.batch_size * self.accum * self.world_size
        self.device = torch.device(device)
        if len(index) < self.global_batch:
            raise ConfigError(
                f"global batch {self.global_batch} (train.batch_size x ranks x train.grad_accum_steps) exceeds the {len(index)} training images"
            )
        self.position = (0, 0)  # (epoch, offset) of the next batch the trainer takes
        self._batches: Iterator | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def _start(self) -> Iterator:
        sampler = EpochBatchSampler(
            len(self), self.seed, self.batch_size, self.accum, self.rank, self.world_size, self.hflip, self.position
        )
        loader = DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=self.workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=PREFETCH_BATCHES if self.workers else None,
            worker_init_fn=functools.partial(_worker_init, exiting=_EXITING) if self.workers else None,
        )
        return iter(loader)

    def next(self) -> torch.Tensor:
        """This rank's uint8 images of the next step (``accum`` micro-batches of ``batch_size``, in order) on the device."""
        if self._batches is None:
            self._batches = self._start()
        batch = next(self._batches)
        if isinstance(batch, str):
            self.close()
            raise DataError(batch)
        start = batch_start(self.position, self.global_batch, len(self))
        self.position = (start[0], start[1] + self.global_batch)
        return batch.to(self.device, non_blocking=True)

    def state_dict(self) -> dict[str, int]:
        """What a checkpoint stores: the next batch's position and the image count it refers to."""
        epoch, offset = self.position
        return {"epoch": epoch, "offset": offset, "images": len(self), "global_batch": self.global_batch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any] | None, step: int, where: str | Path) -> None:
        """Continue from a checkpoint's position; from its step when it has none (an in-memory run's checkpoint).

        Args:
            state: the checkpoint's ``data_position`` (None: derived from ``step``).
            step: the checkpoint's step.
            where: the checkpoint, for messages.
        """
        if state is None:
            epoch, pos = divmod(int(step), len(self) // self.global_batch)
            self.position = (epoch, pos * self.global_batch)
        else:
            if int(state["images"]) != len(self):
                raise CheckpointError(
                    f"{where} streamed {state['images']} training images, but {self.source} now holds {len(self)}; "
                    "point the dataset at the images it trained on"
                )
            self.position = (int(state["epoch"]), int(state["offset"]))
        self.close()  # workers restart from the restored position

    def close(self) -> None:
        """Stop the worker processes (they start again at the next :meth:`next`)."""
        batches, self._batches = self._batches, None
        shutdown = getattr(batches, "_shutdown_workers", None)  # else: released, the iterator ends them itself
        if shutdown is not None:
            shutdown()

    def describe(self) -> str:
        return f"streamed by {self.workers} loader worker{'s' if self.workers != 1 else ''} per rank"


def training_index(
    d: Any, data_dir: str | Path, full: ImageIndex | None = None, cache_dir: str | Path | None = None
) -> tuple[ImageIndex, dict | None]:
    """The training images of an image-file dataset, as in memory: the train split, narrowed to ``dataset.n``.

    Args:
        d: the ``dataset`` node (``cats`` or ``folder``).
        data_dir: the data root (``paths.data_dir``).
        full: the index of every image of the source, if already made.
        cache_dir: ``paths.cache_dir`` (a folder's listing is cached there), or None.
    """
    if full is None:
        full = index_source(IMAGE_SOURCES[d.name][0](d, Path(data_dir).expanduser()), cache_dir)
    train = full.take(heldout_split(len(full), float(d.test_fraction), "train").numpy())
    if len(train) == 0:
        raise DataError(f"the train split of {d.name} at {full.source} is empty")
    n, seed = d.get("n"), int(d.get("subset_seed", 0) or 0)
    if n is None or int(n) == len(train):
        return train, None
    if int(n) > len(train):
        raise DataError(f"dataset.n={n} exceeds the {len(train)} training images of {d.name}")
    idx = balanced_subset(len(train), None, int(n), seed)
    return train.take(idx.numpy()), subset_record(idx, int(n), seed, len(train))


def open_stream(
    d: Any,
    data_dir: str | Path,
    *,
    seed: int,
    batch_size: int,
    accum: int = 1,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    workers: int | None = None,
    cache_dir: str | Path | None = None,
) -> StreamingBatches | None:
    """The training stream of a ``dataset`` node, or None when ``dataset.in_memory`` keeps it in memory.

    Args:
        d: the ``dataset`` node.
        data_dir: the data root (``paths.data_dir``).
        seed: ``train.seed``.
        batch_size: images per rank and micro-batch.
        accum: micro-batches per step.
        rank: this process's rank.
        world_size: processes.
        device: where batches go.
        workers: loader workers (None: ``dataset.workers``, see :func:`ddpm.data.residency.loader_workers`).
        cache_dir: ``paths.cache_dir``: a folder's listing is cached there (None: listed every time).
    """
    check_residency(d)
    if d.name not in IMAGE_SOURCES:
        return None  # read whole (check_residency refused in_memory=false)
    if d.get("in_memory", AUTO) is True:
        return None
    full = index_source(IMAGE_SOURCES[d.name][0](d, Path(data_dir).expanduser()), cache_dir)
    if keep_in_memory(d, len(full)):
        return None
    channels = decode_channels(d)
    if channels != d.channels:
        raise ConfigError(f"{d.name} images have {channels} channels but dataset.channels={d.channels}")
    index, subset = training_index(d, data_dir, full)
    # Decode one image here: a wrong size or a foreign file type stops the run before it starts.
    decode_image(index.read(0), channels, int(d.image_size), bool(d.resize), index.where(0))
    n_workers = loader_workers(d, world_size) if workers is None else int(workers)
    gib = decoded_bytes(len(full), channels, int(d.image_size)) / 2**30
    log.info(
        "dataset %s: %d images, %.2f GiB decoded (dataset.in_memory=%s, in_memory_max_gb=%g): streaming from %s with %d workers per rank",
        d.name,
        len(full),
        gib,
        str(d.get("in_memory", AUTO)).lower(),
        d.get("in_memory_max_gb", DEFAULT_MAX_GB),
        full.source,
        n_workers,
    )
    return StreamingBatches(
        index,
        channels=channels,
        image_size=int(d.image_size),
        resize=bool(d.resize),
        hflip=bool(d.hflip),
        seed=seed,
        batch_size=batch_size,
        accum=accum,
        rank=rank,
        world_size=world_size,
        workers=n_workers,
        device=device,
        subset=subset,
    )


# ---------------------------------------------------------------- reading a split without holding it
class SplitImages:
    """The uint8 images (N, C, H, W) of one split of an image-file dataset, decoded only when read.

    Stands in for the tensor :func:`ddpm.data.load_dataset` holds, for commands that read a few
    images or one batch at a time: ``len``, ``shape``, ``dtype`` and ``dim()`` answer without
    decoding; ``x[a:b]`` is a view (nothing decoded, as a tensor's slice is a view); ``x[i]`` and
    ``x[indices]`` (a list, array or tensor of positions, or a boolean mask) decode those images;
    ``decode()``, ``float()`` and ``to(...)`` decode the whole view (call them on a slice) and
    :meth:`batches` decodes it a batch at a time. Images are those of the in-memory path, pixel
    for pixel (:func:`ddpm.data.datasets.decode_image`, same order).

    Args:
        index: every image of the source.
        positions: the split's entries of ``index``, in order (int64).
        channels: 1 or 3.
        image_size: side of the images.
        resize: ``dataset.resize``.
        threads: decoding threads for a read of many images (PIL decodes without the GIL).
    """

    dtype = torch.uint8
    THREADED_FROM = 64  # images per read from which threads decode

    def __init__(self, index: ImageIndex, positions: np.ndarray, channels: int, image_size: int, resize: bool, threads: int = 1) -> None:
        self.index, self.positions = index, np.asarray(positions, dtype=np.int64)
        self.channels, self.image_size, self.resize, self.threads = int(channels), int(image_size), bool(resize), max(1, int(threads))

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), self.channels, self.image_size, self.image_size))

    def dim(self) -> int:
        return 4

    def _view(self, positions: np.ndarray) -> SplitImages:
        return SplitImages(self.index, positions, self.channels, self.image_size, self.resize, self.threads)

    def _decode_one(self, entry: int) -> np.ndarray:
        return decode_image(self.index.read(entry), self.channels, self.image_size, self.resize, self.index.where(entry))

    def _decode(self, entries: np.ndarray) -> torch.Tensor:
        """The images at ``entries`` of the index, stacked (the only place that decodes)."""
        if len(entries) == 0:
            return torch.empty((0, *self.shape[1:]), dtype=torch.uint8)
        if self.threads > 1 and len(entries) >= self.THREADED_FROM:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(self.threads) as pool:
                arrays = list(pool.map(self._decode_one, entries.tolist()))
        else:
            arrays = [self._decode_one(e) for e in entries.tolist()]
        out = np.empty((len(arrays), *self.shape[1:]), dtype=np.uint8)  # C-contiguous, as the in-memory tensor
        for i, arr in enumerate(arrays):
            out[i] = arr
        return torch.from_numpy(out)

    def __getitem__(self, key: Any) -> torch.Tensor | SplitImages:
        if isinstance(key, tuple):  # x[rows, channels, ...]: the rows decoded, then the rest applied
            head = self[key[0]] if key and key[0] is not Ellipsis else self.decode()
            head = head.decode() if isinstance(head, SplitImages) else head
            rest = key[1:] if key and key[0] is not Ellipsis else key
            return head[rest] if head.dim() == 3 else head[(slice(None), *rest)]
        if isinstance(key, slice):
            return self._view(self.positions[key])
        if isinstance(key, int | np.integer) or (isinstance(key, torch.Tensor) and key.dim() == 0 and not key.is_floating_point()):
            return self._decode(self.positions[[int(key)]])[0]
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        return self._decode(self.positions[np.asarray(key)])

    def decode(self) -> torch.Tensor:
        """Every image of this view, as one uint8 tensor."""
        return self._decode(self.positions)

    def float(self) -> torch.Tensor:
        return self.decode().float()

    def to(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.decode().to(*args, **kwargs)

    def batches(self, size: int) -> Iterator[torch.Tensor]:
        """The images in order, ``size`` at a time (the last batch may be smaller)."""
        for start in range(0, len(self), size):
            yield self._decode(self.positions[start : start + size])

    def __repr__(self) -> str:
        return f"SplitImages({len(self)} of {len(self.index)} images of {self.index.source}, {self.channels}x{self.image_size}x{self.image_size})"


def batches(images: torch.Tensor | SplitImages, size: int) -> Iterator[torch.Tensor]:
    """``images`` (a tensor, or a :class:`SplitImages` decoded batch by batch) ``size`` at a time.

    Args:
        images: uint8 images (N, C, H, W).
        size: images per batch.
    """
    if isinstance(images, SplitImages):
        yield from images.batches(size)
    else:
        for start in range(0, len(images), size):
            yield images[start : start + size]


def open_split(
    d: Any, data_dir: str | Path, cache_dir: str | Path, split: str = "train", load: Callable[..., ImageData] | None = None
) -> ImageData:
    """One split of a dataset, read as training reads it: in memory when ``dataset.in_memory`` keeps the
    dataset in memory (``load``), else streamed, its images a :class:`SplitImages` decoded as read.

    The decision is training's (:func:`ddpm.data.residency.keep_in_memory` on the whole source), so
    a command reading a checkpoint's dataset streams exactly when its training did. Streamed,
    commands that need n images decode those n, statistics read a batch at a time, and the set is
    never decoded whole.

    Args:
        d: the ``dataset`` node.
        data_dir: the data root (``paths.data_dir``).
        cache_dir: ``paths.cache_dir`` (decoded archives and a folder's listing are cached there).
        split: ``train`` or ``test`` (the held-out ``dataset.test_fraction``, as in memory).
        load: the in-memory reader, called as ``load(d, data_dir, cache_dir, split)``
            (default :func:`ddpm.data.load_dataset`).
    """
    load = load or load_dataset
    check_residency(d)
    if d.name not in IMAGE_SOURCES or d.get("in_memory", AUTO) is True:
        return load(d, data_dir, cache_dir, split)
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    full = index_source(IMAGE_SOURCES[d.name][0](d, Path(data_dir).expanduser()), Path(cache_dir).expanduser())
    if keep_in_memory(d, len(full)):
        return load(d, data_dir, cache_dir, split)
    channels = decode_channels(d)
    if channels != d.channels:
        raise ConfigError(f"{d.name} images have {channels} channels but dataset.channels={d.channels}")
    keep = heldout_split(len(full), float(d.test_fraction), split).numpy()
    if len(keep) == 0:
        raise DataError(f"the {split} split of {d.name} at {full.source} is empty")
    images = SplitImages(full, keep, channels, int(d.image_size), bool(d.resize), threads=loader_workers(d))
    log.info(
        "dataset %s: %d images, %.2f GiB decoded (dataset.in_memory=%s, in_memory_max_gb=%g): the %s split's %d images are decoded as read",
        d.name,
        len(full),
        decoded_bytes(len(full), channels, int(d.image_size)) / 2**30,
        str(d.get("in_memory", AUTO)).lower(),
        d.get("in_memory_max_gb", DEFAULT_MAX_GB),
        split,
        len(keep),
    )
    return ImageData(images, None, d.name, str(full.source))  # a SplitImages in place of the tensor
