"""Figures of a ``ddpm-regimes`` run (matplotlib, Agg backend). Every time axis is OU time t."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ddpm.checkpoint import atomic_write  # noqa: E402
from ddpm.schedules import NoiseSchedule  # noqa: E402


def _write(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` as an image atomically (a failed write leaves any earlier file whole) and close it."""
    path = Path(path)
    try:
        atomic_write(path, lambda f: fig.savefig(f, format=path.suffix.lstrip(".") or "png", dpi=110))
    finally:
        plt.close(fig)
    return path


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    return _write(fig, path)


def _step_axis(ax: plt.Axes, schedule: NoiseSchedule) -> None:
    """A secondary x axis with the schedule step k of the times on the main axis."""
    ts = schedule.ou_times.numpy()
    ks = np.arange(len(ts))

    def t2k(t):
        return np.interp(t, ts, ks)

    def k2t(k):
        return np.interp(k, ks, ts)

    sec = ax.secondary_xaxis("top", functions=(t2k, k2t))
    sec.set_xlabel(f"step k ({schedule.T}-step schedule)")


def regime_bar(path: Path, t_c: float | None, t_s: float | None, schedule: NoiseSchedule, title: str) -> Path:
    """Memorisation [0, t_C], generalisation [t_C, t_S], noise [t_S, t_end] on one bar, in t and k."""
    t_end = float(schedule.ou_times[-1])
    fig, ax = plt.subplots(figsize=(8, 2.8))
    tc = min(t_c, t_end) if t_c is not None else 0.0
    ts = min(t_s, t_end) if t_s is not None else tc
    segs = [(0.0, tc, "#d62728", "memorisation"), (tc, max(ts, tc), "#2ca02c", "generalisation"), (max(ts, tc), t_end, "#7f7f7f", "noise")]
    for lo, hi, color, name in segs:
        if hi > lo:
            ax.barh(0, hi - lo, left=lo, color=color, alpha=0.8, label=f"{name} [{lo:.3f}, {hi:.3f}]")
    if t_c is not None and t_s is not None and t_c >= t_s:
        ax.text(t_end / 2, 0, "t_C >= t_S: no generalisation regime", ha="center", va="center", color="white", weight="bold")
    ax.set_xlim(0, t_end)
    ax.set_yticks([])
    ax.set_xlabel("OU time t (generation runs right to left)")
    _step_axis(ax, schedule)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.6), ncol=3, fontsize=8, frameon=False)
    ax.set_title(title, fontsize=9, pad=8)
    fig.subplots_adjust(left=0.04, right=0.97, top=0.62, bottom=0.42)
    return _write(fig, path)


