"""The two reads of ``scripts/bench_loader.py``: a training set decoded into memory and batched as the
in-memory trainer batches it, and the same set streamed through loader workers; and synthetic
folders of photo-like pictures to read.
"""

from __future__ import annotations

import io
import multiprocessing
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from ddpm.data import load_dataset, to_model_range
from ddpm.data.streaming import epoch_permutation, open_stream


def synthetic_image(i: int, side: int, fmt: str) -> bytes:
    """A smooth random picture (8x8 colours, upsampled, light noise) encoded as ``fmt``: compresses like a photo, not like noise."""
    rng = np.random.default_rng(i)
    coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((side, side), Image.BICUBIC)
    arr = np.clip(np.asarray(coarse, dtype=np.int16) + rng.integers(-8, 9, (side, side, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG" if fmt == "jpg" else "PNG", quality=90)
    return buf.getvalue()


def _write_chunk(args: tuple[Path, int, int, int, str]) -> int:
    root, start, stop, side, fmt = args
    for i in range(start, stop):
        path = root / f"{i // 1000:04d}" / f"{i:07d}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(synthetic_image(i, side, fmt))
    return stop - start


def make_folder(root: Path, images: int, side: int, fmt: str, processes: int) -> float:
    """Write ``images`` synthetic pictures into ``root`` (1,000 per sub-folder); returns seconds taken.

    Args:
        root: an empty folder.
        images: how many.
        side: their side in pixels.
        fmt: ``jpg`` or ``png``.
        processes: writer processes.
    """
    t0 = time.perf_counter()
    chunks = [(root, s, min(s + 1000, images), side, fmt) for s in range(0, images, 1000)]
    with multiprocessing.Pool(processes) as pool:
        done = sum(pool.imap_unordered(_write_chunk, chunks))
    assert done == images
    return time.perf_counter() - t0


@dataclass
class LoaderBench:
    """What to read and how long: the flags of ``scripts/bench_loader.py``.

    Args:
        dataset: ``cats`` (under the data root) or ``folder``.
        image_size: ``dataset.image_size``.
        resize: ``dataset.resize``.
        batch: images per batch.
        workers: loader workers of the streamed path.
        warmup: batches before timing.
        stream_batches: timed streamed batches.
        memory_batches: timed in-memory batches.
    """

    dataset: str
    image_size: int
    resize: bool
    batch: int
    workers: int
    warmup: int
    stream_batches: int
    memory_batches: int


def dataset_node(args: LoaderBench, source: str | None, in_memory: bool) -> Any:
    """The ``dataset`` node of the read: ``cats``, or a folder at ``source``; in memory or streamed."""
    return OmegaConf.create(
        {
            "name": args.dataset,
            "root": "cats",
            "image_size": args.image_size,
            "channels": 3,
            "hflip": True,
            "resize": args.resize,
            "download": False,
            "background": [99, 133, 150],
            "path": source,
            "test_fraction": 0.1,
            "num_classes": None,
            "in_memory": in_memory,
            "workers": args.workers,
        }
    )


def cpu_now() -> float:
    """CPU seconds of this process and of its reaped children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def bench_memory(args: LoaderBench, data_dir: str, source: str | None, cache_dir: Path, files: int) -> dict[str, float]:
    """Decode the whole set once into memory (an empty cache), then take the in-memory trainer's batches.

    Args:
        args: what to read and how long.
        data_dir: the data root.
        source: the folder (None: the dataset under the data root).
        cache_dir: an empty cache folder.
        files: images in the set (both splits are decoded).
    """
    cfg = dataset_node(args, source, True)
    t0, c0 = time.perf_counter(), cpu_now()
    data = load_dataset(cfg, data_dir, cache_dir, "train")
    decode_s, decode_cpu = time.perf_counter() - t0, cpu_now() - c0
    images, n, b = data.images, len(data.images), args.batch
    gen = torch.Generator().manual_seed(0)
    steps = n // b
    perm = epoch_permutation(0, 0, n)

    def batch(step: int) -> torch.Tensor:
        idx = perm[(step % steps) * b : (step % steps + 1) * b]
        x0 = to_model_range(images[idx])
        flip = torch.rand(b, generator=gen) < 0.5
        return torch.where(flip[:, None, None, None], x0.flip(-1), x0)

    for s in range(args.warmup):
        batch(s)
    t0, c0 = time.perf_counter(), cpu_now()
    for s in range(args.memory_batches):
        batch(s)
    wall, cpu = time.perf_counter() - t0, cpu_now() - c0
    seen = args.memory_batches * b
    return {
        "train_images": n,
        "decoded_images": files,  # both splits: the whole set is decoded (and cached), then split
        "decode_s": decode_s,
        "decode_img_s": files / decode_s,
        "decode_cpu_ms_per_img": 1000 * decode_cpu / files,
        "batch_img_s": seen / wall,
        "batch_cpu_ms_per_img": 1000 * cpu / seen,
        "resident_bytes": images.numel(),
    }


def bench_stream(args: LoaderBench, data_dir: str, source: str | None) -> dict[str, float]:
    """Read batches through :func:`ddpm.data.streaming.open_stream`'s loader workers, as the trainer does.

    Args:
        args: what to read and how long.
        data_dir: the data root.
        source: the folder (None: the dataset under the data root).
    """
    cfg = dataset_node(args, source, False)
    t0 = time.perf_counter()
    s = open_stream(cfg, data_dir, seed=0, batch_size=args.batch, workers=args.workers)
    index_s = time.perf_counter() - t0
    assert s is not None
    c0 = cpu_now()
    t0 = time.perf_counter()
    to_model_range(s.next())  # what the trainer does with a streamed batch (the workers flipped it)
    first_s = time.perf_counter() - t0
    for _ in range(args.warmup - 1):
        to_model_range(s.next())
    t0 = time.perf_counter()
    for _ in range(args.stream_batches):
        to_model_range(s.next())
    wall = time.perf_counter() - t0
    s.close()  # joins the workers, so that getrusage counts their CPU time
    cpu = cpu_now() - c0
    read = (args.warmup + args.stream_batches) * args.batch
    return {
        "train_images": len(s),
        "index_s": index_s,
        "first_batch_s": first_s,
        "img_s": args.stream_batches * args.batch / wall,
        "cpu_ms_per_img": 1000 * cpu / read,
        "workers": args.workers,
    }
