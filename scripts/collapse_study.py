#!/usr/bin/env python
"""The collapse study end to end: train on n images (and d), measure each checkpoint, merge.

Runs, one after the other on one thread each:

1. ``ddpm-train -m experiment=collapse_mnist dataset.n=<N> dataset.image_size=<S> hydra.sweep.dir=<out>/train [--train ...]``
2. ``ddpm-regimes regimes=trained ckpt=<job>/checkpoints/<ckpt>.pt hydra.run.dir=<job>/regimes/<ckpt> [--regimes ...]``
   for the last checkpoint of every job (every kept checkpoint with ``--all-checkpoints``);
3. ``scripts/collect_sweep.py <out>/train --collapse``: ``collapse.csv`` and the plots.

    python scripts/collapse_study.py outputs/collapse --n 64,256,1024,4096 --all-checkpoints
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def run(cmd: list[str]) -> None:
    """Run one command with one thread; stop the study with its exit code if it fails."""
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    if proc.returncode:
        sys.exit(proc.returncode)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="study folder (train/ holds the multirun)")
    ap.add_argument("--n", default="64,256,1024,4096", help="dataset.n values, comma-separated")
    ap.add_argument("--image-size", default="8", help="dataset.image_size values (d = size²), comma-separated")
    ap.add_argument("--experiment", default="collapse_mnist", help="the training preset")
    ap.add_argument("--train", nargs="*", default=[], help="more ddpm-train overrides")
    ap.add_argument("--regimes", nargs="*", default=[], help="more ddpm-regimes overrides")
    ap.add_argument("--all-checkpoints", action="store_true", help="measure every kept checkpoint (memorisation against steps)")
    args = ap.parse_args(argv)
    sweep = args.out / "train"
    if not (sweep / "multirun.yaml").is_file():
        run(
            [str(BIN / "ddpm-train"), "-m", f"experiment={args.experiment}", f"dataset.n={args.n}", f"dataset.image_size={args.image_size}"]
            + ["train.progress=false", f"hydra.sweep.dir={sweep}", *args.train]
        )
    for job in sorted(p for p in sweep.iterdir() if (p / "checkpoints" / "last.pt").is_file()):
        ckpts = sorted((job / "checkpoints").glob("step_*.pt")) if args.all_checkpoints else [job / "checkpoints" / "last.pt"]
        for ckpt in ckpts:
            if (job / "regimes" / ckpt.stem / "regimes.json").is_file():
                continue  # a rerun continues where the study stopped
            run(
                [str(BIN / "ddpm-regimes"), "regimes=trained", f"ckpt={ckpt}", "runtime.num_threads=1", "plots=false"]
                + [f"hydra.run.dir={job / 'regimes' / ckpt.stem}", *args.regimes]
            )
    run([sys.executable, str(Path(__file__).with_name("collect_sweep.py")), str(sweep), "--collapse"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
