"""Fault drill: real tiny ``ddpm-train`` runs survive kills, signals, bad files and bad input.

Every fault is injected into real ``ddpm-train`` processes (the installed console script; tiny
U-Net, T=100, batch 4, MNIST from ``DDPM_DATA_DIR``, CPU, one thread):

* SIGKILL at random moments (start-up, training, and inside a checkpoint write, aimed with the
  ``DDPM_TEST_SLOW_WRITE`` testing hook), SIGTERM and SIGINT, a truncated newest checkpoint, a
  garbage ``last.pt``, a ``last.pt`` carrying pickled code, a second run on a live run directory,
  a full disk (``RLIMIT_FSIZE``: the kernel refuses the write), a read-only checkpoint folder —
  all into one chain of runs that always continues with ``resume=latest``;
* NaN losses (``DDPM_TEST_NONFINITE_STEPS`` testing hook) in a separate run;
* bad command lines, data files, downloads and checkpoints (``ddpm/tools/bad_inputs.py``);
* a full disk while ``ddpm-sample`` and ``ddpm-evaluate`` write their outputs into a run directory
  that holds earlier outputs (full drill only; the test suite has a test for each).

After each fault it checks that every checkpoint complete before the fault still loads and that
``resume=latest`` picks the newest good one; at the end the chain's final weights must equal an
uninterrupted reference run's weights. It prints ``fault | runs | survived | checkpoints lost``,
writes ``results.json`` (its ``"command"`` and rows; ``--out`` a folder or a ``.json`` file) and ends
with ``N faults injected, N survived, 0 checkpoints lost``. The machinery is :mod:`ddpm.tools.drill`.

    DDPM_DATA_DIR=/path/to/data python scripts/fault_drill.py [--quick] [--out DIR | --out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from ddpm.tools.drill import BIN, run_drill, source_digest, table
from ddpm.tools.drill import results as drill_results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="short version: each fault once (4 SIGKILLs, 2 bad inputs as processes; full: 12 SIGKILLs, all bad inputs, full disks of sample and evaluate)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results.json goes into this folder, or to this file if it ends in .json (default: the work folder)",
    )
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temp folder, removed at the end)")
    ap.add_argument(
        "--data-dir", type=Path, default=os.environ.get("DDPM_DATA_DIR"), help="data root with MNIST/raw (default: $DDPM_DATA_DIR)"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.data_dir is None or not (Path(args.data_dir) / "MNIST" / "raw").is_dir():
        ap.error("set DDPM_DATA_DIR (or --data-dir) to a folder holding MNIST/raw")
    if not (BIN / "ddpm-train").exists():
        ap.error(f"{BIN / 'ddpm-train'} not found: install the package (pip install -e .)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", *sys.argv] if argv is None else ["python", "scripts/fault_drill.py", *argv])
    keep = args.work is not None
    work = (Path(args.work) if keep else Path(tempfile.mkdtemp(prefix="ddpm-fault-drill-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    logging.getLogger("ddpm").setLevel(logging.ERROR)  # the checks' own "skipping" warnings are expected
    t0 = time.time()
    source = source_digest()
    try:
        drill, steps = run_drill(work, Path(args.data_dir).resolve(), args.quick, args.seed)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    if source_digest() != source:  # runs before and after an edit compute differently
        drill.final["problems"] = [*drill.final.get("problems", []), "the ddpm source files changed while the drill ran"]
        print(
            "warning: the ddpm source files changed while the drill ran; runs before and after an edit may compute differently: if the weights differ, run it again",
            flush=True,
        )
    res = drill_results(drill, steps, args.quick, command, time.time() - t0)
    print("\n" + table(res["rows"]))
    print(
        f"\n{res['sigkills']} SIGKILLs; resumed weights vs uninterrupted run: max |diff| {drill.final['max_abs_weight_diff']:.3g}; {res['seconds']:.0f} s"
    )
    print(f"{res['injected']} faults injected, {res['survived']} survived, {res['checkpoints_lost']} checkpoints lost")
    out = args.out or (work if keep else None)
    if out is not None:
        path = out if out.suffix == ".json" else out / "results.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=2, default=str))
        print(f"results: {path}")
    ok = res["survived"] == res["injected"] and res["checkpoints_lost"] == 0 and res["sigkills"] >= res["planned_sigkills"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
