"""Typed schema of ``conf/regimes.yaml`` (the ``ddpm-regimes`` command) and its range checks."""

# ruff: noqa: UP045  (OmegaConf structured configs need typing.Optional, not X | None)

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from ddpm.config import (
    MAX_DATASET_N,
    DatasetConfig,
    MemorisationConfig,
    PathsConfig,
    RuntimeConfig,
    ScheduleConfig,
    _check,
    check_dataset,
    check_memorisation,
    check_schedule,
    checks_runtime,
)
from ddpm.schedules import NoiseSchedule

SYNTHETIC = ("gaussian", "gaussian_spectrum", "mixture", "hierarchical")
ANALYSES = ("spectrum", "speciation", "collapse", "tracking", "trained", "hierarchy", "potential")
# A synthetic hierarchy holds branching^depth leaves (one Gaussian cluster each).
MAX_LEAVES = 4096
LINKAGES = ("ward", "average", "complete", "single", "centroid", "median", "weighted")
POTENTIAL_KINDS = ("marginal", "section")
# Latest OU time of the collapse grid: beyond it the data's weight e^{-t} in x_t (< 5e-18) is below
# float64's resolution next to the noise, so every later grid point is pure noise.
MAX_OU_TIME = 40.0
# Synthetic points are drawn in float64 in memory (n x d values): 2^30 of them take 8 GiB.
MAX_SYNTHETIC_VALUES = 2**30


@dataclass
class SyntheticConfig:
    """A synthetic law (the ``synthetic`` group), used instead of the ``dataset`` images when chosen."""

    name: str = MISSING  # gaussian, gaussian_spectrum, mixture, hierarchical
    d: int = 64  # dimension
    sigma2: float = 1.0  # gaussian: variance; gaussian_spectrum: mean eigenvalue
    power: float = 1.0  # gaussian_spectrum: λ_i ∝ i^-power
    classes: int = 2  # mixture: number of Gaussian classes
    mu: float = 1.0  # mixture: μ̃, class means have |m|² = d μ̃²
    sigma: float = 1.0  # mixture: class standard deviation
    depth: int = 3  # hierarchical: levels of the tree below its root
    branching: int = 2  # hierarchical: children per node
    separation: list[float] = field(default_factory=lambda: [2.0, 0.7, 0.3])  # hierarchical: μ̃_ℓ per level, |child - parent|² = d μ̃_ℓ²


@dataclass
class PointsConfig:
    """How many training points and how they are drawn, for images and synthetic laws alike."""

    n: Optional[int] = None  # training points: synthetic draws, or a seeded subset of the images (null: all images)
    seed: int = 0  # draws of synthetic data and of image subsets
    downsample: int = 1  # images: average-pool factor (MNIST 28 -> 14 -> 7)


@dataclass
class AnalysesConfig:
    name: str = "all"
    analyses: list[str] = field(default_factory=lambda: ["spectrum", "speciation", "collapse", "tracking"])


@dataclass
class KernelConfig:
    dtype: str = "float32"  # float32 or float64 (very small t)
    chunk_size: int = 4096  # training points per streamed chunk (the device is runtime.device)


@dataclass
class CollapseConfig:
    t_min: float = 0.01
    t_max: float = 3.0
    points: int = 40  # log-spaced grid in t
    refine: int = 16  # extra points between the grid points bracketing the p_½ crossing
    queries: int = 1024  # forward-noised training points (common to all t)
    batch: int = 256  # queries per kernel call
    f_threshold: float = 0.05  # secondary estimate: first t where f/α exceeds this


@dataclass
class SpeciationConfig:
    t_min: float = 0.02
    t_max: Optional[float] = None  # null: the schedule's last time
    points: int = 40
    queries: int = 1024  # class-posterior identity: forward-noised points
    batch: int = 256
    clone_traj: int = 128  # cloning experiment: trajectories (0 disables it)
    clone_points: int = 8  # branch times (log-spaced between t_min and t_max)
    clone_steps: int = 100  # sampler steps over the whole schedule
    clone_n: Optional[int] = 10000  # training points for the exact score in the cloning runs (null: all)


@dataclass
class TrackingConfig:
    samples: int = 64  # backward trajectories with the exact score
    steps: int = 200  # sampler steps over the whole schedule


