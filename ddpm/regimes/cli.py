"""``ddpm-regimes``: speciation and collapse times of diffusion, measured and against theory.

Writes into its run dir ``regimes.json`` (every time in OU time t and as the step k of the
schedule; top-level ``t_C``, ``t_C_theory``, ``t_S``, ``Lambda``, ``k_C``, ``k_S``),
``curves.npz`` and PNG plots. See docs/regimes.md.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from ddpm.cli import hydra_main
from ddpm.errors import ConfigError
from ddpm.pretrained import network
from ddpm.regimes import plots, theory
from ddpm.regimes.collapse import measure_collapse
from ddpm.regimes.config import SYNTHETIC, check_times, validate_regimes
from ddpm.regimes.data import Points, data_source, load_points
from ddpm.regimes.seeds import generator
from ddpm.regimes.speciation import measure_speciation
from ddpm.regimes.spectrum import analyse_spectrum
from ddpm.regimes.tracking import exact_eps_fn, measure_trajectories
from ddpm.runtime import setup_runtime
from ddpm.schedules import NoiseSchedule
from ddpm.score import ExactScore

log = logging.getLogger("ddpm.regimes")


def _step(schedule: NoiseSchedule, t: float | None) -> int | None:
    return None if t is None else int(schedule.time_to_step(float(t)))


def _time_entry(schedule: NoiseSchedule, t: float | None) -> dict[str, Any]:
    """A time with its step and whether it lies beyond the schedule's last time."""
    if t is None:
        return {"t": None, "k": None}
    return {"t": float(t), "k": _step(schedule, t), "beyond_schedule": bool(t > float(schedule.ou_times[-1]))}


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _classifier(score: ExactScore, points: Points):
    """Class of a final sample = label of its nearest training point."""

    def classify(x: torch.Tensor) -> torch.Tensor:
        return points.labels[score.nearest(x, k=1)[1][:, 0].cpu()]

    return classify


