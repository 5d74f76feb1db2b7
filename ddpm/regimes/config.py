"""Typed schema of ``conf/regimes.yaml`` (the ``ddpm-regimes`` command), each field's rule beside it, and the rules that span several fields."""

# ruff: noqa: UP045  (OmegaConf structured configs need typing.Optional, not X | None)

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from ddpm.config import (
    DatasetConfig,
    MemorisationConfig,
    PathsConfig,
    RuntimeConfig,
    ScheduleConfig,
    _check,
    dataset_rules,
    rule,
    validates,
)
from ddpm.schedules import NoiseSchedule

SYNTHETIC = ("gaussian", "gaussian_spectrum", "mixture", "hierarchical")
ANALYSES = ("spectrum", "speciation", "collapse", "tracking", "trained", "hierarchy", "potential")
# What ddpm-regimes writes into its run dir (an earlier run's are kept unless overwrite=true).
PLOTS = ("regimes", "spectrum", "collapse", "speciation", "hierarchy", "potential", "tracking", "gap", "linear")
OUTPUTS = ("regimes.json", "curves.npz", *(f"{name}.png" for name in PLOTS))
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

    name: str = field(default=MISSING, metadata=rule(choices=SYNTHETIC))
    d: int = field(default=64, metadata=rule(ge=1))  # dimension
    sigma2: float = field(default=1.0, metadata=rule(gt=0.0, finite=True))  # gaussian: variance; gaussian_spectrum: mean eigenvalue
    power: float = field(default=1.0, metadata=rule(finite=True))  # gaussian_spectrum: λ_i ∝ i^-power
    classes: int = field(default=2, metadata=rule(ge=2))  # mixture: number of Gaussian classes
    mu: float = field(default=1.0, metadata=rule(finite=True))  # mixture: μ̃, class means have |m|² = d μ̃²
    sigma: float = field(default=1.0, metadata=rule(gt=0.0, finite=True))  # mixture: class standard deviation
    depth: int = field(default=3, metadata=rule(ge=1, note="(levels below the root)"))  # hierarchical: levels of the tree below its root
    branching: int = field(default=2, metadata=rule(ge=2, note="(children per node)"))  # hierarchical: children per node
    # hierarchical: μ̃_ℓ per level, |child - parent|² = d μ̃_ℓ² (0 would put a level's centres on their parents: Λ_ℓ = 0)
    separation: list[float] = field(
        default_factory=lambda: [2.0, 0.7, 0.3],
        metadata=rule(gt=0.0, finite=True, note="(a level whose centres sit on their parents has Λ_ℓ = 0 and never separates)"),
    )
    # training points drawn from the law (each conf/synthetic/<law>.yaml sets its own); the
    # memorisation ratio compares each end point's nearest and second-nearest training point
    n: int = field(default=1000, metadata=rule(ge=2, note="(the memorisation ratio needs two training points)"))
    seed: int = 0  # seed of the draws (and of the mixture means and hierarchical tree)


@dataclass
class PointsConfig:
    """How the images become points (the training subset is ``dataset.n``, the number of synthetic draws ``synthetic.n``)."""

    downsample: int = field(default=1, metadata=rule(ge=1))  # images: average-pool factor (MNIST 28 -> 14 -> 7)


@dataclass
class AnalysesConfig:
    name: str = "all"
    analyses: list[str] = field(
        default_factory=lambda: ["spectrum", "speciation", "collapse", "tracking"],
        metadata=rule(choices=ANALYSES, min_len=1, item="analysis"),
    )


@dataclass
class KernelConfig:
    dtype: str = field(default="float32", metadata=rule(choices=("float32", "float64")))  # float64: very small t
    chunk_size: int = field(default=4096, metadata=rule(ge=1))  # training points per streamed chunk (the device is runtime.device)


