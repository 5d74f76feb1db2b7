"""Typed schemas of the shared config groups and of ``ddpm-train``: a misspelt key or a wrong type fails at compose time.

The groups every command shares (``dataset``, ``model``, ``schedule``, ``sampler``, ``runtime``,
``paths``) and the training config live here; each other command keeps its own schema beside it
(``ddpm/<command>/config.py``); :mod:`ddpm.commands` lists them and stores them all in Hydra's ConfigStore. Each YAML group file
under ``conf/`` is merged into these dataclasses (struct mode), so only the fields declared here
exist. Value ranges are checked by :func:`validate_train` (and the commands' ``validate_*``) before any work.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from ddpm.errors import ConfigError
from ddpm.memorisation import DEFAULT_THRESHOLD


@dataclass
class DatasetConfig:
    name: str = MISSING  # loader: mnist, cryptopunks, cats, cifar10, folder
    root: str = ""  # sub-folder of paths.data_dir
    image_size: int = 32  # side the model sees (MNIST 28 is zero-padded to 32)
    channels: int = 3
    hflip: bool = False  # random horizontal flips (not for digits)
    resize: bool = False  # resize images of another size instead of failing
    download: bool = False  # let torchvision download where a network exists
    background: list[int] = field(default_factory=lambda: [99, 133, 150])  # RGB behind transparent pixels
    path: str | None = None  # folder dataset: a directory or .tar of images
    test_fraction: float = 0.1  # held-out share for datasets without an official test split
    num_classes: int | None = None
    n: int | None = None  # train on a seeded subset of n images, class-balanced where labels exist (null: all)
    subset_seed: int = 0  # seed of that subset (subsets of one seed nest: n=64 lies inside n=128)
    subset_part: int | None = None  # 0 or 1: one of two disjoint subsets of n images (each nests across n; needs n)
    # auto: in memory when images x channels x image_size² bytes <= in_memory_max_gb GiB, else streamed
    # by loader workers (folders, tars, shards only; ddpm/data/residency.py); true / false force it.
    in_memory: Any = "auto"
    in_memory_max_gb: float = 4.0
    workers: int | None = None  # streaming: loader worker processes per rank (null: one per core, at most 8)


@dataclass
class ModelConfig:
    name: str = MISSING
    channels: int = 64
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 2
    attention_resolutions: list[int] = field(default_factory=lambda: [16])
    num_heads: int = 4
    dropout: float = 0.1
    scale_shift_norm: bool = True
    # GroupNorm groups hold at least this many channels (32 groups at most). Checkpoints written
    # before the key existed used one channel per group at <= 32 channels: they load with 1.
    norm_min_group_channels: int = 4
    # Class conditioning: null = unconditional, auto = the dataset's classes, or a count. A class
    # embedding (plus a learned null class for dropped labels) is added to the time embedding.
    num_classes: Any = None


@dataclass
class ScheduleConfig:
    name: str = MISSING  # linear, cosine, quadratic
    T: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    cosine_s: float = 0.008
    max_beta: float = 0.999


@dataclass
class RuntimeConfig:
    """Where and how every command runs its network (the ``runtime`` group: fp32, fp16, bf16)."""

    name: str = "fp32"
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    precision: str = "fp32"  # fp32, fp16 (GradScaler when training; CUDA only), bf16
    tf32: bool = True  # TF32 matmuls/convs on Ampere+ (set explicitly either way)
    channels_last: bool | None = None  # null: by device (on for CPU networks >= 32 channels wide)
    compile: bool = False  # torch.compile the network
    num_threads: int | None = None  # torch CPU threads; null: 1 per job under the joblib launcher, else torch's default


PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass
class SamplerConfig:
    name: str = MISSING  # ddpm, ddim, ... (see ddpm.samplers.SAMPLERS)
    steps: int | None = None  # network evaluations; null = all T steps
    eta: float = 0.0  # DDIM noise scale (0 deterministic, 1 ancestral-like)
    spacing: str = "leading"  # leading, trailing or linspace
    clip_denoised: bool = True  # clamp x̂_0 to [-1, 1] at each step
    grid: str = "time"  # dpm_solver: time (spacing over k) or logsnr (uniform in λ, nearest k)
    lambda_min: float | None = None  # dpm_solver: start no lower than this λ = ½ log SNR (null: T-1)
    variance: str = "small"  # ddpm: small (posterior β̃) or large (β) for each respaced step
    # (grid also takes karras: EDM's σ grid, ρ = 7, for every sampler)
    # edm_heun only (EDM's Algorithm 2; null: the sampler's default), checked by build_sampler:
    s_churn: float | None = None  # stochasticity S_churn >= 0 (0: deterministic Heun); γ = min(S_churn / steps visited, √2 - 1)
    s_min: float | None = None  # churn only at σ = √((1-ᾱ)/ᾱ) >= s_min (>= 0)
    s_max: float | None = None  # ... and <= s_max (>= s_min; inf allowed)
    s_noise: float | None = None  # scale of the churn noise S_noise > 0


@dataclass
class TrainSection:
    max_steps: int = 10000  # optimizer steps
    batch_size: int = 128  # per process and micro-batch; global = batch_size x ranks x grad_accum_steps
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 500
    lr_schedule: str = "constant"  # constant or cosine (after warmup)
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    cond_drop_prob: float = 0.1  # conditional models: share of labels replaced by the null class (classifier-free guidance)
    ema_decay: float = 0.9999
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    objective: str = "eps"  # eps, x0, v
    loss_weighting: str = "none"  # none, min_snr (min(SNR, γ) on the x0 error) or edm (SNR + 1/σ_d²)
    min_snr_gamma: float = 5.0
    timestep_sampling: str = "uniform"  # uniform over k, or lognormal: ln σ_k ~ N(p_mean, p_std) (EDM)
    p_mean: float = -1.2
    p_std: float = 1.2
    time_budget_min: float | None = None  # stop after this many minutes (checkpoint + grid); cosine LR decays over it
    budget_clock: str = "wall"  # wall, or process (CPU time of this process: fair on a shared machine)
    eval_every: int = 0  # domain FID of eval_samples samples every N steps (0: off); keeps checkpoints/best.pt
    eval_samples: int = 256
    regimes_every: int = 0  # memorised fraction, held-out loss, ε-gaps every N steps into regimes.jsonl (0: off; ddpm/regimes/monitor.py)
    regimes_per_decade: int = (
        0  # 0: regimes every regimes_every steps; N: N log-spaced steps per decade from regimes_every, each with a checkpoint
    )
    regimes_samples: int = 16  # samples whose memorised fraction is logged
    seed: int = 0
    log_every: int = 50
    sample_every: int = 1000  # 0 disables sample grids
    num_sample_images: int = 64
    ckpt_every: int = 1000
    keep_checkpoints: int = 3  # rotated step checkpoints kept besides last.pt
    max_bad_steps: int = 20  # consecutive non-finite steps before giving up
    progress: bool = True  # tqdm bar


@dataclass
class MemorisationConfig:
    threshold: float = DEFAULT_THRESHOLD  # k: a sample is a copy when d1/d2 < k (its nearest / second-nearest training distance)


@dataclass
class PathsConfig:
    data_dir: str | None = "data"  # data root; ddpm-sample/-visualize: null = the root stored in the checkpoint
    cache_dir: str = "~/.cache/ddpm"  # decoded archives, classifiers, fidelity statistics


@dataclass
class TrainConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    train: TrainSection = field(default_factory=TrainSection)
    paths: PathsConfig = field(default_factory=PathsConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    memorisation: MemorisationConfig = field(default_factory=MemorisationConfig)  # the copy criterion of train.regimes_every
    resume: str | None = None  # latest, a checkpoint path, or null
    dry_run: bool = False
    experiment: str | None = None  # name of the applied experiment preset (informational)


def checks_runtime(validate: Callable[[Any], None]) -> Callable[[Any], None]:
    """The opening every command's ``validate_<command>`` shares: :func:`check_runtime` on the
    config's ``runtime`` group, then the command's own checks.

    Args:
        validate: the command's checks of its composed config.
    """

    @functools.wraps(validate)
    def checked(cfg: Any) -> None:
        check_runtime(cfg.runtime)
        validate(cfg)

    return checked


def check_runtime(r: Any) -> None:
    """Range checks of a ``runtime`` node; raises :class:`ConfigError`."""
    _check(r.precision in PRECISIONS, f"runtime.precision must be fp32, fp16 or bf16, got {r.precision!r}")
    _check(r.num_threads is None or r.num_threads >= 1, f"runtime.num_threads must be >= 1 or null, got {r.num_threads}")


def check_memorisation(m: Any) -> None:
    """The copy criterion's k (``memorisation.threshold``) lies in (0, 1); raises :class:`ConfigError`."""
    _check(0.0 < m.threshold < 1.0, f"memorisation.threshold must lie in (0, 1), got {m.threshold}")


