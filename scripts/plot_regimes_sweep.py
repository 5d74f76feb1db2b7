#!/usr/bin/env python
"""Plots of a ``ddpm-regimes`` sweep collected by ``scripts/collect_sweep.py``.

- ``<prefix>_tc_alpha.png``: measured t_C (p_½ crossing) against α = log(n)/d, with the isotropic
  law t_C = ½ log(1 + σ²/(e^{2α} - 1)) for each σ² of the sweep;
- ``<prefix>_collapse.png``: the isotropic data collapse, e^{2 t_C} - 1 against σ²/(e^{2α} - 1)
  (the diagonal is the theory);
- ``<prefix>_ts_d.png``: t_S = ½ log Λ against d (with ½ log of the population Λ where known).

    python scripts/plot_regimes_sweep.py sweep.csv --out-dir docs/img --prefix regimes_sweep
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def num(row: dict[str, str], key: str) -> float:
    v = row.get(key, "")
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", type=Path)
    ap.add_argument("--out-dir", type=Path, default=Path("."))
    ap.add_argument("--prefix", default="regimes_sweep")
    args = ap.parse_args(argv)
    rows = list(csv.DictReader(args.csv.open()))
    if not rows:
        print(f"error: {args.csv} has no rows", file=sys.stderr)
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    alpha = np.array([num(r, "alpha") for r in rows])
    d = np.array([num(r, "d") for r in rows])
    tc = np.array([num(r, "t_C") for r in rows])
    sigma2 = np.array(
        [num(r, "synthetic.sigma2") if not math.isnan(num(r, "synthetic.sigma2")) else num(r, "mean_eigenvalue") for r in rows]
    )
    iso = np.array([r.get("synthetic.name", r.get("data", "")) in ("gaussian",) for r in rows])

    written = []
    have_tc = bool(np.any(np.isfinite(tc)))
    iso &= np.isfinite(tc)
    if have_tc:
        written.append(plot_tc_alpha(args, alpha, d, tc, sigma2, iso))
    if bool(np.any(iso)):
        written.append(plot_data_collapse(args, alpha, d, tc, sigma2, iso))
    written.append(plot_ts_d(args, rows, d))
    for w in written:
        print(f"-> {w}")
    return 0


def plot_tc_alpha(args, alpha, d, tc, sigma2, iso) -> Path:
    """Measured t_C against α with the isotropic law for each σ² of the sweep."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for dd in sorted(set(d[~np.isnan(d)])):
        m = d == dd
        ax.plot(alpha[m], tc[m], "o", label=f"measured, d = {int(dd)}")
    grid = np.geomspace(max(np.nanmin(alpha) / 1.5, 1e-3), np.nanmax(alpha) * 1.5, 200)
    for s2 in sorted(set(sigma2[iso & ~np.isnan(sigma2)])):
        ax.plot(
            grid,
            0.5 * np.log1p(s2 / np.expm1(2 * grid)),
            "--",
            color="k" if s2 == 1 else None,
            lw=1,
            label=f"½ log(1 + σ²/(e^{{2α}} - 1)), σ² = {s2:g}",
        )
    ax.set_xscale("log")
    ax.set_xlabel("α = log(n) / d")
    ax.set_ylabel("t_C (p_½ crossing)")
    ax.legend(fontsize=7)
    ax.set_title("collapse time against α", fontsize=9)
    fig.tight_layout()
    path = args.out_dir / f"{args.prefix}_tc_alpha.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_data_collapse(args, alpha, d, tc, sigma2, iso) -> Path:
    """e^{2 t_C} - 1 against σ²/(e^{2α} - 1): the diagonal is the isotropic theory."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    xs = sigma2 / np.expm1(2 * alpha)
    ys = np.expm1(2 * tc)
    for dd in sorted(set(d[iso])):
        m = iso & (d == dd)
        ax.loglog(xs[m], ys[m], "o", label=f"d = {int(dd)}")
    lim = [np.nanmin(np.r_[xs[iso], ys[iso]]) / 1.5, np.nanmax(np.r_[xs[iso], ys[iso]]) * 1.5]
    ax.plot(lim, lim, "k--", lw=1, label="theory (diagonal)")
    ax.set_xlabel("σ² / (e^{2α} - 1)")
    ax.set_ylabel("e^{2 t_C} - 1 (measured)")
    ax.legend(fontsize=7)
    ax.set_title("isotropic Gaussian data collapse", fontsize=9)
    fig.tight_layout()
    path = args.out_dir / f"{args.prefix}_collapse.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_ts_d(args, rows, d) -> Path:
    """Measured t_S = ½ log Λ against d, with the population value where known."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ts = np.array([num(r, "t_S") for r in rows])
    ts_th = np.array([num(r, "t_S_theory") for r in rows])
    n = np.array([num(r, "n") for r in rows])
    for nn in sorted(set(n[~np.isnan(n)])):
        m = n == nn
        ax.plot(d[m], ts[m], "o", label=f"½ log Λ (sample), n = {int(nn)}")
    if np.any(~np.isnan(ts_th)):
        order = np.argsort(d)
        ax.plot(d[order], ts_th[order], "k--", lw=1, label="½ log Λ (population)")
    ax.set_xscale("log")
    ax.set_xlabel("d")
    ax.set_ylabel("t_S")
    ax.legend(fontsize=7)
    ax.set_title("speciation time against dimension", fontsize=9)
    fig.tight_layout()
    path = args.out_dir / f"{args.prefix}_ts_d.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