@dataclass
class CollapseConfig:
    t_min: float = field(default=0.01, metadata=rule(gt=0.0))  # below t_max
    t_max: float = field(default=3.0, metadata=rule(le=MAX_OU_TIME, note="(beyond it x_t holds under 5e-18 of the data: pure noise)"))
    points: int = field(default=40, metadata=rule(ge=3))  # log-spaced grid in t
    refine: int = field(default=16, metadata=rule(ge=0))  # extra points between the grid points bracketing the p_½ crossing
    queries: int = field(default=1024, metadata=rule(ge=1))  # forward-noised training points (common to all t)
    batch: int = field(default=256, metadata=rule(ge=1))  # queries per kernel call
    f_threshold: float = field(default=0.05, metadata=rule(gt=0.0, finite=True))  # secondary estimate: first t where f/α exceeds this


@dataclass
class SpeciationConfig:
    t_min: float = field(default=0.02, metadata=rule(gt=0.0, finite=True))  # below t_max and the schedule's last time
    t_max: Optional[float] = field(default=None, metadata=rule(gt=0.0, finite=True, optional=True))  # null: the schedule's last time
    points: int = field(default=40, metadata=rule(ge=3))
    queries: int = field(default=1024, metadata=rule(ge=1))  # class-posterior identity: forward-noised points
    batch: int = field(default=256, metadata=rule(ge=1))
    clone_traj: int = field(default=128, metadata=rule(ge=0))  # cloning experiment: trajectories (0 disables it)
    clone_points: int = field(default=8, metadata=rule(ge=1))  # branch times (log-spaced between t_min and t_max)
    clone_steps: int = field(default=100, metadata=rule(ge=2))  # sampler steps over the whole schedule
    # training points for the exact score in the cloning runs (null: all)
    clone_n: Optional[int] = field(default=10000, metadata=rule(ge=1, optional=True, note="(all points)"))


@dataclass
class TrackingConfig:
    samples: int = field(default=64, metadata=rule(ge=1))  # backward trajectories with the exact score
    steps: int = field(default=200, metadata=rule(ge=2))  # sampler steps over the whole schedule


@dataclass
class TrainedConfig:
    samples: int = field(default=64, metadata=rule(ge=1))  # trajectories sampled with the network
    steps: int = field(default=100, metadata=rule(ge=2))  # sampler steps
    gap_points: int = field(default=12, metadata=rule(ge=1))  # times of the ε_θ vs ε* gap curve
    gap_queries: int = field(default=128, metadata=rule(ge=1))  # noised training (and held-out) points per time


@dataclass
class HierarchyConfig:
    """``regimes=hierarchy`` on labelled images: the classes grouped by a dendrogram of their means
    (the cloning sizes and the time grid are the ``speciation`` keys)."""

    # super-classes of each coarser level (strictly increasing)
    cuts: list[int] = field(default_factory=lambda: [2, 4], metadata=rule(ge=2, min_len=1, note="(super-classes per level)"))
    linkage: str = field(default="ward", metadata=rule(choices=LINKAGES))  # scipy.cluster.hierarchy.linkage method


@dataclass
class PotentialConfig:
    """``regimes=potential``: V_t(q) = -log p_t along the axis joining two classes' means."""

    classes: list[int] = field(default_factory=lambda: [0, 1], metadata=rule(ge=0, length=2))  # two different labels of the data
    # marginal: density of the projection on the axis; section: p_t on the line itself
    kind: str = field(default="marginal", metadata=rule(choices=POTENTIAL_KINDS))
    # times of the plotted family, log-spaced from 0.4 t* to 2 t* (t*: the curvature's sign change, else t_S)
    curves: int = field(default=7, metadata=rule(ge=1, le=64))
    grid: int = field(default=201, metadata=rule(ge=3, le=100_000))  # points along the axis


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
    use_ema: bool = True  # the checkpoint's EMA weights (false: the raw ones)
    seed: int = 0
    plots: bool = True
    eigenvalues: int = field(default=8, metadata=rule(ge=0))  # top eigenvalues (and their times) reported
    overwrite: bool = False  # allow replacing the outputs of an earlier run in the same run dir