def collapse_curves(
    path: Path, curves: dict[str, np.ndarray], alpha: float, theory: dict[str, np.ndarray], t_c: float | None, t_c_theory: float | None
) -> Path:
    """f/α, p_½ and E[Σ w²] against t, with the Gaussian theory of f/α where available."""
    t = curves["t"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.errorbar(t, curves["f"] / alpha, yerr=curves["f_se"] / alpha, fmt=".-", ms=3, label="f(t)/α  (excess entropy)")
    ax.errorbar(t, curves["p_half"], yerr=curves["p_half_se"], fmt=".-", ms=3, label="p_½(t) = P(w_μ0 > ½)")
    ax.errorbar(t, curves["sum_w2"], yerr=curves["sum_w2_se"], fmt=".-", ms=3, label="E[Σ_μ w_μ²]")
    for name, y in theory.items():
        ax.plot(t, np.clip(y, 0, None) / alpha, "--", label=name)
    if t_c is not None:
        ax.axvline(t_c, color="k", lw=1, label=f"t_C (p_½ = ½) = {t_c:.3f}")
    if t_c_theory is not None:
        ax.axvline(t_c_theory, color="k", ls=":", lw=1, label=f"t_C theory = {t_c_theory:.3f}")
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.set_xscale("log")
    ax.set_ylim(-0.05, 1.1)
    ax.set_xlabel("OU time t")
    ax.legend(fontsize=7)
    ax.set_title("collapse: exact empirical score, forward-noised training points", fontsize=9)
    return _save(fig, path)


def speciation_curves(path: Path, curves: dict[str, np.ndarray], t_s: float | None, extra: dict[str, Any]) -> Path:
    """φ̃ (posterior identity and cloning) against t, with t_S = ½ log Λ."""
    fig, ax = plt.subplots(figsize=(7, 4))
    if "posterior_t" in curves:
        ax.errorbar(
            curves["posterior_t"],
            curves["posterior_phi_tilde"],
            yerr=curves["posterior_phi_tilde_se"],
            fmt=".-",
            ms=3,
            label="φ̃ from E[Σ_c π_c²] (exact score)",
        )
    if "clone_t" in curves:
        y = curves.get("clone_phi_tilde", curves["clone_phi"])
        se = curves.get("clone_phi_tilde_se", curves["clone_phi_se"])
        ax.errorbar(curves["clone_t"], y, yerr=se, fmt="o", ms=4, label="φ̃ cloning experiment")
    if "theory_phi_tilde" in curves:
        ax.plot(curves["theory_t"], curves["theory_phi_tilde"], "--", label="φ̃ two-class closed form")
    if t_s is not None:
        ax.axvline(t_s, color="k", lw=1, label=f"t_S = ½ log Λ = {t_s:.3f}")
    if extra.get("t_S_clone") is not None:
        ax.axvline(extra["t_S_clone"], color="tab:blue", ls=":", lw=1, label=f"φ̃ = ½ at t = {extra['t_S_clone']:.3f}")
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.set_xscale("log")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("OU time t")
    ax.set_ylabel("normalised clone agreement φ̃")
    ax.legend(fontsize=7)
    ax.set_title("speciation: do two clones split at t end in the same class?", fontsize=9)
    return _save(fig, path)


def spectrum_plot(path: Path, eigs: np.ndarray, top: int = 50) -> Path:
    """Top covariance eigenvalues with their times ½ log λ_k."""
    k = min(top, len(eigs))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.semilogy(np.arange(1, k + 1), eigs[:k], ".-")
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.set_xlabel("eigenvalue index")
    ax.set_ylabel("λ_k (t_k = ½ log λ_k)")
    ax.set_title(f"covariance spectrum: Λ = {eigs[0]:.3f}, t_S = {0.5 * np.log(max(eigs[0], 1.0)):.3f}", fontsize=9)
    return _save(fig, path)


def tracking_hist(path: Path, runs: dict[str, np.ndarray], t_c: float | None) -> Path:
    """Histogram of the per-trajectory collapse times of the copying trajectories (NaN: no copy, left out)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    runs = {name: v[np.isfinite(v)] for name, v in runs.items()}
    allt = np.concatenate([v for v in runs.values()] + [np.array([1e-3])])
    bins = np.geomspace(max(allt.min(), 1e-4), max(allt.max(), 1e-3) * 1.01, 30)
    for name, v in runs.items():
        ax.hist(np.clip(v, bins[0], None), bins=bins, alpha=0.6, label=f"{name} ({len(v)} copies)")
    if t_c is not None:
        ax.axvline(t_c, color="k", lw=1, label=f"exact t_C (p_½) = {t_c:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("largest t at which the copied image's exact posterior weight is >= ½")
    ax.set_ylabel("trajectories")
    ax.legend(fontsize=7)
    return _save(fig, path)


def gap_plot(path: Path, train: dict[str, np.ndarray], held: dict[str, np.ndarray] | None, t_c: float | None, t_s: float | None) -> Path:
    """E|ε_θ - ε*|² / E|ε*|² against t on training and held-out points."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.errorbar(train["t"], train["gap"], yerr=train["gap_se"], fmt=".-", label="noised training points")
    if held is not None:
        ax.errorbar(held["t"], held["gap"], yerr=held["gap_se"], fmt=".-", label="noised held-out points")
    for v, name in ((t_c, "t_C"), (t_s, "t_S")):
        if v is not None:
            ax.axvline(v, color="k", ls=":" if name == "t_C" else "-", lw=1, label=f"{name} = {v:.3f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("OU time t")
    ax.set_ylabel("E|ε_θ - ε*|² / E|ε*|²")
    ax.legend(fontsize=7)
    ax.set_title("trained network vs exact empirical score", fontsize=9)
    return _save(fig, path)


def law_plots(
    curves: dict[str, dict[str, Any]], rows: list[dict[str, Any]], fits: dict[str, Any], level: float, out_dir: Path
) -> list[Path]:
    """The memorisation law's figures: f_mem against steps and against steps / n (one curve per n and d),
    and τ_mem, τ_gen against n on log–log axes with the fitted exponents.

    Args:
        curves: per run, the :func:`ddpm.regimes.law.run_curves` record.
        rows: the collector's rows (n, d, tau_mem, tau_gen).
        fits: per d, the power-law fits of τ_mem and τ_gen.
        level: the f_mem level that marks τ_mem.
        out_dir: where the PNGs go.
    """
    ds = sorted({c["d"] for c in curves.values()})
    ns = sorted({c["n"] for c in curves.values()})
    cmap = plt.get_cmap("viridis")
    colour = {n: cmap(i / max(1, len(ns) - 1)) for i, n in enumerate(ns)}
    style = {d: ("-", "--", ":", "-.")[i % 4] for i, d in enumerate(ds)}
    paths = []
    for name, scale in (("law_fmem_vs_steps.png", False), ("law_fmem_vs_steps_over_n.png", True)):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for c in sorted(curves.values(), key=lambda c: (c["d"], c["n"])):
            x = c["steps"] / c["n"] if scale else c["steps"]
            part = "" if c.get("part") is None else f", part {c['part']}"
            ax.errorbar(
                x,
                c["f"],
                yerr=c["f_se"],
                ls=style[c["d"]],
                color=colour[c["n"]],
                marker=".",
                ms=3,
                capsize=0,
                label=f"n={c['n']}, d={c['d']}{part}",
            )
        ax.axhline(level, color="grey", lw=0.8, ls=":", label=f"τ_mem level f={level:g}")
        ax.set_xscale("log")
        ax.set_xlabel("training steps / n" if scale else "training steps")
        ax.set_ylabel("memorised fraction f_mem")
        ax.set_title("f_mem against steps / n: the curves coincide if τ_mem ∝ n" if scale else "f_mem against training steps")
        ax.legend(fontsize=6, ncol=2)
        paths.append(_save(fig, out_dir / name))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for d in ds:
        for key, marker, label in (("tau_mem", "o", "τ_mem"), ("tau_gen", "s", "τ_gen")):
            pts = [(r["n"], r[key]) for r in rows if r["d"] == d and r[key] is not None]
            if not pts:
                continue
            n, tau = np.array(pts, dtype=float).T
            fit = fits[str(d)][key]
            text = ""
            if fit["exponent"] is not None:
                ci = fit["interval95"]
                text = f": b = {fit['exponent']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
                nn = np.geomspace(n.min(), n.max(), 50)
                ax.plot(nn, fit["prefactor"] * nn ** fit["exponent"], ls=style[d], color="C0" if key == "tau_mem" else "C1", lw=0.8)
            ax.plot(n, tau, marker, ls="none", color="C0" if key == "tau_mem" else "C1", label=f"{label}, d={d}{text}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training set size n")
    ax.set_ylabel("training steps")
    ax.set_title("τ ∝ n^b (95% interval of b)")
    ax.legend(fontsize=7)
    paths.append(_save(fig, out_dir / "law_tau_vs_n.png"))
    return paths


def halves_plots(results: list[dict[str, Any]], out_dir: Path, pairs: int = 8) -> list[Path]:
    """The disjoint-halves figures: paired-sample similarity, f_mem and nearest-image distance against N,
    and example pairs (network 0 over network 1, same seed), one row per N, small N on top.

    Args:
        results: per N, the :func:`ddpm.regimes.halves.sample_pair` record (sorted by N).
        out_dir: where the PNGs go.
        pairs: example pairs per row.
    """
    n = np.array([r["n"] for r in results])
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    axes[0].errorbar(n, [r["cosine_mean"] for r in results], yerr=[r["cosine_se"] for r in results], fmt="o-", label="cosine similarity")
    axes[0].plot(n, [r["l2_normalised_mean"] for r in results], "s--", label="normalised L2 distance")
    axes[0].set_title("paired samples (same seed)")
    for part, marker in ((0, "o-"), (1, "s--")):
        axes[1].errorbar(
            n, [r[f"f_mem_{part}"] for r in results], yerr=[r[f"f_mem_{part}_se"] for r in results], fmt=marker, label=f"network {part}"
        )
        axes[2].plot(n, [r[f"nn_rms_{part}"] for r in results], marker, label=f"network {part}: own set")
    axes[2].plot(n, [r["cross_nn_rms_0"] for r in results], "^:", label="network 0: the other set")
    axes[1].set_title("memorised fraction f_mem")
    axes[2].set_title("distance to the nearest training image (RMS/pixel)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("N (images per network)")
        ax.legend(fontsize=7)
    paths = [_save(fig, out_dir / "halves_vs_n.png")]
    k = min(pairs, min(len(r["samples_0"]) for r in results))
    fig, axes = plt.subplots(len(results), 1, figsize=(1.0 * k + 0.8, 2.1 * len(results)), squeeze=False)
    for ax, r in zip(axes[:, 0], results, strict=True):
        top = torch_to_rows(r["samples_0"][:k], r["samples_1"][:k])
        ax.imshow(top, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_yticks([])
        ax.set_xticks([])
        ax.set_ylabel(f"N={r['n']}\ncos {r['cosine_mean']:.2f}", fontsize=8)
    axes[0, 0].set_title("network 0 (top) and network 1 (bottom) from the same noise")
    paths.append(_save(fig, out_dir / "halves_pairs.png"))
    return paths


def torch_to_rows(a: Any, b: Any) -> np.ndarray:
    """Two rows of grey images in [-1, 1] (k, 1, H, W) as one [0, 1] array with 1-pixel gaps."""
    rows = []
    for x in (a, b):
        tiles = [np.pad((t[0].numpy() + 1) / 2, 1, constant_values=1.0) for t in x]
        rows.append(np.concatenate(tiles, 1))
    return np.clip(np.concatenate(rows, 0), 0, 1)


def hierarchy_curves(path: Path, curves: dict[str, np.ndarray], levels: list[dict[str, Any]], title: str) -> Path:
    """Per level ℓ: the clone agreement φ_ℓ(t) (left) and its conditional normalisation φ̃_ℓ (right),
    posterior identity as lines, cloning as points, with the theory marker t_S^ℓ = ½ log Λ_ℓ."""
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4))
    for i, lv in enumerate(levels):
        level, c = lv["level"], f"C{i}"
        name = f"level {level} ({lv['clusters']} clusters)"
        if "posterior_t" in curves:
            ax0.plot(curves["posterior_t"], curves["posterior_phi"][level], "-", color=c, lw=1.2, label=f"{name}: E[Σ π²]")
            ax1.plot(curves["posterior_t"], curves["posterior_phi_tilde"][level - 1], "-", color=c, lw=1.2, label=name)
        if "clone_t" in curves:
            ax0.errorbar(curves["clone_t"], curves["clone_phi"][level], yerr=curves["clone_phi_se"][level], fmt="o", ms=3, color=c)
            ax1.errorbar(
                curves["clone_t"],
                curves["clone_phi_tilde"][level - 1],
                yerr=curves["clone_phi_tilde_se"][level - 1],
                fmt="o",
                ms=3,
                color=c,
            )
        for ax in (ax0, ax1):
            ax.axvline(lv["t_S_theory"], color=c, ls="--", lw=1)
        if curves.get(f"theory_phi_tilde_{level}") is not None:
            ax1.plot(curves["theory_t"], curves[f"theory_phi_tilde_{level}"], ":", color=c, lw=1)
    ax1.axhline(0.5, color="grey", lw=0.5)
    for ax in (ax0, ax1):
        ax.set_xscale("log")
        ax.set_xlabel("OU time t (dashed: ½ log Λ_ℓ)")
        ax.set_ylim(-0.05, 1.05)
    ax0.set_ylabel("φ_ℓ: clones end in the same level-ℓ cluster")
    ax1.set_ylabel("φ̃_ℓ = (φ_ℓ/φ_{ℓ-1} - B_ℓ)/(1 - B_ℓ)")
    ax0.legend(fontsize=7)
    ax1.legend(
        fontsize=7,
        title="lines: posterior identity, points: cloning" + (", dotted: two-class closed form" if "theory_t" in curves else ""),
        title_fontsize=7,
    )
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def potential_plot(path: Path, curves: dict[str, np.ndarray], rec: dict[str, Any], title: str) -> Path:
    """The family V_t(q) - V_t(0) over t (left; dashed: the closed form) and the midpoint curvature
    V_t''(0) against t (right) with its sign change and t_S."""
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4))
    times, q, V = curves["times"], curves["q"], curves["V"]
    mid = len(q) // 2
    cmap = plt.get_cmap("viridis")
    t_star = rec.get("potential_t_curvature")
    for i, t in enumerate(times):
        c = cmap(i / max(len(times) - 1, 1))
        well = "" if t_star is None else (" (two wells)" if t < t_star else " (one well)")
        ax0.plot(q, V[i] - V[i, mid], color=c, lw=1.3, label=f"t = {t:.3f}{well}")
        if "V_closed_form" in curves:
            vc = curves["V_closed_form"][i]
            ax0.plot(q, vc - vc[mid], "--", color=c, lw=0.8)
    span = V - V[:, mid : mid + 1]
    ax0.set_ylim(min(-0.5, float(np.nanmin(span)) - 0.5), max(3.0, float(np.nanpercentile(span, 60))))
    ax0.set_xlabel("q along the axis between the class means (x space)")
    ax0.set_ylabel("V_t(q) - V_t(0)")
    ax0.legend(fontsize=7)
    ct, cv = curves["curv_t"], curves["curv"]
    ax1.plot(ct, cv, "-", label="V_t''(0), data")
    if "curv_closed_form" in curves:
        ax1.plot(ct, curves["curv_closed_form"], "--", label="closed form (two Gaussians)")
    ax1.axhline(0, color="grey", lw=0.5)
    if t_star is not None:
        ax1.axvline(t_star, color="tab:red", lw=1, label=f"sign change t* = {t_star:.3f}")
    if rec.get("potential_t_S_two_class"):
        ax1.axvline(rec["potential_t_S_two_class"], color="k", ls=":", lw=1, label=f"t_S = ½ log Λ = {rec['potential_t_S_two_class']:.3f}")
    ax1.set_xscale("log")
    ax1.set_yscale("symlog", linthresh=1.0)
    ax1.set_xlabel("OU time t")
    ax1.set_ylabel("curvature at the midpoint")
    ax1.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def linear_plot(path: Path, dist: dict[str, np.ndarray], t_c: float | None, t_s: float | None, title: str) -> Path:
    """The three ε-distances of ``regimes=trained`` against t: network to exact score, network to
    the Gaussian surrogate, exact score to the Gaussian surrogate."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    labels = {
        "net_exact": "network vs exact score: E|ε_θ - ε*|²/E|ε*|²",
        "net_gauss": "network vs Gaussian: E|ε_θ - ε_G|²/E|ε_G|²",
        "exact_gauss": "exact score vs Gaussian: E|ε* - ε_G|²/E|ε_G|²",
    }
    for name, label in labels.items():
        if name in dist:
            ax.plot(dist["t"], np.maximum(dist[name], 1e-12), ".-", label=label)
    for v, name in ((t_c, "t_C"), (t_s, "t_S")):
        if v is not None:
            ax.axvline(v, color="k", ls=":" if name == "t_C" else "-", lw=1, label=f"{name} = {v:.3f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("OU time t (noised training points)")
    ax.set_ylabel("relative ε-distance")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)
