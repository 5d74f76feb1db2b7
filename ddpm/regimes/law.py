"""The memorisation law in training time: τ_mem and τ_gen of each run, and their scaling with n.

Each training run (``ddpm-train`` with ``train.regimes_every``, or a Gaussian-mixture run of
:mod:`ddpm.regimes.gmm`) leaves ``regimes.jsonl``: one row per measured step with ``n``, ``d``,
``memorised_fraction`` (± ``memorised_se``) and the held-out loss. From each run's curves:

- τ_mem: the first step at which f_mem reaches ``level`` (interpolated in log step between the
  measured steps; null when it never does);
- τ_gen: the first step at which the held-out loss comes within ``margin`` (relative) of its best
  over the run (interpolated likewise).

Across runs, τ ∝ n^b is fitted on log–log axes by least squares, with a 95% interval of b from the
t distribution (Bonnaire et al. 2025 find b = 1 for τ_mem and b = 0 for τ_gen).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ddpm.errors import DataError
from ddpm.regimes.monitor import LOG_FILE, read_rows

MEM_LEVEL = 0.1  # f_mem that marks τ_mem
GEN_MARGIN = 0.05  # held-out loss within 5% of its best marks τ_gen
COLUMNS = (
    "job",
    "n",
    "d",
    "part",
    "steps",
    "final_step",
    "final_memorised_fraction",
    "final_memorised_se",
    "tau_mem",
    "tau_gen",
    "best_heldout_loss",
)


def first_reach(steps: np.ndarray, values: np.ndarray, level: float) -> float | None:
    """First step at which ``values`` reaches ``level`` (>=), interpolated linearly in log step; None if never.

    Args:
        steps: increasing steps (> 0).
        values: the curve at those steps.
        level: the level to reach.
    """
    steps, values = np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)
    above = np.nonzero(values >= level)[0]
    if above.size == 0:
        return None
    i = int(above[0])
    if i == 0:
        return float(steps[0])
    v0, v1 = values[i - 1], values[i]
    frac = (level - v0) / (v1 - v0)
    return float(math.exp(math.log(steps[i - 1]) + frac * (math.log(steps[i]) - math.log(steps[i - 1]))))


def tau_gen(steps: np.ndarray, loss: np.ndarray, margin: float = GEN_MARGIN) -> float | None:
    """First step at which ``loss`` (lower is better) comes within ``margin`` of its minimum.

    Args:
        steps: increasing steps (> 0).
        loss: held-out loss at those steps (NaN entries are skipped).
        margin: relative margin above the best value.
    """
    ok = np.isfinite(np.asarray(loss, dtype=np.float64))
    if not ok.any():
        return None
    s, v = np.asarray(steps, dtype=np.float64)[ok], np.asarray(loss, dtype=np.float64)[ok]
    # loss falling to best·(1 + margin) is -loss rising to -best·(1 + margin)
    return first_reach(s, -v, -float(v.min()) * (1 + margin))


def fit_power_law(n: np.ndarray, tau: np.ndarray) -> dict[str, Any]:
    """Least-squares fit of log τ = a + b log n with the 95% interval of b (t distribution, len - 2 dof).

    Args:
        n: sizes (> 0).
        tau: times (> 0); None/NaN entries are left out.
    """
    from scipy import stats

    n, tau = np.asarray(n, dtype=np.float64), np.asarray([np.nan if t is None else t for t in tau], dtype=np.float64)
    ok = np.isfinite(tau) & (tau > 0) & (n > 0)
    out: dict[str, Any] = {"points": int(ok.sum()), "exponent": None, "interval95": None, "prefactor": None}
    if ok.sum() < 2:
        return out
    x, y = np.log(n[ok]), np.log(tau[ok])
    b, a = np.polyfit(x, y, 1)
    out.update({"exponent": float(b), "prefactor": float(math.exp(a))})
    if ok.sum() >= 3:
        resid = y - (a + b * x)
        se = math.sqrt(float(resid @ resid) / (len(x) - 2) / float(((x - x.mean()) ** 2).sum()))
        h = float(stats.t.ppf(0.975, len(x) - 2)) * se
        out["interval95"] = [float(b - h), float(b + h)]
    return out


def run_curves(job: Path) -> dict[str, np.ndarray | int | None]:
    """The curves of one run: steps, f_mem, its error and the held-out loss, with n, d and the subset part."""
    path = job / LOG_FILE
    if not path.is_file():
        raise DataError(f"{job} has no {LOG_FILE}: train it with train.regimes_every > 0")
    rows = read_rows(path)
    if not rows:
        raise DataError(f"{path} is empty")
    return {
        "n": int(rows[0]["n"]),
        "d": int(rows[0]["d"]),
        "part": rows[0].get("part"),
        "steps": np.array([r["step"] for r in rows], dtype=np.float64),
        "f": np.array([r["memorised_fraction"] for r in rows]),
        "f_se": np.array([r.get("memorised_se", 0.0) for r in rows]),
        "heldout": np.array([r.get("heldout_loss", np.nan) for r in rows], dtype=np.float64),
    }


def summarise_run(job: Path, level: float = MEM_LEVEL, margin: float = GEN_MARGIN) -> dict[str, Any]:
    """One CSV row: n, d, τ_mem, τ_gen and the final f_mem of the run in ``job``."""
    c = run_curves(job)
    held = c["heldout"]
    return {
        "job": job.name,
        "n": c["n"],
        "d": c["d"],
        "part": c["part"],
        "steps": len(c["steps"]),
        "final_step": int(c["steps"][-1]),
        "final_memorised_fraction": float(c["f"][-1]),
        "final_memorised_se": float(c["f_se"][-1]),
        "tau_mem": first_reach(c["steps"], c["f"], level),
        "tau_gen": tau_gen(c["steps"], held, margin),
        "best_heldout_loss": float(np.nanmin(held)) if np.isfinite(held).any() else None,
    }


def find_runs(root: Path) -> list[Path]:
    """Every folder below ``root`` (itself included) that holds a ``regimes.jsonl``, sorted."""
    return sorted(p.parent for p in Path(root).rglob(LOG_FILE))


def collect(
    root: Path,
    out_dir: Path | None = None,
    level: float = MEM_LEVEL,
    margin: float = GEN_MARGIN,
    plots: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Collect every run below ``root`` into ``law.csv``, ``law.json`` and the plots (in ``out_dir``, default ``root``).

    Args:
        root: the study folder.
        out_dir: where to write (default ``root``).
        level: f_mem that marks τ_mem.
        margin: relative held-out-loss margin that marks τ_gen.
        plots: write the PNG plots.
        command: the command line that made the study, kept in ``law.json`` (docs render from it).
    """
    root = Path(root)
    out_dir = Path(out_dir or root)
    jobs = find_runs(root)
    if not jobs:
        raise DataError(f"no {LOG_FILE} below {root}: nothing to collect")
    rows = [summarise_run(j, level, margin) for j in jobs]
    rows.sort(key=lambda r: (r["d"], r["n"], str(r["part"])))
    fits: dict[str, Any] = {}
    for d in sorted({r["d"] for r in rows}):
        sub = [r for r in rows if r["d"] == d]
        n = [r["n"] for r in sub]
        fits[str(d)] = {"tau_mem": fit_power_law(n, [r["tau_mem"] for r in sub]), "tau_gen": fit_power_law(n, [r["tau_gen"] for r in sub])}
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "law.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    result = {"command": command, "level": level, "margin": margin, "runs": rows, "fits": fits}
    (out_dir / "law.json").write_text(json.dumps(result, indent=2))
    if plots:
        from ddpm.regimes.plots import law_plots

        result["plots"] = [p.name for p in law_plots({j.name: run_curves(j) for j in jobs}, rows, fits, level, out_dir)]
        (out_dir / "law.json").write_text(json.dumps(result, indent=2))
    return result