@validates(RegimesConfig)
def validate_regimes(cfg: Any) -> None:
    """Checks of a composed ``regimes`` config before any work: every field rule of
    :class:`RegimesConfig`, then the rules below that span several fields; raises :class:`ConfigError`.

    Args:
        cfg: the composed ``regimes`` config.
    """
    _check(  # the shared runtime group allows fp16 and bf16; this command does not
        cfg.runtime.precision == "fp32",
        f"ddpm-regimes computes in kernel.dtype: runtime.precision must be fp32, got {cfg.runtime.precision!r}",
    )
    d, n = cfg.synthetic, cfg.dataset.get("n")
    if d is not None:  # one name per concept: a law's draws are synthetic.n, never the images' dataset.n
        _check(
            n is None, f"dataset.n={n} is the image subset; synthetic={d.name} draws synthetic.n points (now {d.n}): set synthetic.n={n}"
        )
        _check(
            d.n * d.d <= MAX_SYNTHETIC_VALUES,
            f"synthetic.n x synthetic.d = {d.n} x {d.d} values exceed the {MAX_SYNTHETIC_VALUES} (8 GiB of float64) "
            "that synthetic data may hold in memory",
        )
        _hierarchical_rules(d)
    else:
        # dataset.n's own rule (DatasetConfig) bounds it by MAX_DATASET_N; the memorisation ratio
        # compares each end point's nearest and second-nearest training image
        _check(n is None or n >= 2, f"dataset.n must be >= 2 for ddpm-regimes (the memorisation ratio needs two images) or null, got {n}")
        dataset_rules(cfg.dataset, "dataset")
    _check("trained" not in cfg.regimes.analyses or cfg.ckpt, "the trained analysis needs a checkpoint: ckpt=/path/to/last.pt")
    c = cfg.collapse
    _check(c.t_min < c.t_max, f"collapse needs 0 < t_min < t_max < inf, got {c.t_min}, {c.t_max}")
    s = cfg.speciation
    _check(s.t_max is None or s.t_min < s.t_max, f"speciation needs 0 < t_min < t_max < inf, got {s.t_min}, {s.t_max}")
    _hierarchy_rules(cfg)
    _potential_rules(cfg)
    if not cfg.ckpt:  # with a checkpoint, its schedule counts: run_regimes checks the times once it loads
        check_times(cfg, NoiseSchedule.from_config(cfg.schedule), "schedule")


def _hierarchical_rules(d: Any) -> None:
    """The tree of ``synthetic=hierarchical`` against its size and dimension (its keys exist, with
    defaults, under every synthetic law)."""
    _check(
        d.depth <= 64 and d.branching**d.depth <= MAX_LEAVES,
        f"synthetic.branching^depth = {d.branching}^{d.depth} leaves exceed {MAX_LEAVES}",
    )
    _check(d.branching <= d.d, f"synthetic.branching={d.branching} needs as many dimensions, got synthetic.d={d.d}")
    sep = list(d.separation)
    _check(len(sep) == d.depth, f"synthetic.separation needs one value per level (synthetic.depth={d.depth}), got {sep}")


def _hierarchy_rules(cfg: Any) -> None:
    """``hierarchy.cuts`` in order, and against the classes of the images or the synthetic law."""
    cuts = list(cfg.hierarchy.cuts)
    _check(cuts == sorted(set(cuts)), f"hierarchy.cuts must increase strictly, got {cuts}")  # an order among the items, not a range
    if "hierarchy" in cfg.regimes.analyses and cfg.synthetic is None and cfg.dataset.get("num_classes"):
        k = int(cfg.dataset.num_classes)
        _check(cuts[-1] < k, f"hierarchy.cuts must lie below the {k} classes of {cfg.dataset.name}, got {cuts}")
    if "hierarchy" in cfg.regimes.analyses and cfg.synthetic is not None:
        _check(
            cfg.synthetic.name == "hierarchical",
            f"regimes=hierarchy needs synthetic=hierarchical or labelled images, got synthetic={cfg.synthetic.name}",
        )


def _potential_rules(cfg: Any) -> None:
    """``potential.classes``: two different labels, both among the classes of the images or the synthetic law."""
    classes = list(cfg.potential.classes)
    _check(classes[0] != classes[1], f"potential.classes must name two different classes (labels >= 0), got {classes}")
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