def _check(ok: bool, msg: str) -> None:
    """Raise :class:`ConfigError` with ``msg`` unless ``ok``: the one check every ``validate_*`` uses."""
    if not ok:
        raise ConfigError(msg)


# Upper bounds of sizes that allocate in proportion: beyond them a typo would exhaust memory.
MAX_T = 1_000_000  # schedule steps (per-step tables of ᾱ, posterior, ...)
MAX_IMAGE_SIZE = 4096
MAX_MODEL_CHANNELS = 4096
MAX_DATASET_N = 100_000_000  # training images of a subset (dataset.n)
MAX_REGIMES_SAMPLES = 100_000  # samples drawn at each train.regimes_every


def check_schedule(s: Any, where: str = "schedule") -> None:
    """Range checks of a ``schedule`` node that its builder does not make; raises :class:`ConfigError`.

    Args:
        s: the ``schedule`` node.
        where: its key, for the message.
    """
    _check(0 < s.T <= MAX_T, f"{where}.T must be > 0 and <= {MAX_T}, got {s.T}")
    _check(math.isfinite(s.cosine_s) and s.cosine_s > 0, f"{where}.cosine_s must be a finite number > 0, got {s.cosine_s}")
    _check(0 < s.max_beta < 1, f"{where}.max_beta must lie in (0, 1), got {s.max_beta}")