def run_regimes(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run the analyses of ``cfg.regimes.analyses`` into ``run_dir``; returns the regimes.json record."""
    validate_regimes(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rt = setup_runtime(cfg.runtime)
    device = rt.device
    log.info("torch threads: %d", torch.get_num_threads())
    analyses = list(cfg.regimes.analyses)
    started = time.time()

    pre = None
    subset = None
    data_cfg = data_source(cfg)
    if cfg.ckpt:
        from ddpm.pretrained import load_pretrained

        pre = load_pretrained(cfg.ckpt, device, use_ema=cfg.trained.use_ema, channels_last=cfg.runtime.channels_last)
        schedule = pre.diffusion.schedule
        check_times(cfg, schedule, f"the schedule of {pre.path}")
        # The exact score must be that of the network's training set, at the network's resolution.
        with open_dict(data_cfg):
            data_cfg.dataset = pre.cfg.dataset
            data_cfg.name = str(pre.cfg.dataset.name)
            data_cfg.downsample = 1
            data_cfg.n = None  # exactly the network's training set (checked against points.n below)
        subset = pre.data_subset
        log.info("checkpoint %s (step %d): using its schedule and dataset %s", cfg.ckpt, pre.step, data_cfg.name)
    else:
        schedule = NoiseSchedule.from_config(cfg.schedule)
    # a run trained with flips saw every image and its mirror: the exact score and the copy criterion see both
    mirrored = pre is not None and bool(pre.cfg.dataset.get("hflip", False))
    points = load_points(data_cfg, cfg.paths.data_dir, cfg.paths.cache_dir, subset=subset, mirrored=mirrored)
    if pre is not None and cfg.points.n is not None and int(cfg.points.n) != points.n:
        raise ConfigError(
            f"points.n={cfg.points.n}, but {pre.path} was trained on {points.n} images (dataset.n); "
            f"the exact score must be that of its training set: drop points.n or set points.n={points.n}"
        )
    n, d = points.n, points.d
    alpha = math.log(n) / d
    log.info("data %s: n=%d, d=%d, α=log(n)/d=%.4f, scaling %s", data_cfg.name, n, d, alpha, points.scaling)
    score = ExactScore(points.x, points.labels, cfg.kernel.dtype, cfg.kernel.chunk_size, device)

    t_end = float(schedule.ou_times[-1])
    rec: dict[str, Any] = {
        "data": data_cfg.name,
        "n": n,
        "d": d,
        "alpha": alpha,
        "scaling": points.scaling,
        "source": points.source,
        "shape": list(points.shape),
        "schedule": {"name": str(cfg.schedule.name) if pre is None else str(pre.cfg.schedule.name), "T": schedule.T, "t_end": t_end},
        "kernel_dtype": cfg.kernel.dtype,
        "analyses": analyses,
        "ckpt": cfg.ckpt,
        "t_C": None,
        "t_C_theory": None,
        "t_S": None,
        "Lambda": None,
        "k_C": None,
        "k_S": None,
    }
    curves: dict[str, np.ndarray] = {}
    theory_eigs = None

    if "spectrum" in analyses or "speciation" in analyses:
        spec, ref_eigs, theory_eigs = analyse_spectrum(points, int(cfg.eigenvalues))
        rec.update(spec)
        curves["eigenvalues"] = ref_eigs
        if data_cfg.name == "gaussian":
            rec["t_C_theory"] = theory.collapse_time_isotropic(n, d, float(data_cfg.sigma2))
            rec["t_C_theory_formula"] = "½ log(1 + σ²/(n^{2/d} - 1))"
        elif data_cfg.name == "gaussian_spectrum":
            rec["t_C_theory"] = theory.collapse_time_spectral(n, theory_eigs)
            rec["t_C_theory_formula"] = "Σ_i log(1 + λ_i/(e^{2t} - 1)) = 2 log n"
        log.info(
            "Λ = %.4f -> t_S = %.4f (k = %s); Gaussian surrogates t_C: isotropic %.4f, spectral %.4f",
            rec["Lambda"],
            rec["t_S"],
            _step(schedule, rec["t_S"]),
            rec["t_C_gauss_iso"],
            rec["t_C_gauss_spectral"],
        )

    if "collapse" in analyses:
        c = cfg.collapse
        summary, cc = measure_collapse(score, c.t_min, c.t_max, c.points, c.refine, c.queries, c.batch, cfg.seed, c.f_threshold)
        rec.update(summary)
        curves.update({f"collapse_{k}": v for k, v in cc.items()})
        if theory_eigs is None:
            _, _, theory_eigs = analyse_spectrum(points, int(cfg.eigenvalues))
        name = "f/α Gaussian theory" if data_cfg.name in ("gaussian", "gaussian_spectrum") else "f/α Gaussian surrogate (data spectrum)"
        f_th = theory.excess_entropy(cc["t"], n, theory_eigs)
        curves["collapse_f_theory"] = f_th
        log.info("t_C (p_½ = ½) = %s; f/α > %.2f from t = %s", summary["t_C"], c.f_threshold, summary["t_C_f_threshold"])
        if cfg.plots:
            plots.collapse_curves(run_dir / "collapse.png", cc, alpha, {name: f_th}, summary["t_C"], rec["t_C_theory"])

    if "speciation" in analyses:
        s = cfg.speciation
        clone_eps = classify = None
        class_probs = None
        if points.labels is not None and s.clone_traj > 0:
            sub = points
            if s.clone_n is not None and s.clone_n < n:
                keep = torch.randperm(n, generator=generator(cfg.seed, "clone-subset"))[: int(s.clone_n)]
                sub = Points(points.x[keep], points.labels[keep], points.shape, points.scaling)
            clone_score = score if sub is points else ExactScore(sub.x, sub.labels, cfg.kernel.dtype, cfg.kernel.chunk_size, device)
            clone_eps, classify = exact_eps_fn(clone_score), _classifier(clone_score, sub)
            class_probs = np.bincount(sub.labels.numpy(), minlength=score.num_classes) / sub.n
            rec["clone_n"] = sub.n
        summary, sc = measure_speciation(score, schedule, s, cfg.seed, clone_eps, classify, class_probs, d)
        rec.update(summary)
        curves.update({f"speciation_{k}": v for k, v in sc.items()})
        plot_curves = dict(sc)
        if data_cfg.name == "mixture" and int(data_cfg.classes) == 2:
            tt = np.geomspace(s.t_min, s.t_max or t_end, 200)
            phi = theory.clone_probability_two_class(tt, d, float(data_cfg.mu), float(data_cfg.sigma))
            plot_curves.update({"theory_t": tt, "theory_phi_tilde": 2 * phi - 1})
            rec["phi_two_class_at_t_S"] = float(
                theory.clone_probability_two_class(rec["t_S"], d, float(data_cfg.mu), float(data_cfg.sigma))
            )
        if points.labels is None:
            rec["speciation_note"] = "unlabelled data: t_S from the spectrum only (no classes to clone against)"
        log.info("speciation: t_S = %.4f; φ̃ = ½ at t = %s", rec["t_S"], summary.get("t_S_clone"))
        if cfg.plots and plot_curves:
            plots.speciation_curves(run_dir / "speciation.png", plot_curves, rec["t_S"], summary)

    if "hierarchy" in analyses:
        from ddpm.regimes.hierarchy import run_hierarchy

        summary, hc = run_hierarchy(cfg, data_cfg, points, score, schedule, device)
        rec.update(summary)
        curves.update({f"hierarchy_{k}": v for k, v in hc.items()})
        for lv in summary["hierarchy_levels"]:
            log.info(
                "level %d (%d clusters): Λ = %.4g, ½ log Λ = %.4f; φ̃ = ½ at t = %s (posterior), %s (cloning)",
                lv["level"],
                lv["clusters"],
                lv["Lambda"],
                lv["t_S_theory"],
                lv.get("t_S_posterior"),
                lv.get("t_S_clone"),
            )
        if cfg.plots:
            plots.hierarchy_curves(run_dir / "hierarchy.png", hc, summary["hierarchy_levels"], f"{data_cfg.name}: n={n}, d={d}")

    if "potential" in analyses:
        from ddpm.regimes.potential import measure_potential

        closed = None
        if data_cfg.name == "mixture":  # two Gaussian classes of the law: the closed form
            m = points.class_means[list(cfg.potential.classes)]
            closed = (float((m[1] - m[0]).norm()) / 2, float(data_cfg.sigma))
        summary, pc = measure_potential(points.x, points.labels, cfg.potential, data_cfg.name, cfg.speciation.t_min, t_end, closed)
        rec.update(summary)
        curves.update({f"potential_{k}": v for k, v in pc.items()})
        log.info(
            "potential along classes %s (%s): V_t''(0) changes sign at t = %s; two-class t_S = ½ log Λ = %.4f",
            summary["potential_classes"],
            summary["potential_kind"],
            summary["potential_t_curvature"],
            summary["potential_t_S_two_class"],
        )
        if cfg.plots:
            c0, c1 = summary["potential_classes"]
            plots.potential_plot(
                run_dir / "potential.png",
                pc,
                summary,
                f"{data_cfg.name}: classes {c0} and {c1}, {summary['potential_kind']} along their axis",
            )

    collapse_runs: dict[str, np.ndarray] = {}
    threshold = float(cfg.memorisation.threshold)
    clip = points.scaling.startswith("[-1, 1]")  # images: x̂_0 clamped as ddpm-sample does
    if "tracking" in analyses:
        summary, tc = measure_trajectories(
            exact_eps_fn(score), score, points.x, schedule, cfg.tracking.samples, cfg.tracking.steps, cfg.seed, threshold, "exact", clip
        )
        rec.update(summary)
        collapse_runs["exact score"] = tc["collapse_t"]
        curves.update({"tracking_t": tc["t"], "tracking_exact_collapse_t": tc["collapse_t"]})

    if "trained" in analyses:
        from ddpm.regimes.trained import eps_gap, gap_steps, network_eps_fn, summarise_gap

        t = cfg.trained
        net = network_eps_fn(pre, device, network(pre, cfg.runtime))
        summary, tc = measure_trajectories(net, score, points.x, schedule, t.samples, t.steps, cfg.seed + 1, threshold, "network", clip)
        rec.update(summary)
        rec.update({"memorisation_threshold": threshold, "ckpt_step": pre.step})
        collapse_runs["network"] = tc["collapse_t"]
        curves.update({"network_collapse_t": tc["collapse_t"], "network_nn_ratio": tc["ratio"]})
        steps = gap_steps(pre, t.gap_points)
        g_train = eps_gap(net, score, pre, points.x, steps, t.gap_queries, cfg.seed)
        held = None
        try:
            held_pts = load_points(data_cfg, cfg.paths.data_dir, cfg.paths.cache_dir, split="test")
            held = eps_gap(net, score, pre, held_pts.x, steps, t.gap_queries, cfg.seed)
        except Exception as exc:  # a dataset without a held-out split still gets the training curve
            log.warning("no held-out points for the gap curve: %s", exc)
        rec.update(summarise_gap(g_train, held))
        curves.update({f"gap_train_{k}": v for k, v in g_train.items()})
        if held is not None:
            curves.update({f"gap_heldout_{k}": v for k, v in held.items()})
        if cfg.plots:
            plots.gap_plot(run_dir / "gap.png", g_train, held, rec["t_C"], rec["t_S"])
        # the linear model: the network and the exact score against the Gaussian surrogate of the same points
        from ddpm.regimes.linear import GaussianScore, eps_distances, summarise_distances

        gauss = GaussianScore.from_points(points.x, device)
        dist = eps_distances(net, score, gauss, pre.diffusion.schedule, points.x, steps, t.gap_queries, cfg.seed)
        rec.update(summarise_distances(dist, rec["t_S"]))
        curves.update({f"eps_distance_{k}": v for k, v in dist.items()})
        if cfg.plots:
            plots.linear_plot(run_dir / "linear.png", dist, rec["t_C"], rec["t_S"], f"{pre.path.name} (step {pre.step}): n={n}, d={d}")
        log.info(
            "network: memorised fraction %.3f, collapse time %s, gap %.3g (t=%.3g) .. %.3g (t=%.3g)",
            rec["network_memorised_fraction"],
            rec["network_t_C"],
            g_train["gap"][0],
            g_train["t"][0],
            g_train["gap"][-1],
            g_train["t"][-1],
        )

    if collapse_runs and cfg.plots:
        plots.tracking_hist(run_dir / "tracking.png", collapse_runs, rec["t_C"])
    rec["k_C"], rec["k_S"] = _step(schedule, rec["t_C"]), _step(schedule, rec["t_S"])
    rec["times"] = {
        name: _time_entry(schedule, rec.get(name))
        for name in (
            "t_C",
            "t_C_theory",
            "t_C_f_threshold",
            "t_C_gauss_iso",
            "t_C_gauss_spectral",
            "t_S",
            "t_S_clone",
            "t_S_clone_simulated",
            "exact_t_C",
            "network_t_C",
        )
        if name in rec
    }
    rec["no_generalisation_regime"] = bool(rec["t_C"] is not None and rec["t_S"] is not None and rec["t_C"] >= rec["t_S"])
    if cfg.plots and (rec["t_C"] is not None or rec["t_S"] is not None):
        plots.regime_bar(run_dir / "regimes.png", rec["t_C"], rec["t_S"], schedule, f"{data_cfg.name}: n={n}, d={d}, α={alpha:.3f}")
    if cfg.plots and "eigenvalues" in curves:
        plots.spectrum_plot(run_dir / "spectrum.png", curves["eigenvalues"])
    rec["seconds"] = round(time.time() - started, 2)
    rec["config"] = OmegaConf.to_container(cfg, resolve=True)
    (run_dir / "regimes.json").write_text(json.dumps(rec, indent=2, default=_json_default, ensure_ascii=False))
    np.savez_compressed(run_dir / "curves.npz", **{k: np.asarray(v) for k, v in curves.items()})
    log.info("t_S = %s (k %s), t_C = %s (k %s) -> %s", rec["t_S"], rec["k_S"], rec["t_C"], rec["k_C"], run_dir / "regimes.json")
    return rec


@hydra_main(config_name="regimes")
def main(cfg: DictConfig, run_dir: Path) -> None:
    """Measure speciation and collapse times (see docs/regimes.md)."""
    run_regimes(cfg, run_dir)


if __name__ == "__main__":
    main()


__all__ = ["run_regimes", "main", "SYNTHETIC"]
