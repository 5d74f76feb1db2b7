"""The collapse study: a ``ddpm-train`` multirun over n (and d), ``ddpm-regimes regimes=trained`` on
its checkpoints, merged into one table and three plots (``scripts/collect_sweep.py --collapse``).

Layout read: ``<sweep>/<job>/`` is a training job (``.hydra/config.yaml``, ``checkpoints/``) and
``<sweep>/<job>/regimes/<name>/regimes.json`` the ``ddpm-regimes`` record of one of its checkpoints.
One row per record:

- ``n``, ``d``, ``image_size``, ``ckpt_step``: the training subset, its dimension and the step;
- ``memorised_fraction`` (± ``memorised_se``, bootstrap): network samples that copy a training
  image under the copy criterion (``memorisation.threshold``);
- ``t_C_network``: the collapse time of the network's copying trajectories (the largest time at which
  half of them give the image they end on an exact posterior weight >= ½; :mod:`ddpm.regimes.tracking`),
  empty when the network copies nothing; ``t_C_network_q25`` / ``_q75``: quartiles of the
  per-trajectory times;
- ``t_C_exact``: the exact empirical score's collapse time (p_½ = ½);
- ``t_C_theory``: ½ log(1 + σ²/(n^{2/d} − 1)) with σ² the mean eigenvalue of the data covariance;
- ``t_C_spectral``: its spectral form, Σ_i log(1 + λ_i/(e^{2t} − 1)) = 2 log n;
- ``t_S``, the ε-gaps at the smallest time, and where the record lies;
- the linear model's ε-distances (:mod:`ddpm.regimes.linear`): network and exact score to the
  Gaussian surrogate at the smallest time (``eps_net_gauss_small_t``, ``eps_exact_gauss_small_t``),
  and all three at the gap time nearest t_S (``eps_net_exact_t_S``, ``eps_net_gauss_t_S``, ``eps_exact_gauss_t_S``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

COLUMNS = (
    "job",
    "n",
    "d",
    "image_size",
    "ckpt_step",
    "memorised_fraction",
    "memorised_se",
    "nn_ratio_median",
    "t_C_network",
    "t_C_network_q25",
    "t_C_network_q75",
    "t_C_exact",
    "t_C_theory",
    "t_C_spectral",
    "t_S",
    "gap_train_small_t",
    "gap_heldout_small_t",
    "eps_net_gauss_small_t",
    "eps_exact_gauss_small_t",
    "eps_net_exact_t_S",
    "eps_net_gauss_t_S",
    "eps_exact_gauss_t_S",
    "record",
)


def training_jobs(sweep: Path) -> list[Path]:
    """Training job folders under ``sweep`` (a ``checkpoints/`` folder and the run's ``config.yaml``), numeric names in order."""
    jobs = [p.parent for p in sweep.rglob("checkpoints") if p.is_dir() and _config_file(p.parent) is not None]
    return sorted(jobs, key=lambda p: (int(p.name) if p.name.isdigit() else math.inf, str(p)))


def _config_file(job: Path) -> Path | None:
    """The training config of a job: Hydra's record, or the ``config.yaml`` ``ddpm-train`` writes."""
    for path in (job / ".hydra" / "config.yaml", job / "config.yaml"):
        if path.is_file():
            return path
    return None


def collapse_rows(sweep: Path) -> tuple[list[dict[str, Any]], list[Path]]:
    """One row per ``regimes.json`` under the training jobs of ``sweep`` (sorted by d, n, step),
    and the jobs that have none yet."""
    rows, missing = [], []
    for job in training_jobs(sweep):
        cfg = OmegaConf.load(_config_file(job))
        records = sorted((job / "regimes").glob("*/regimes.json"))
        if not records:
            missing.append(job)
        for path in records:
            r = json.loads(path.read_text())
            q = r.get("network_t_C_trajectory_quartiles") or [None, None]
            rows.append(
                {
                    "job": str(job.relative_to(sweep)),
                    "n": int(r["n"]),
                    "d": int(r["d"]),
                    "image_size": int(OmegaConf.select(cfg, "dataset.image_size")),
                    "ckpt_step": r.get("ckpt_step"),
                    "memorised_fraction": r.get("network_memorised_fraction"),
                    "memorised_se": r.get("network_memorised_se"),
                    "nn_ratio_median": r.get("network_nn_ratio_median"),
                    "t_C_network": r.get("network_t_C"),
                    "t_C_network_q25": q[0],
                    "t_C_network_q75": q[1],
                    "t_C_exact": r.get("t_C"),
                    "t_C_theory": r.get("t_C_gauss_iso"),
                    "t_C_spectral": r.get("t_C_gauss_spectral"),
                    "t_S": r.get("t_S"),
                    "gap_train_small_t": r.get("gap_train_small_t"),
                    "gap_heldout_small_t": r.get("gap_heldout_small_t"),
                    # the linear model (ddpm.regimes.linear): ε-distances to the Gaussian surrogate, and all three near t_S
                    "eps_net_gauss_small_t": r.get("eps_net_gauss_small_t"),
                    "eps_exact_gauss_small_t": r.get("eps_exact_gauss_small_t"),
                    "eps_net_exact_t_S": r.get("eps_net_exact_t_S"),
                    "eps_net_gauss_t_S": r.get("eps_net_gauss_t_S"),
                    "eps_exact_gauss_t_S": r.get("eps_exact_gauss_t_S"),
                    "record": str(path.relative_to(sweep)),
                }
            )
    rows.sort(key=lambda r: (r["d"], r["n"], r["ckpt_step"] or 0))
    return rows, missing


def last_checkpoints(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per training job, the row of its latest checkpoint."""
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["job"] not in best or (r["ckpt_step"] or 0) > (best[r["job"]]["ckpt_step"] or 0):
            best[r["job"]] = r
    return sorted(best.values(), key=lambda r: (r["d"], r["n"]))


def plot_study(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """``collapse_memorised_vs_n.png``, ``collapse_memorised_vs_steps.png`` and ``collapse_times_vs_n.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    final = last_checkpoints(rows)
    dims = sorted({r["d"] for r in rows})
    paths = []

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for d in dims:
        pts = [r for r in final if r["d"] == d]
        ax.errorbar(
            [r["n"] for r in pts], [r["memorised_fraction"] for r in pts], [r["memorised_se"] or 0 for r in pts], fmt="o-", label=f"d={d}"
        )
    ax.set(xscale="log", xlabel="training images n", ylabel="memorised fraction", ylim=(-0.05, 1.05), title="last checkpoint of each job")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir / "collapse_memorised_vs_n.png"))

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for job in sorted({r["job"] for r in rows}, key=lambda j: next((r["d"], r["n"]) for r in rows if r["job"] == j)):
        pts = sorted((r for r in rows if r["job"] == job), key=lambda r: r["ckpt_step"] or 0)
        ax.plot([r["ckpt_step"] for r in pts], [r["memorised_fraction"] for r in pts], "o-", label=f"n={pts[0]['n']}, d={pts[0]['d']}")
    ax.set(xlabel="training step", ylabel="memorised fraction", ylim=(-0.05, 1.05))
    ax.legend(fontsize=7)
    paths.append(_save(fig, out_dir / "collapse_memorised_vs_steps.png"))

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for j, d in enumerate(dims):
        pts = [r for r in final if r["d"] == d]
        n = [r["n"] for r in pts]
        c = f"C{j}"
        # a network that copies nothing has no collapse time: those n have no point
        net = [r for r in pts if r["t_C_network"] is not None]
        lo = [max(0.0, r["t_C_network"] - (r["t_C_network_q25"] or r["t_C_network"])) for r in net]
        hi = [max(0.0, (r["t_C_network_q75"] or r["t_C_network"]) - r["t_C_network"]) for r in net]
        if net:
            ax.errorbar(
                [r["n"] for r in net],
                [r["t_C_network"] for r in net],
                [lo, hi],
                fmt="o-",
                color=c,
                label=f"network t_C (trajectory quartiles), d={d}",
            )
        ax.plot(n, [_nan(r["t_C_exact"]) for r in pts], "s--", color=c, label=f"exact score t_C, d={d}")
        ax.plot(n, [r["t_C_theory"] for r in pts], "x:", color=c, label="½ log(1 + σ²/(n^{2/d} − 1))")
        ax.plot(n, [r["t_C_spectral"] for r in pts], "+-.", color=c, alpha=0.6, label="spectral form")
    ax.set(xscale="log", yscale="log", xlabel="training images n", ylabel="collapse time t (OU)")
    ax.legend(fontsize=6)
    paths.append(_save(fig, out_dir / "collapse_times_vs_n.png"))
    return paths


def _nan(v: Any) -> float:
    return math.nan if v is None else float(v)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
