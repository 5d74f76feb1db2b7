#!/usr/bin/env python
"""Fewer steps for the same quality: domain FID against the number of network evaluations.

Runs ``ddpm-evaluate`` (FID in the feature space of the dataset's own classifier) on one trained
checkpoint with DDIM and DPM-Solver++ at several step counts, plus the 1000-step ancestral
(DDPM) reference, and writes a Markdown table and a JSON file that holds the command (``--out``: where the JSON goes,
e.g. ``docs/results/steps_vs_fid.json`` for a table in the docs; default ``<out-dir>/steps_vs_fid.json``)::

    python scripts/steps_vs_fid.py --ckpt outputs/train/mnist/<run>/checkpoints/last.pt \\
        --num-samples 2000 --out-dir /tmp/steps_vs_fid

Every evaluation uses the same sample count and seed, so the FIDs are comparable with each other
(not with FIDs from another sample count: FID is biased upwards at small counts).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from ddpm.tables import markdown_table

EVALUATE = Path(sys.executable).with_name("ddpm-evaluate")


def run_one(ckpt: Path, sampler: str, steps: int | None, num_samples: int, out: Path, extra: list[str]) -> dict:
    """One ``ddpm-evaluate`` run (FID only); returns its row, reusing a finished run's metrics."""
    tag = f"{sampler}_{steps if steps is not None else 'all'}"
    run_dir = out / tag
    metrics = run_dir / "metrics.json"
    if not metrics.exists():
        cmd = [
            str(EVALUATE),
            f"ckpt={ckpt}",
            f"sampler={sampler}",
            f"sampler.steps={'null' if steps is None else steps}",
            "metrics=[fid]",
            f"num_samples={num_samples}",
            "progress=false",
            f"hydra.run.dir={run_dir}",
            *extra,
        ]
        print("$", " ".join(cmd), flush=True)
        t0 = time.time()
        subprocess.run(cmd, check=True, env=os.environ.copy())
        print(f"  {time.time() - t0:.0f} s", flush=True)
    m = json.loads(metrics.read_text())
    fid = next(iter(m["fidelity"].values()))
    return {
        "sampler": sampler,
        "evaluations": steps,
        "fid": fid["fid"],
        "num_samples": num_samples,
        "feature_extractor": fid.get("feature_extractor"),
        "sampling_seconds": m.get("sampling_seconds"),
        "run_dir": str(run_dir),
    }


def markdown(rows: list[dict], steps: list[int], reference: dict | None) -> str:
    table = []
    for sampler in sorted({r["sampler"] for r in rows}):
        by = {r["evaluations"]: r["fid"] for r in rows if r["sampler"] == sampler}
        table.append([sampler, *(f"{by[s]:.2f}" if s in by else "-" for s in steps)])
    if reference is not None:
        col = reference["evaluations"] if reference["evaluations"] in steps else steps[-1]
        label = f"ddpm ancestral ({reference['evaluations']} evals, reference)"
        table.append([label, *(f"{reference['fid']:.2f}" if s == col else "-" for s in steps)])
    return markdown_table(["sampler", *(f"{s} evals" for s in steps)], table)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", type=Path, required=True, help="trained checkpoint (last.pt)")
    p.add_argument("--num-samples", type=int, default=2000, help="generated images per evaluation")
    p.add_argument("--steps", default="10,20,50,100,1000", help="network evaluations for DDIM and DPM-Solver")
    p.add_argument("--samplers", default="ddim,dpm_solver")
    p.add_argument("--reference-steps", type=int, default=1000, help="evaluations of the ancestral reference (0 skips it)")
    p.add_argument("--out-dir", type=Path, default=Path("outputs/steps_vs_fid"))
    p.add_argument("--out", type=Path, default=None, help="the JSON (default <out-dir>/steps_vs_fid.json)")
    p.add_argument("extra", nargs="*", help="further ddpm-evaluate overrides, e.g. batch_size=500")
    args = p.parse_args(argv)
    if not args.ckpt.is_file():
        sys.exit(f"error: checkpoint {args.ckpt} not found")
    steps = [int(s) for s in args.steps.split(",")]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rows = [run_one(args.ckpt, s, n, args.num_samples, args.out_dir, args.extra) for s in args.samplers.split(",") for n in steps]
    ref = run_one(args.ckpt, "ddpm", args.reference_steps, args.num_samples, args.out_dir, args.extra) if args.reference_steps else None
    table = markdown(rows, steps, ref)
    command = shlex.join(["python", "scripts/steps_vs_fid.py", *(argv if argv is not None else sys.argv[1:])])
    summary = {"command": command, "ckpt": str(args.ckpt), "num_samples": args.num_samples, "rows": rows, "reference": ref, "table": table}
    if ref is not None:
        at20 = [r for r in rows if r["evaluations"] == 20]
        summary["within_10pct_at_20"] = {r["sampler"]: r["fid"] <= 1.1 * ref["fid"] for r in at20}
    out = args.out or args.out_dir / "steps_vs_fid.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    (args.out_dir / "steps_vs_fid.md").write_text(table + "\n")
    print(table)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
