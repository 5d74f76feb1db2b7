#!/usr/bin/env python
"""Images/s of the two ways ``ddpm-train`` reads a training set, measured in one process on one dataset.

- **in memory** (``dataset.in_memory=true``): decoding every image once (``load_dataset`` with an
  empty cache, in this one process, as the first run of ``ddpm-train`` does), then the trainer's
  batches: a slice of the epoch permutation taken from the uint8 tensor, scaled to [-1, 1] and
  flipped, with ``--threads`` torch threads;
- **streamed** (``dataset.in_memory=false``): :func:`ddpm.data.streaming.open_stream` with
  ``--workers`` loader workers, read as the trainer reads it (each batch scaled to [-1, 1]; the
  workers decoded, cropped, resized and flipped it): the wait for the first batch (the workers
  start), then batches after ``--warmup`` of them.

Besides wall-clock images/s the script reports CPU milliseconds per image, summed over this process
and its loader workers (they are reaped, then counted by ``getrusage``): on a machine shared with
other jobs the wall clock measures the other jobs, the CPU time what the reading costs.

Usage::

    python scripts/bench_loader.py --dataset cats                       # $DDPM_DATA_DIR/cats/afhq_cat_64.tar
    python scripts/bench_loader.py --folder /data/bedrooms --image-size 64 --resize
    python scripts/bench_loader.py --make-folder /tmp/synth100k --images 100000 --delete   # writes, measures, deletes
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from ddpm.data.residency import decoded_bytes
from ddpm.data.sources import IMAGE_SOURCES, index_source
from ddpm.tools.loader_bench import LoaderBench, bench_memory, bench_stream, dataset_node, make_folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--dataset", choices=["cats"], help="a dataset under --data-dir")
    where.add_argument("--folder", type=Path, help="a folder, .tar or folder of .tar shards")
    where.add_argument("--make-folder", type=Path, help="write --images synthetic pictures here first")
    p.add_argument("--data-dir", default=os.environ.get("DDPM_DATA_DIR", "data"))
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--format", choices=["jpg", "png"], default="jpg")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--resize", action="store_true", help="dataset.resize=true")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="loader workers of the streamed path")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the in-memory path")
    p.add_argument("--warmup", type=int, default=5, help="batches before timing")
    p.add_argument("--stream-batches", type=int, default=100)
    p.add_argument("--memory-batches", type=int, default=200)
    p.add_argument("--skip-memory", action="store_true", help="measure streaming only (a set that does not fit)")
    p.add_argument("--delete", action="store_true", help="delete the --make-folder folder afterwards")
    p.add_argument("--json", type=Path, help="write the results here (with the command that wrote them)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    made_s = None
    if args.make_folder:
        if args.make_folder.exists() and any(args.make_folder.iterdir()):
            sys.exit(f"{args.make_folder} is not empty; give a new folder")
        made_s = make_folder(args.make_folder, args.images, args.image_size, args.format, processes=max(1, args.workers))
        print(
            f"wrote {args.images} {args.image_size}x{args.image_size} {args.format} files into {args.make_folder} in {made_s:.0f} s",
            flush=True,
        )
    source = None if args.dataset else str(args.folder or args.make_folder)
    bench = LoaderBench(
        args.dataset or "folder",
        args.image_size,
        args.resize,
        args.batch,
        args.workers,
        args.warmup,
        args.stream_batches,
        args.memory_batches,
    )
    load = os.getloadavg()[0]
    result: dict[str, Any] = {
        "command": shlex.join(["python", *sys.argv]),
        "source": source or f"{args.data_dir}/cats",
        "image_size": args.image_size,
        "batch": args.batch,
        "threads": args.threads,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "load_average_at_start": load,
        "torch": torch.__version__,
    }
    node = dataset_node(bench, source, False)
    files = len(index_source(IMAGE_SOURCES[node.name][0](node, Path(args.data_dir))))
    result["files"] = files
    result["decoded_gib"] = decoded_bytes(files, 3, args.image_size) / 2**30
    try:
        result["streamed"] = bench_stream(bench, args.data_dir, source)
        print(f"streamed: {json.dumps(result['streamed'])}", flush=True)
        if not args.skip_memory:
            with tempfile.TemporaryDirectory(prefix="bench_loader_cache_") as cache:
                result["in_memory"] = bench_memory(bench, args.data_dir, source, Path(cache), files)
            print(f"in memory: {json.dumps(result['in_memory'])}", flush=True)
    finally:
        if args.make_folder and args.delete:
            shutil.rmtree(args.make_folder)
    result["load_average_at_end"] = os.getloadavg()[0]
    st = result["streamed"]
    print(
        f"\n{result['source']}: {files} images ({st['train_images']} in the train split), {result['decoded_gib']:.2f} GiB decoded; "
        f"load average {load:.1f} -> {result['load_average_at_end']:.1f}"
    )
    print("| path | img/s (wall) | CPU ms/img | note |\n|---|---|---|---|")
    print(
        f"| streamed, {args.workers} workers | {st['img_s']:.0f} | {st['cpu_ms_per_img']:.2f} | index {st['index_s']:.1f} s, first batch {st['first_batch_s']:.1f} s |"
    )
    if "in_memory" in result:
        m = result["in_memory"]
        print(
            f"| in memory: decoding once, 1 process | {m['decode_img_s']:.0f} | {m['decode_cpu_ms_per_img']:.2f} | {m['decode_s']:.0f} s before the first step |"
        )
        print(
            f"| in memory: batches, {args.threads} threads | {m['batch_img_s']:.0f} | {m['batch_cpu_ms_per_img']:.3f} | {m['resident_bytes'] / 2**20:.0f} MiB resident |"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
