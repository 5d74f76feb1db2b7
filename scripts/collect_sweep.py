#!/usr/bin/env python
"""Gather a Hydra multirun directory into one CSV: one row per job.

Each job directory (``<sweep>/<n>/``) holds ``.hydra/overrides.yaml``, ``.hydra/config.yaml`` and a
result JSON (``regimes.json``, ``metrics.json``, ...). A row has the job's folder, every overridden
key (as given on the command line), any extra config keys asked for with ``--config-keys``, and
every scalar of the result JSON (nested objects flattened with dots; lists are skipped).

    python scripts/collect_sweep.py outputs/multirun/regimes/2026-01-01_12-00-00 --result regimes.json --out sweep.csv
    python scripts/collect_sweep.py outputs/multirun/train/<date> --result metrics.json --plot loss --x schedule.T --hue schedule

With ``--plot Y --x X [--hue H]`` it also draws Y against X, one line per value of H, next to the CSV.

With ``--json FILE`` it also writes a result file for the docs (``docs/results/*.json``, rendered by
``scripts/render_docs.py``): ``"rows"`` (each job's result JSON less its ``config``, with ``job``,
``overrides`` and ``config`` nested by dots: ``{overrides.synthetic.n}``) and ``"command"``: the sweep
command(s), read from Hydra's ``multirun.yaml`` under the folder (or given with ``--command``), then
this collector's own invocation.

    python scripts/collect_sweep.py /tmp/sweep_gauss --config-keys synthetic.sigma2 --json docs/results/regimes_sweep_gauss.json

``--collapse`` reads a ``ddpm-train`` multirun of the collapse study instead (docs/regimes.md): the
``regimes/<name>/regimes.json`` of every training job become ``collapse.csv`` and three plots
(memorised fraction against n and against steps; collapse times against n beside the theory).

    python scripts/collect_sweep.py outputs/multirun/train/<date> --collapse
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from ddpm.tables import collect_sweep_jobs, format_cell, multirun_commands


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path, help="the multirun directory (hydra.sweep.dir)")
    ap.add_argument("--result", default="regimes.json", help="result JSON inside each job folder (regimes.json, metrics.json, ...)")
    ap.add_argument("--out", type=Path, default=None, help="CSV to write (default <sweep>/sweep.csv)")
    ap.add_argument("--config-keys", default="", help="comma-separated config keys to add as columns, e.g. data.d,schedule.name")
    ap.add_argument("--plot", default=None, help="column to plot (e.g. loss); needs --x")
    ap.add_argument("--x", default=None, help="column on the x axis (e.g. schedule.T)")
    ap.add_argument("--hue", default=None, help="column whose values get one line each (e.g. schedule)")
    ap.add_argument("--collapse", action="store_true", help="a collapse-study training multirun: its jobs' regimes/*/regimes.json")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows and commands as a result JSON for the docs")
    ap.add_argument(
        "--command",
        action="append",
        default=[],
        help="the sweep command (repeatable), stored in --json instead of those read from multirun.yaml",
    )
    args = ap.parse_args(argv)
    me = shlex.join(["python", "scripts/collect_sweep.py", *(sys.argv[1:] if argv is None else argv)])
    if args.plot and not args.x:
        print("error: --plot needs --x", file=sys.stderr)
        return 2
    if not args.sweep.is_dir():
        print(f"error: {args.sweep} is not a directory", file=sys.stderr)
        return 2
    if args.collapse:
        return collect_collapse(args.sweep, args.out)
    keys = [k for k in args.config_keys.split(",") if k]
    jobs, missing = collect_sweep_jobs(args.sweep, args.result, keys)
    rows = [j.csv_row() for j in jobs]
    if missing:
        print(f"warning: {len(missing)} job(s) without {args.result}: {', '.join(str(m) for m in missing)}", file=sys.stderr)
    if not rows:
        print(f"error: no job under {args.sweep} has {args.result}", file=sys.stderr)
        return 2
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    out = args.out or args.sweep / "sweep.csv"
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} job(s) -> {out}")
    if args.json:
        commands = args.command or multirun_commands(args.sweep)
        if not commands:
            print(f"error: no multirun.yaml under {args.sweep}: give the sweep command with --command", file=sys.stderr)
            return 2
        record = {"command": [*commands, me], "result": args.result, "rows": [j.json_row() for j in jobs]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
        print(f"{len(jobs)} job(s) and {len(commands)} sweep command(s) -> {args.json}")
    # The comparison table: the keys that vary across jobs, then the numeric results.
    varying = [c for c in columns if c != "job" and len({str(r.get(c)) for r in rows}) > 1 and "/" not in str(rows[0].get(c))]
    numeric = [c for c in columns if c not in varying and c != "job" and all(isinstance(r.get(c), (int, float)) for r in rows)]
    shown = varying + numeric[:8]
    print_table(rows, shown)
    if args.plot:
        for key in (args.plot, args.x, args.hue):
            if key and key not in columns:
                print(f"error: no column {key!r}; columns: {', '.join(columns)}", file=sys.stderr)
                return 2
        print(f"plot -> {plot(rows, args.plot, args.x, args.hue, out.with_suffix('.png'))}")
    return 0


def collect_collapse(sweep: Path, out: Path | None) -> int:
    """The collapse study's table (CSV and printed) and plots; returns the exit code."""
    from ddpm.regimes.study import COLUMNS, collapse_rows, plot_study

    rows, missing = collapse_rows(sweep)
    if missing:
        print(
            f"warning: {len(missing)} training job(s) without regimes/*/regimes.json: {', '.join(str(m) for m in missing)}", file=sys.stderr
        )
    if not rows:
        print(
            f"error: no training job under {sweep} has regimes/*/regimes.json (run ddpm-regimes regimes=trained on its checkpoints)",
            file=sys.stderr,
        )
        return 2
    out = out or sweep / "collapse.csv"
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} record(s) -> {out}")
    shown = [c for c in COLUMNS if c not in ("job", "record", "image_size", "t_C_network_q25", "t_C_network_q75", "memorised_se")]
    print_table(rows, shown)
    for path in plot_study(rows, out.parent):
        print(f"plot -> {path}")
    return 0


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """The comparison table on stdout: a header line, then one line per row, cells joined by " | "."""
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(format_cell(row.get(c), ".5g") for c in columns))


def _num(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def plot(rows: list[dict[str, Any]], y: str, x: str, hue: str | None, path: Path) -> Path:
    """Y against X (sorted), one line per value of ``hue``; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[tuple[Any, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row.get(hue)) if hue else y, []).append((_num(row[x]), _num(row[y])))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, points in sorted(groups.items()):
        points.sort(key=lambda p: p[0])
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=f"{hue}={name}" if hue else name)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