def check_dataset(d: Any, where: str = "dataset") -> None:
    """Range checks of a ``dataset`` node; raises :class:`ConfigError`.

    Args:
        d: the ``dataset`` node.
        where: its key, for the message.
    """
    _check(0 < d.image_size <= MAX_IMAGE_SIZE, f"{where}.image_size must be > 0 and <= {MAX_IMAGE_SIZE}, got {d.image_size}")
    _check(d.channels in (1, 3), f"{where}.channels must be 1 or 3, got {d.channels}")
    _check(0.0 <= d.test_fraction < 1.0, f"{where}.test_fraction must lie in [0, 1), got {d.test_fraction}")
    _check(
        len(d.background) == 3 and all(0 <= c <= 255 for c in d.background),
        f"{where}.background must be 3 values in 0..255, got {list(d.background)}",
    )
    n = d.get("n")
    _check(n is None or 1 <= n <= MAX_DATASET_N, f"{where}.n must be >= 1 and <= {MAX_DATASET_N} or null (all images), got {n}")
    part = d.get("subset_part")
    _check(part in (None, 0, 1), f"{where}.subset_part must be 0 or 1 or null, got {part}")
    _check(part is None or n is not None, f"{where}.subset_part={part} needs {where}.n")  # 2n <= the split: checked once it loads


def check_model(m: Any) -> None:
    """Range checks of a ``model`` node made before building it; raises :class:`ConfigError`."""
    _check(0 < m.channels <= MAX_MODEL_CHANNELS, f"model.channels must be > 0 and <= {MAX_MODEL_CHANNELS}, got {m.channels}")
    _check(
        len(m.channel_mult) > 0 and all(c >= 1 for c in m.channel_mult),
        f"model.channel_mult must be values >= 1, got {list(m.channel_mult)}",
    )
    _check(m.num_res_blocks >= 1, f"model.num_res_blocks must be >= 1, got {m.num_res_blocks}")
    _check(m.num_heads >= 1, f"model.num_heads must be >= 1, got {m.num_heads}")
    _check(0.0 <= m.dropout < 1.0, f"model.dropout must lie in [0, 1), got {m.dropout}")
    _check(m.norm_min_group_channels >= 1, f"model.norm_min_group_channels must be >= 1, got {m.norm_min_group_channels}")
    from ddpm.conditioning import check_num_classes

    check_num_classes(m.get("num_classes"))
