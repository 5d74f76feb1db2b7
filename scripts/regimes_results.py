#!/usr/bin/env python
"""Gather ``ddpm-regimes`` run dirs into one result JSON for the docs (``docs/results/*.json``).

Each run dir's ``regimes.json`` (without its resolved ``config``) becomes ``runs.<run dir name>``,
with the command that made it (``ddpm-regimes`` and its overrides, from Hydra's record). The file
keeps every command (``--before``: commands that had to run first, e.g. a training run), this one
last, so that ``scripts/render_docs.py`` renders the docs' tables and commands from it::

    python scripts/regimes_results.py outputs/regimes_families/mnist_full outputs/regimes_families/mnist_subset \\
        --out docs/results/regimes_datasets.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import yaml


def run_command(run_dir: Path) -> str:
    """``ddpm-regimes`` with the run's overrides and its ``hydra.run.dir`` (as Hydra recorded them)."""
    task = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or []
    hydra = yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]["overrides"].get("hydra", []) or []
    hydra = [a for a in hydra if not str(a).startswith("hydra.mode=")]  # Hydra's own record of the run mode
    return " ".join(shlex.quote(str(a)) for a in ["ddpm-regimes", *task, *hydra])


def run_record(run_dir: Path) -> dict:
    rec = json.loads((run_dir / "regimes.json").read_text())
    rec.pop("config", None)
    return {"command": run_command(run_dir), **rec}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="ddpm-regimes run dirs (each with regimes.json and .hydra/)")
    ap.add_argument("--out", type=Path, required=True, help="the result JSON to write")
    ap.add_argument("--before", action="append", default=[], help="a command that had to run first (repeatable)")
    args = ap.parse_args(argv)
    for r in args.runs:
        if not (r / "regimes.json").is_file() or not (r / ".hydra" / "overrides.yaml").is_file():
            print(f"error: {r} is not a finished ddpm-regimes run dir (regimes.json and .hydra/overrides.yaml)", file=sys.stderr)
            return 2
    if len({r.name for r in args.runs}) < len(args.runs):
        print("error: two run dirs share a name (each becomes runs.<name>)", file=sys.stderr)
        return 2
    runs = {r.name: run_record(r) for r in args.runs}
    me = ["python", "scripts/regimes_results.py", *map(str, args.runs), "--out", str(args.out)]
    me += [a for b in args.before for a in ("--before", b)]
    out = {"command": [*args.before, *(r["command"] for r in runs.values()), " ".join(shlex.quote(a) for a in me)], "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(runs)} runs -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
