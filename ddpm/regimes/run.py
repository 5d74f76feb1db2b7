"""The work of ``ddpm-regimes``: speciation and collapse times of diffusion, measured and against theory.

Writes into its run dir ``regimes.json`` (every time in OU time t and as the step k of the
schedule; top-level ``t_C``, ``t_C_theory``, ``t_S``, ``Lambda``, ``k_C``, ``k_S``),
``curves.npz`` and PNG plots (see docs/regimes.md), each atomically; an earlier run's outputs in
the same run dir are kept unless ``overwrite=true``. :func:`run_regimes` runs one named step per
analysis over a shared :class:`Run`.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from ddpm.checkpoint import atomic_write
from ddpm.errors import ConfigError
from ddpm.paths import resolve_data_root
from ddpm.pretrained import Pretrained, network
from ddpm.regimes import plots, theory
from ddpm.regimes.collapse import measure_collapse
from ddpm.regimes.config import OUTPUTS, check_times, validate_regimes
from ddpm.regimes.data import Points, data_source, load_points
from ddpm.regimes.seeds import generator
from ddpm.regimes.speciation import measure_speciation
from ddpm.regimes.spectrum import analyse_spectrum
from ddpm.regimes.tracking import exact_eps_fn, measure_trajectories
from ddpm.runlock import check_outputs
from ddpm.runtime import setup_runtime
from ddpm.schedules import NoiseSchedule
from ddpm.score import ExactScore, GaussianScore

log = logging.getLogger("ddpm.regimes")

# The times of the record that also get their step k (under "times").
TIMES = (
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


@dataclass
class Run:
    """What the analyses of one ``ddpm-regimes`` run share.

    Args:
        cfg: the composed ``regimes`` config.
        run_dir: where the outputs go.
        device: where the kernels run.
        schedule: the discrete schedule (the checkpoint's, with ``ckpt``).
        data_cfg: the data source node (:func:`ddpm.regimes.data.data_source`).
        points: the training points.
        score: their exact score.
        pre: the trained checkpoint, or None.
        rec: the regimes.json record, filled step by step.
        curves: the arrays of curves.npz.
        theory_eigs: the covariance spectrum the Gaussian theory uses, once computed.
        collapse_runs: collapse times per trajectory, per ε function (tracking.png).
    """

    cfg: DictConfig
    run_dir: Path
    device: torch.device
    schedule: NoiseSchedule
    data_cfg: Any
    points: Points
    score: ExactScore
    pre: Pretrained | None = None
    rec: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    theory_eigs: np.ndarray | None = None
    collapse_runs: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return f"{self.data_cfg.name}: n={self.points.n}, d={self.points.d}"

    @property
    def t_end(self) -> float:
        return float(self.schedule.ou_times[-1])

    @property
    def plotting(self) -> bool:
        return bool(self.cfg.plots)


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


def open_points(cfg: DictConfig, device: torch.device) -> tuple[Pretrained | None, NoiseSchedule, Any, Points]:
    """The checkpoint (with ``ckpt``), the schedule, the data source and the points.

    Args:
        cfg: the composed ``regimes`` config.
        device: where the checkpoint's network goes.
    """
    pre = subset = None
    data_cfg = data_source(cfg)
    if cfg.ckpt:
        from ddpm.pretrained import load_pretrained

        pre = load_pretrained(cfg.ckpt, device, use_ema=bool(cfg.use_ema), channels_last=cfg.runtime.channels_last)
        schedule = pre.diffusion.schedule
        check_times(cfg, schedule, f"the schedule of {pre.path}")
        # The exact score must be that of the network's training set, at the network's resolution.
        with open_dict(data_cfg):
            data_cfg.dataset = pre.cfg.dataset
            data_cfg.name = str(pre.cfg.dataset.name)
            data_cfg.downsample = 1  # exactly the network's training set (a dataset.n given is checked against it below)
        subset = pre.data_subset
        log.info("checkpoint %s (step %d): using its schedule and dataset %s", cfg.ckpt, pre.step, data_cfg.name)
    else:
        schedule = NoiseSchedule.from_config(cfg.schedule)
    resolve_data_root(cfg, None if pre is None else OmegaConf.select(pre.cfg, "paths.data_dir"))
    # a run trained with flips saw every image and its mirror: the exact score and the copy criterion see both
    mirrored = pre is not None and bool(pre.cfg.dataset.get("hflip", False))
    points = load_points(data_cfg, cfg.paths.data_dir, cfg.paths.cache_dir, subset=subset, mirrored=mirrored)
    trained_on = points.n // 2 if mirrored else points.n  # the training images (the mirrors are points too)
    if pre is not None and cfg.dataset.get("n") is not None and int(cfg.dataset.n) != trained_on:
        raise ConfigError(
            f"dataset.n={cfg.dataset.n}, but {pre.path} was trained on {trained_on} images; "
            f"the exact score must be that of its training set: drop dataset.n or set dataset.n={trained_on}"
        )
    return pre, schedule, data_cfg, points


def base_record(run: Run) -> dict[str, Any]:
    """The record's data, schedule and run fields; every time still unset."""
    cfg, points, pre = run.cfg, run.points, run.pre
    schedule_name = str(cfg.schedule.name) if pre is None else str(pre.cfg.schedule.name)
    return {
        "data": run.data_cfg.name,
        "n": points.n,
        "d": points.d,
        "alpha": math.log(points.n) / points.d,
        "scaling": points.scaling,
        "source": points.source,
        "shape": list(points.shape),
        "schedule": {"name": schedule_name, "T": run.schedule.T, "t_end": run.t_end},
        "kernel_dtype": cfg.kernel.dtype,
        "analyses": list(cfg.regimes.analyses),
        "ckpt": cfg.ckpt,
        **dict.fromkeys(("t_C", "t_C_theory", "t_S", "Lambda", "k_C", "k_S")),
    }


def spectrum_step(run: Run) -> None:
    """Λ and t_S from the covariance spectrum; t_C of the Gaussian theory for the Gaussian laws."""
    rec, data_cfg, n = run.rec, run.data_cfg, run.points.n
    spec, ref_eigs, run.theory_eigs = analyse_spectrum(run.points, int(run.cfg.eigenvalues))
    rec.update(spec)
    run.curves["eigenvalues"] = ref_eigs
    if data_cfg.name == "gaussian":
        rec["t_C_theory"] = theory.collapse_time_isotropic(n, run.points.d, float(data_cfg.sigma2))
        rec["t_C_theory_formula"] = "½ log(1 + σ²/(n^{2/d} - 1))"
    elif data_cfg.name == "gaussian_spectrum":
        rec["t_C_theory"] = theory.collapse_time_spectral(n, run.theory_eigs)
        rec["t_C_theory_formula"] = "Σ_i log(1 + λ_i/(e^{2t} - 1)) = 2 log n"
    log.info(
        "Λ = %.4f -> t_S = %.4f (k = %s); Gaussian surrogates t_C: isotropic %.4f, spectral %.4f",
        rec["Lambda"],
        rec["t_S"],
        _step(run.schedule, rec["t_S"]),
        rec["t_C_gauss_iso"],
        rec["t_C_gauss_spectral"],
    )


def collapse_step(run: Run) -> None:
    """t_C from the exact score's posterior weights, beside the Gaussian theory's excess entropy."""
    c, rec, data_cfg = run.cfg.collapse, run.rec, run.data_cfg
    summary, cc = measure_collapse(run.score, c.t_min, c.t_max, c.points, c.refine, c.queries, c.batch, run.cfg.seed, c.f_threshold)
    rec.update(summary)
    run.curves.update({f"collapse_{k}": v for k, v in cc.items()})
    if run.theory_eigs is None:
        _, _, run.theory_eigs = analyse_spectrum(run.points, int(run.cfg.eigenvalues))
    name = "f/α Gaussian theory" if data_cfg.name in ("gaussian", "gaussian_spectrum") else "f/α Gaussian surrogate (data spectrum)"
    f_th = theory.excess_entropy(cc["t"], run.points.n, run.theory_eigs)
    run.curves["collapse_f_theory"] = f_th
    log.info("t_C (p_½ = ½) = %s; f/α > %.2f from t = %s", summary["t_C"], c.f_threshold, summary["t_C_f_threshold"])
    if run.plotting:
        plots.collapse_curves(run.run_dir / "collapse.png", cc, rec["alpha"], {name: f_th}, summary["t_C"], rec["t_C_theory"])


def clone_inputs(run: Run) -> tuple[Any, Any, np.ndarray | None]:
    """The cloning experiment's ε function, classifier and class frequencies (on ``speciation.clone_n``
    of the points); Nones when the points have no labels or no cloning is asked for."""
    s, points, cfg = run.cfg.speciation, run.points, run.cfg
    if points.labels is None or s.clone_traj <= 0:
        return None, None, None
    sub = points
    if s.clone_n is not None and s.clone_n < points.n:
        keep = torch.randperm(points.n, generator=generator(cfg.seed, "clone-subset"))[: int(s.clone_n)]
        sub = Points(points.x[keep], points.labels[keep], points.shape, points.scaling)
    score = run.score if sub is points else ExactScore(sub.x, sub.labels, cfg.kernel.dtype, cfg.kernel.chunk_size, run.device)
    run.rec["clone_n"] = sub.n
    return exact_eps_fn(score), _classifier(score, sub), np.bincount(sub.labels.numpy(), minlength=run.score.num_classes) / sub.n


def speciation_step(run: Run) -> None:
    """φ̃ from the class posterior and from cloning, against the two-class closed form for two classes."""
    s, rec, data_cfg, d = run.cfg.speciation, run.rec, run.data_cfg, run.points.d
    clone_eps, classify, class_probs = clone_inputs(run)
    summary, sc = measure_speciation(run.score, run.schedule, s, run.cfg.seed, clone_eps, classify, class_probs, d)
    rec.update(summary)
    run.curves.update({f"speciation_{k}": v for k, v in sc.items()})
    plot_curves = dict(sc)
    if data_cfg.name == "mixture" and int(data_cfg.classes) == 2:
        tt = np.geomspace(s.t_min, s.t_max or run.t_end, 200)
        phi = theory.clone_probability_two_class(tt, d, float(data_cfg.mu), float(data_cfg.sigma))
        plot_curves.update({"theory_t": tt, "theory_phi_tilde": 2 * phi - 1})
        rec["phi_two_class_at_t_S"] = float(theory.clone_probability_two_class(rec["t_S"], d, float(data_cfg.mu), float(data_cfg.sigma)))
    if run.points.labels is None:
        rec["speciation_note"] = "unlabelled data: t_S from the spectrum only (no classes to clone against)"
    log.info("speciation: t_S = %.4f; φ̃ = ½ at t = %s", rec["t_S"], summary.get("t_S_clone"))
    if run.plotting and plot_curves:
        plots.speciation_curves(run.run_dir / "speciation.png", plot_curves, rec["t_S"], summary)


def hierarchy_step(run: Run) -> None:
    """One speciation time per level of the data's tree of clusters."""
    from ddpm.regimes.hierarchy import run_hierarchy

    summary, hc = run_hierarchy(run.cfg, run.data_cfg, run.points, run.score, run.schedule, run.device)
    run.rec.update(summary)
    run.curves.update({f"hierarchy_{k}": v for k, v in hc.items()})
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
    if run.plotting:
        plots.hierarchy_curves(run.run_dir / "hierarchy.png", hc, summary["hierarchy_levels"], run.title)


def potential_step(run: Run) -> None:
    """The potential V_t along the axis of two classes and its midpoint curvature's sign change."""
    from ddpm.regimes.potential import measure_potential

    cfg, points, data_cfg = run.cfg, run.points, run.data_cfg
    closed = None
    if data_cfg.name == "mixture":  # two Gaussian classes of the law: the closed form
        m = points.class_means[list(cfg.potential.classes)]
        closed = (float((m[1] - m[0]).norm()) / 2, float(data_cfg.sigma))
    summary, pc = measure_potential(points.x, points.labels, cfg.potential, data_cfg.name, cfg.speciation.t_min, run.t_end, closed)
    run.rec.update(summary)
    run.curves.update({f"potential_{k}": v for k, v in pc.items()})
    log.info(
        "potential along classes %s (%s): V_t''(0) changes sign at t = %s; two-class t_S = ½ log Λ = %.4f",
        summary["potential_classes"],
        summary["potential_kind"],
        summary["potential_t_curvature"],
        summary["potential_t_S_two_class"],
    )
    if run.plotting:
        c0, c1 = summary["potential_classes"]
        title = f"{data_cfg.name}: classes {c0} and {c1}, {summary['potential_kind']} along their axis"
        plots.potential_plot(run.run_dir / "potential.png", pc, summary, title)


def _clip(run: Run) -> bool:
    return run.points.scaling.startswith("[-1, 1]")  # images: x̂_0 clamped as ddpm-sample does


def tracking_step(run: Run) -> None:
    """Trajectories of the exact score: the collapse time of each."""
    cfg = run.cfg
    threshold = float(cfg.memorisation.threshold)
    eps = exact_eps_fn(run.score)
    summary, tc = measure_trajectories(
        eps, run.score, run.points.x, run.schedule, cfg.tracking.samples, cfg.tracking.steps, cfg.seed, threshold, "exact", _clip(run)
    )
    run.rec.update(summary)
    run.collapse_runs["exact score"] = tc["collapse_t"]
    run.curves.update({"tracking_t": tc["t"], "tracking_exact_collapse_t": tc["collapse_t"]})


def trained_step(run: Run) -> None:
    """The network's trajectories, its ε-gap to the exact score and the ε-distances of the linear model."""
    from ddpm.regimes.linear import eps_distances, summarise_distances
    from ddpm.regimes.trained import eps_gap, gap_steps, network_eps_fn, summarise_gap

    cfg, pre, rec, t, x = run.cfg, run.pre, run.rec, run.cfg.trained, run.points.x
    threshold = float(cfg.memorisation.threshold)
    net = network_eps_fn(pre, run.device, network(pre, cfg.runtime))
    summary, tc = measure_trajectories(net, run.score, x, run.schedule, t.samples, t.steps, cfg.seed + 1, threshold, "network", _clip(run))
    rec.update(summary)
    rec.update({"memorisation_threshold": threshold, "ckpt_step": pre.step})
    run.collapse_runs["network"] = tc["collapse_t"]
    run.curves.update({"network_collapse_t": tc["collapse_t"], "network_nn_ratio": tc["ratio"]})
    steps = gap_steps(pre, t.gap_points)
    g_train = eps_gap(net, run.score, pre, x, steps, t.gap_queries, cfg.seed)
    held = None
    try:
        held_pts = load_points(run.data_cfg, cfg.paths.data_dir, cfg.paths.cache_dir, split="test")
        held = eps_gap(net, run.score, pre, held_pts.x, steps, t.gap_queries, cfg.seed)
    except Exception as exc:  # a dataset without a held-out split still gets the training curve
        log.warning("no held-out points for the gap curve: %s", exc)
    rec.update(summarise_gap(g_train, held))
    run.curves.update({f"gap_train_{k}": v for k, v in g_train.items()})
    if held is not None:
        run.curves.update({f"gap_heldout_{k}": v for k, v in held.items()})
    if run.plotting:
        plots.gap_plot(run.run_dir / "gap.png", g_train, held, rec["t_C"], rec["t_S"])
    # the linear model: the network and the exact score against the Gaussian surrogate of the same points
    gauss = GaussianScore.from_points(x, run.device)
    dist = eps_distances(net, run.score, gauss, pre.diffusion.schedule, x, steps, t.gap_queries, cfg.seed)
    rec.update(summarise_distances(dist, rec["t_S"]))
    run.curves.update({f"eps_distance_{k}": v for k, v in dist.items()})
    if run.plotting:
        title = f"{pre.path.name} (step {pre.step}): n={run.points.n}, d={run.points.d}"
        plots.linear_plot(run.run_dir / "linear.png", dist, rec["t_C"], rec["t_S"], title)
    log.info(
        "network: memorised fraction %.3f, collapse time %s, gap %.3g (t=%.3g) .. %.3g (t=%.3g)",
        rec["network_memorised_fraction"],
        rec["network_t_C"],
        g_train["gap"][0],
        g_train["t"][0],
        g_train["gap"][-1],
        g_train["t"][-1],
    )


# Each analysis's step, in the order they run (the trained network's plots use t_C and t_S).
STEPS = {
    "spectrum": spectrum_step,
    "collapse": collapse_step,
    "speciation": speciation_step,
    "hierarchy": hierarchy_step,
    "potential": potential_step,
    "tracking": tracking_step,
    "trained": trained_step,
}


def summarise(run: Run) -> None:
    """The steps of t_C and t_S, every time with its step, the regimes bar and the spectrum plot."""
    rec, schedule = run.rec, run.schedule
    if run.collapse_runs and run.plotting:
        plots.tracking_hist(run.run_dir / "tracking.png", run.collapse_runs, rec["t_C"])
    rec["k_C"], rec["k_S"] = _step(schedule, rec["t_C"]), _step(schedule, rec["t_S"])
    rec["times"] = {name: _time_entry(schedule, rec.get(name)) for name in TIMES if name in rec}
    rec["no_generalisation_regime"] = bool(rec["t_C"] is not None and rec["t_S"] is not None and rec["t_C"] >= rec["t_S"])
    if run.plotting and (rec["t_C"] is not None or rec["t_S"] is not None):
        plots.regime_bar(run.run_dir / "regimes.png", rec["t_C"], rec["t_S"], schedule, f"{run.title}, α={rec['alpha']:.3f}")
    if run.plotting and "eigenvalues" in run.curves:
        plots.spectrum_plot(run.run_dir / "spectrum.png", run.curves["eigenvalues"])


def write_outputs(run: Run) -> None:
    """regimes.json and curves.npz, each written atomically."""
    text = json.dumps(run.rec, indent=2, default=_json_default, ensure_ascii=False)
    atomic_write(run.run_dir / "regimes.json", lambda f: f.write(text.encode("utf-8")))
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in run.curves.items()})
    atomic_write(run.run_dir / "curves.npz", lambda f: f.write(buf.getvalue()))


