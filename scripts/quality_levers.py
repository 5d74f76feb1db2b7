"""Measure training levers one at a time: each variant trains on the same time budget, then the
run's own evaluation (``train.eval_every``) scores its EMA samples in the domain classifier's space.

    python scripts/quality_levers.py --minutes 4 --clock process --threads 1 \\
        --base experiment=quickstart \\
        --variant "old norm=model.norm_min_group_channels=1" \\
        --variant "new norm=" \\
        --variant "min-SNR=train.loss_weighting=min_snr"

A variant is ``label=override override ...`` (its overrides are added to ``--base``). Prints a
markdown table and writes JSON (``--out``). Runs are sequential: timings on a shared machine are
only comparable within one invocation, and the process clock (CPU time per thread) keeps them fair.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from ddpm.tables import markdown_table

COLUMNS = ("step", "fid", "kid", "class_entropy", "confidence", "confident_fraction", "blob_fraction")


def run_variant(label: str, overrides: list[str], args: argparse.Namespace, workdir: Path) -> dict:
    run_dir = workdir / re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_")  # Hydra's override grammar rejects (), =, ...
    cmd = [
        sys.executable,
        "-m",
        "ddpm.train",
        *args.base,
        *overrides,
        f"train.time_budget_min={args.minutes}",
        f"train.budget_clock={args.clock}",
        "train.max_steps=100000000",
        "train.eval_every=100000000",  # the final evaluation only
        f"train.eval_samples={args.samples}",
        "train.progress=false",
        f"runtime.num_threads={args.threads}",
        f"hydra.run.dir={run_dir}",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if proc.returncode:
        sys.exit(f"variant {label!r} failed ({shlex.join(cmd)}):\n{proc.stderr[-2000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    import torch

    best = torch.load(run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    return {"label": label, "overrides": overrides, "run_dir": str(run_dir), "wall_s": time.perf_counter() - t0, **metrics, **best["eval"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, required=True, help="training budget of each variant")
    p.add_argument("--clock", choices=("wall", "process"), default="process")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each run")
    p.add_argument("--samples", type=int, default=500, help="samples scored per variant")
    p.add_argument("--base", nargs="*", default=["experiment=quickstart"], help="overrides shared by all variants")
    p.add_argument("--variant", action="append", required=True, help="'label=override override ...'")
    p.add_argument("--workdir", type=Path, default=Path("outputs/quality_levers"))
    p.add_argument("--out", type=Path, default=Path("outputs/quality_levers/levers.json"))
    args = p.parse_args()
    rows = []
    for spec in args.variant:
        label, _, rest = spec.partition("=")
        rows.append(run_variant(label.strip(), shlex.split(rest), args, args.workdir))
        print(f"{label}: step {rows[-1]['step']} FID {rows[-1]['fid']:.2f}", flush=True)
    print(f"\n{args.minutes} min ({args.clock} clock, {args.threads} thread(s)) per variant; base: {' '.join(args.base)}\n")
    print(markdown_table(["variant", *COLUMNS], [[r["label"], *(r[c] for c in COLUMNS)] for r in rows]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": shlex.join(sys.argv), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
