"""How to use every core: training images per second of one recipe run as 1 thread, N threads, and
N torchrun ranks of one thread each (DDP over gloo), at the same global batch.

    python scripts/bench_cores.py --models tiny,mini --steps 240 --out docs/results/cores.json

Each layout trains the real ``ddpm-train`` for ``--steps`` steps (no grids, checkpoints or
evaluation in between) and reads the images per second that ``train.log`` reports every
``--log-every`` steps; the first window (start-up, allocator warm-up) is dropped and the median of
the others is kept. With N ranks the per-rank batch is the global batch / N, so every layout
takes the same optimisation steps. Runs are sequential: throughput on a shared machine is only
comparable within one invocation. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ddpm.tables import markdown_table

IPS = re.compile(r"step (\d+) loss \S+ grad_norm \S+ lr \S+ img/s ([\d.]+)")


def layouts(cores: int, precisions: list[str]) -> list[dict]:
    """Every (threads, ranks, precision) layout measured: 1 thread, all cores as threads, all cores as ranks."""
    out = []
    for precision in precisions:
        for threads, ranks in ((1, 1), (cores, 1), (1, cores)):
            out.append({"threads": threads, "ranks": ranks, "precision": precision})
    return out


def run_layout(model: str, layout: dict, args: argparse.Namespace) -> dict:
    ranks, threads = layout["ranks"], layout["threads"]
    if args.batch % ranks:
        sys.exit(f"--batch {args.batch} does not split over {ranks} ranks")
    name = f"{model}_{layout['precision']}_{ranks}r{threads}t"
    run_dir = args.workdir / name
    overrides = [
        *args.base,
        f"model={model}",
        f"runtime={layout['precision']}",
        f"runtime.num_threads={threads}",
        f"train.batch_size={args.batch // ranks}",
        f"train.max_steps={args.steps}",
        "train.time_budget_min=null",
        f"train.log_every={args.log_every}",
        f"train.sample_every={10 * args.steps}",
        f"train.ckpt_every={10 * args.steps}",
        "train.progress=false",
        f"hydra.run.dir={run_dir}",
    ]
    launcher = [sys.executable, "-m", "ddpm.train"]
    if ranks > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", "-m", "ddpm.train"]
    cmd = [*launcher, *overrides]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if proc.returncode:
        sys.exit(f"{name} failed ({shlex.join(cmd)}):\n{proc.stderr[-2000:]}")
    windows = [float(m.group(2)) for m in IPS.finditer((run_dir / "train.log").read_text())]
    if len(windows) < 2:
        sys.exit(f"{name}: fewer than two logged windows; raise --steps or lower --log-every")
    return {
        "model": model,
        **layout,
        "batch_per_rank": args.batch // ranks,
        "images_per_s": statistics.median(windows[1:]),
        "windows": windows,
        "wall_s": time.perf_counter() - t0,
        "command": shlex.join(cmd),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny,mini", help="comma-separated model presets")
    p.add_argument("--base", nargs="*", default=["experiment=mnist_cpu"], help="overrides shared by all runs")
    p.add_argument("--precisions", default="fp32", help="comma-separated runtime presets (fp32, bf16)")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="threads or ranks of the multi-core layouts")
    p.add_argument("--batch", type=int, default=32, help="global batch of every layout")
    p.add_argument("--steps", type=int, default=240, help="training steps per layout")
    p.add_argument("--log-every", type=int, default=40, help="steps per throughput window")
    p.add_argument("--workdir", type=Path, default=Path("outputs/bench_cores"))
    p.add_argument("--out", type=Path, default=Path("outputs/bench_cores/cores.json"))
    args = p.parse_args()
    rows = []
    for model in args.models.split(","):
        base = None
        for layout in layouts(args.cores, args.precisions.split(",")):
            row = run_layout(model, layout, args)
            base = base or row["images_per_s"]
            row["speedup"] = row["images_per_s"] / base
            rows.append(row)
            print(f"{model} {layout}: {row['images_per_s']:.1f} img/s (x{row['speedup']:.2f})", flush=True)
    print()
    head = ["model", "precision", "layout", "batch per rank", "img/s", "vs 1 thread"]
    print(
        markdown_table(
            head,
            [
                [
                    r["model"],
                    r["precision"],
                    f"{r['ranks']} rank(s) x {r['threads']} thread(s)",
                    r["batch_per_rank"],
                    r["images_per_s"],
                    r["speedup"],
                ]
                for r in rows
            ],
        )
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"cpu": cpu_model(), "cores": args.cores, "torch": torch_version()}
    args.out.write_text(json.dumps({"command": shlex.join(["python", *sys.argv]), **meta, "rows": rows}, indent=2))


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    main()