def run_regimes(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run the analyses of ``cfg.regimes.analyses`` into ``run_dir``; returns the regimes.json record.

    Args:
        cfg: the composed ``regimes`` config.
        run_dir: the run dir; an earlier run's outputs there are replaced only with ``overwrite=true``.
    """
    validate_regimes(cfg)
    run_dir = Path(run_dir)
    check_outputs(run_dir, OUTPUTS, bool(cfg.overwrite))
    run_dir.mkdir(parents=True, exist_ok=True)
    device = setup_runtime(cfg.runtime).device
    log.info("torch threads: %d", torch.get_num_threads())
    started = time.time()
    pre, schedule, data_cfg, points = open_points(cfg, device)
    log.info(
        "data %s: n=%d, d=%d, α=log(n)/d=%.4f, scaling %s", data_cfg.name, points.n, points.d, math.log(points.n) / points.d, points.scaling
    )
    score = ExactScore(points.x, points.labels, cfg.kernel.dtype, cfg.kernel.chunk_size, device)
    run = Run(cfg, run_dir, device, schedule, data_cfg, points, score, pre)
    run.rec = base_record(run)
    wanted = set(cfg.regimes.analyses) | ({"spectrum"} if "speciation" in cfg.regimes.analyses else set())  # t_S is Λ's
    for name, step in STEPS.items():
        if name in wanted:
            step(run)
    summarise(run)
    run.rec["seconds"] = round(time.time() - started, 2)
    run.rec["config"] = OmegaConf.to_container(cfg, resolve=True)
    write_outputs(run)
    rec = run.rec
    log.info("t_S = %s (k %s), t_C = %s (k %s) -> %s", rec["t_S"], rec["k_S"], rec["t_C"], rec["k_C"], run_dir / "regimes.json")
    return rec