@dataclass
class TrainedConfig:
    samples: int = 64  # trajectories sampled with the network
    steps: int = 100  # sampler steps
    gap_points: int = 12  # times of the ε_θ vs ε* gap curve
    gap_queries: int = 128  # noised training (and held-out) points per time
    use_ema: bool = True


@dataclass
class HierarchyConfig:
    """``regimes=hierarchy`` on labelled images: the classes grouped by a dendrogram of their means
    (the cloning sizes and the time grid are the ``speciation`` keys)."""

    cuts: list[int] = field(default_factory=lambda: [2, 4])  # super-classes of each coarser level (increasing)
    linkage: str = "ward"  # scipy.cluster.hierarchy.linkage method


@dataclass
class PotentialConfig:
    """``regimes=potential``: V_t(q) = -log p_t along the axis joining two classes' means."""

    classes: list[int] = field(default_factory=lambda: [0, 1])  # the two classes (labels of the data)
    kind: str = "marginal"  # marginal: density of the projection on the axis; section: p_t on the line itself
    curves: int = 7  # times of the plotted family, log-spaced from 0.4 t* to 2 t* (t*: the curvature's sign change, else t_S)
    grid: int = 201  # points along the axis


@dataclass
class RegimesConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)  # the images (the training config's group)
    synthetic: Optional[SyntheticConfig] = None  # a synthetic law instead of the images (synthetic=<name>)
    points: PointsConfig = field(default_factory=PointsConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    regimes: AnalysesConfig = field(default_factory=AnalysesConfig)
    kernel: KernelConfig = field(default_factory=KernelConfig)
    collapse: CollapseConfig = field(default_factory=CollapseConfig)
    speciation: SpeciationConfig = field(default_factory=SpeciationConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    trained: TrainedConfig = field(default_factory=TrainedConfig)
    hierarchy: HierarchyConfig = field(default_factory=HierarchyConfig)
    potential: PotentialConfig = field(default_factory=PotentialConfig)
    memorisation: MemorisationConfig = field(default_factory=MemorisationConfig)  # the copy criterion (as ddpm-evaluate)
    paths: PathsConfig = field(default_factory=PathsConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    ckpt: Optional[str] = None  # trained checkpoint (file or training run dir): its schedule and dataset are used
    seed: int = 0
    plots: bool = True
    eigenvalues: int = 8  # top eigenvalues (and their times) reported


@checks_runtime
def validate_regimes(cfg: Any) -> None:
    """Range checks of a composed regimes config; raises :class:`ConfigError`.

    Args:
        cfg: the composed ``regimes`` config.
    """
    _check(
        cfg.runtime.precision == "fp32",
        f"ddpm-regimes computes in kernel.dtype: runtime.precision must be fp32, got {cfg.runtime.precision!r}",
    )
    p, d = cfg.points, cfg.synthetic
    if d is not None:
        _check(d.name in SYNTHETIC, f"synthetic.name must be one of {', '.join(SYNTHETIC)}, got {d.name!r}")
        # the memorisation ratio compares each end point's nearest and second-nearest training point
        _check(p.n is not None and p.n >= 2, f"points.n must be >= 2 for synthetic data, got {p.n}")
        _check(d.d >= 1, f"synthetic.d must be >= 1, got {d.d}")
        _check(
            p.n * d.d <= MAX_SYNTHETIC_VALUES,
            f"points.n x synthetic.d = {p.n} x {d.d} values exceed the {MAX_SYNTHETIC_VALUES} (8 GiB of float64) "
            "that synthetic data may hold in memory",
        )
        _check(d.sigma2 > 0 and d.sigma > 0, f"synthetic.sigma2 and synthetic.sigma must be > 0, got {d.sigma2}, {d.sigma}")
        for key in ("sigma2", "sigma", "power", "mu"):
            _check(math.isfinite(d[key]), f"synthetic.{key} must be finite, got {d[key]}")
        _check(d.classes >= 2, f"synthetic.classes must be >= 2, got {d.classes}")
        _check_hierarchical(d)
    else:
        _check(p.n is None or 2 <= p.n <= MAX_DATASET_N, f"points.n must be >= 2 and <= {MAX_DATASET_N} or null (all images), got {p.n}")
        _check(p.downsample >= 1, f"points.downsample must be >= 1, got {p.downsample}")
        check_dataset(cfg.dataset, "dataset")
    check_schedule(cfg.schedule)
    for a in cfg.regimes.analyses:
        _check(a in ANALYSES, f"unknown analysis {a!r} in regimes.analyses; choose from {', '.join(ANALYSES)}")
    _check(len(cfg.regimes.analyses) > 0, f"regimes.analyses is empty; choose from {', '.join(ANALYSES)}")
    _check("trained" not in cfg.regimes.analyses or cfg.ckpt, "the trained analysis needs a checkpoint: ckpt=/path/to/last.pt")
    _check(cfg.kernel.dtype in ("float32", "float64"), f"kernel.dtype must be float32 or float64, got {cfg.kernel.dtype!r}")
    _check(cfg.kernel.chunk_size >= 1, f"kernel.chunk_size must be >= 1, got {cfg.kernel.chunk_size}")
    c = cfg.collapse
    _check(0 < c.t_min < c.t_max < math.inf, f"collapse needs 0 < t_min < t_max < inf, got {c.t_min}, {c.t_max}")
    _check(
        c.t_max <= MAX_OU_TIME,
        f"collapse.t_max must be <= {MAX_OU_TIME:g} (beyond it x_t holds under 5e-18 of the data: pure noise), got {c.t_max}",
    )
    _check(
        c.points >= 3 and c.queries >= 1 and c.batch >= 1 and c.refine >= 0, "collapse.points >= 3, queries >= 1, batch >= 1, refine >= 0"
    )
    _check(0 < c.f_threshold < math.inf, f"collapse.f_threshold must be a finite number > 0, got {c.f_threshold}")
    s = cfg.speciation
    _check(math.isfinite(s.t_min), f"speciation.t_min must be finite, got {s.t_min}")
    _check(s.batch >= 1, f"speciation.batch must be >= 1, got {s.batch}")
    _check(s.clone_n is None or s.clone_n >= 1, f"speciation.clone_n must be >= 1 or null (all points), got {s.clone_n}")
    _check(
        s.t_min > 0 and (s.t_max is None or s.t_min < s.t_max < math.inf),
        f"speciation needs 0 < t_min < t_max < inf, got {s.t_min}, {s.t_max}",
    )
    _check(
        s.points >= 3 and s.queries >= 1 and s.clone_traj >= 0 and s.clone_points >= 1 and s.clone_steps >= 2,
        "speciation: points >= 3, queries >= 1, clone_traj >= 0, clone_points >= 1, clone_steps >= 2",
    )
    _check(cfg.tracking.samples >= 1 and cfg.tracking.steps >= 2, "tracking.samples >= 1 and tracking.steps >= 2")
    t = cfg.trained
    _check(
        t.samples >= 1 and t.steps >= 2 and t.gap_points >= 1 and t.gap_queries >= 1,
        "trained: samples >= 1, steps >= 2, gap_points >= 1, gap_queries >= 1",
    )
    _check(cfg.eigenvalues >= 0, f"eigenvalues must be >= 0, got {cfg.eigenvalues}")
    _check_hierarchy(cfg)
    _check_potential(cfg)
    check_memorisation(cfg.memorisation)
    if not cfg.ckpt:  # with a checkpoint, its schedule counts: run_regimes checks the times once it loads
        check_times(cfg, NoiseSchedule.from_config(cfg.schedule), "schedule")


def _check_hierarchical(d: Any) -> None:
    """The tree of ``synthetic=hierarchical`` (its keys exist, with defaults, under every synthetic law)."""
    _check(d.depth >= 1, f"synthetic.depth must be >= 1 (levels below the root), got {d.depth}")
    _check(d.branching >= 2, f"synthetic.branching must be >= 2 (children per node), got {d.branching}")
    _check(
        d.depth <= 64 and d.branching**d.depth <= MAX_LEAVES,
        f"synthetic.branching^depth = {d.branching}^{d.depth} leaves exceed {MAX_LEAVES}",
    )
    _check(d.branching <= d.d, f"synthetic.branching={d.branching} needs as many dimensions, got synthetic.d={d.d}")
    sep = list(d.separation)
    _check(len(sep) == d.depth, f"synthetic.separation needs one value per level (synthetic.depth={d.depth}), got {sep}")
    for i, s in enumerate(sep):
        _check(math.isfinite(s), f"synthetic.separation[{i}] must be finite, got {s}")
        _check(
            s > 0,
            f"synthetic.separation[{i}] = {s}: the centres of level {i + 1} must lie apart from their parents "
            f"(> 0), else Λ_{i + 1} = 0 and that level never separates",
        )


def _check_hierarchy(cfg: Any) -> None:
    h = cfg.hierarchy
    cuts = list(h.cuts)
    _check(len(cuts) >= 1, "hierarchy.cuts must list at least one number of super-classes (e.g. [2, 4])")
    _check(
        all(c >= 2 for c in cuts) and cuts == sorted(set(cuts)),
        f"hierarchy.cuts must increase strictly, each >= 2 super-classes, got {cuts}",
    )
    _check(h.linkage in LINKAGES, f"hierarchy.linkage must be one of {', '.join(LINKAGES)}, got {h.linkage!r}")
    if "hierarchy" in cfg.regimes.analyses and cfg.synthetic is None and cfg.dataset.get("num_classes"):
        k = int(cfg.dataset.num_classes)
        _check(cuts[-1] < k, f"hierarchy.cuts must lie below the {k} classes of {cfg.dataset.name}, got {cuts}")
    if "hierarchy" in cfg.regimes.analyses and cfg.synthetic is not None:
        _check(
            cfg.synthetic.name == "hierarchical",
            f"regimes=hierarchy needs synthetic=hierarchical or labelled images, got synthetic={cfg.synthetic.name}",
        )


def _check_potential(cfg: Any) -> None:
    p = cfg.potential
    classes = list(p.classes)
    _check(
        len(classes) == 2 and classes[0] != classes[1] and min(classes) >= 0,
        f"potential.classes must name two different classes (labels >= 0), got {classes}",
    )
    _check(p.kind in POTENTIAL_KINDS, f"potential.kind must be one of {', '.join(POTENTIAL_KINDS)}, got {p.kind!r}")
    _check(1 <= p.curves <= 64, f"potential.curves must lie in 1..64, got {p.curves}")
    _check(3 <= p.grid <= 100_000, f"potential.grid must lie in 3..100000, got {p.grid}")
    if "potential" not in cfg.regimes.analyses:
        return
    s = cfg.synthetic
    if s is not None:
        _check(
            s.name in ("mixture", "hierarchical"), f"regimes=potential needs two classes: synthetic=mixture or hierarchical, got {s.name}"
        )
        k = int(s.classes) if s.name == "mixture" else int(s.branching) ** int(s.depth)
        _check(max(classes) < k, f"potential.classes {classes}: synthetic={s.name} has classes 0..{k - 1}")
    elif cfg.dataset.get("num_classes"):
        k = int(cfg.dataset.num_classes)
        _check(max(classes) < k, f"potential.classes {classes}: {cfg.dataset.name} has classes 0..{k - 1}")


def check_times(cfg: Any, schedule: NoiseSchedule, source: str) -> None:
    """The speciation grid against the schedule it runs on: its cloning runs branch at schedule steps,
    so a time beyond the schedule's last one has no step (the grid's default end is that time).

    Args:
        cfg: the composed ``regimes`` config.
        schedule: the schedule the analyses use (``cfg.schedule`` or the checkpoint's).
        source: where it comes from, for the message (``schedule`` or the checkpoint's path).
    """
    if "speciation" not in cfg.regimes.analyses and "hierarchy" not in cfg.regimes.analyses:
        return
    s, T = cfg.speciation, schedule.T
    t_end = float(schedule.ou_times[-1])
    where = f"the last time of {source} (t_{T - 1}={t_end:.4g}, T={T})"
    _check(s.t_min < t_end, f"speciation.t_min must lie below {where}, got {s.t_min}")
    _check(s.t_max is None or s.t_max <= t_end, f"speciation.t_max must be <= {where} or null (that time), got {s.t_max}")
