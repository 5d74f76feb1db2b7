"""Typed schemas of the shared config groups and of ``ddpm-train``: a misspelt key or a wrong type fails at compose time.

The groups every command shares (``dataset``, ``model``, ``schedule``, ``sampler``, ``runtime``,
``paths``) and the training config live here; each other command keeps its own schema beside it
(``ddpm/<command>/config.py``); :mod:`ddpm.commands` lists them and stores them all in Hydra's ConfigStore. Each YAML group file
under ``conf/`` is merged into these dataclasses (struct mode), so only the fields declared here
exist. A field's own range or choices is declared beside it (``metadata=rule(...)``) and :func:`check`
applies every one of them; each command's ``validate_<command>`` (made by :func:`validates`) runs
:func:`check` and then the few rules that span several fields, before any work.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from ddpm.errors import ConfigError
from ddpm.memorisation import DEFAULT_THRESHOLD
from ddpm.paths import DEFAULT_OUTPUT_DIR

# Upper bounds of sizes that allocate in proportion: beyond them a typo would exhaust memory.
MAX_T = 1_000_000  # schedule steps (per-step tables of ᾱ, posterior, ...)
MAX_IMAGE_SIZE = 4096
MAX_MODEL_CHANNELS = 4096
MAX_DATASET_N = 100_000_000  # training images of a subset (dataset.n)
MAX_REGIMES_SAMPLES = 100_000  # samples drawn at each train.regimes_every
PRECISIONS = ("fp32", "fp16", "bf16")
RULE = "rule"  # the key of a field's Rule in its dataclass metadata


@dataclass(frozen=True)
class Rule:
    """The values one field accepts: bounds, choices, null, finiteness; on a list field the bounds and
    choices hold for every item and ``length`` / ``min_len`` for the list. Made by :func:`rule`."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    optional: bool = False
    finite: bool = False
    length: int | None = None
    min_len: int = 0
    nonempty: bool = False
    note: str = ""
    item: str = ""

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` (a field's composed value) satisfies the rule.

        Args:
            value: the value, a list for list fields.
        """
        if value is None:
            return self.optional
        if isinstance(value, str) and self.nonempty and not value.strip():
            return False
        if isinstance(value, (list, tuple, ListConfig)):
            items = list(value)
            if (self.length is not None and len(items) != self.length) or len(items) < self.min_len:
                return False
            return all(self._accepts_item(v) for v in items)
        return self._accepts_item(value)

    def _accepts_item(self, v: Any) -> bool:
        if self.choices is not None and v not in self.choices:
            return False
        try:  # written so that NaN fails every bound
            return (
                (self.ge is None or v >= self.ge)
                and (self.gt is None or v > self.gt)
                and (self.le is None or v <= self.le)
                and (self.lt is None or v < self.lt)
                and (not self.finite or math.isfinite(v))
            )
        except TypeError:  # a value of another type (only in configs built without the schema)
            return False

    def describe(self, finite: bool = True) -> str:
        """What the field must be, after its key and ``must``: ``be >= 1``, ``lie in [0, 1)``, ``be fp32, fp16 or bf16``.

        Args:
            finite: name the finiteness too (a message leaves it out unless the value is infinite).
        """
        if self.nonempty:
            return "be non-empty" + (" or null" if self.optional else "") + (f" {self.note}" if self.note else "")
        listed = self.length is not None or self.min_len > 0
        verb, cond = self._condition(listed, finite)
        if listed:
            count = str(self.length) if self.length is not None else f"{self.min_len} or more"
            text = f"be {count} of {cond}" if self.choices is not None else f"be {count} values {cond}".rstrip()
        else:
            text = f"{verb} {cond}"
        return text + (" or null" if self.optional else "") + (f" {self.note}" if self.note else "")

    def _condition(self, listed: bool, finite: bool) -> tuple[str, str]:
        """(verb, condition) of the bounds or choices: ``("lie", "in [0, 1)")``, ``("be", "> 0 and finite")``."""
        if self.choices is not None:
            names = [str(c) for c in self.choices]
            if listed or len(names) not in (2, 3):
                return "be", ("" if listed else "one of ") + ", ".join(names)
            return "be", ", ".join(names[:-1]) + f" or {names[-1]}"
        lo = (">=", self.ge) if self.ge is not None else (">", self.gt) if self.gt is not None else None
        hi = ("<=", self.le) if self.le is not None else ("<", self.lt) if self.lt is not None else None
        verb, cond = "be", ""
        if lo and hi:
            if self.ge is not None and self.le is not None and isinstance(self.ge, int) and isinstance(self.le, int):
                verb, cond = "lie", f"in {self.ge}..{self.le}"
            elif self.gt is not None and self.le is not None:
                cond = f"> {_number(self.gt)} and <= {_number(self.le)}"
            else:
                left, right = "[" if self.ge is not None else "(", "]" if self.le is not None else ")"
                verb, cond = "lie", f"in {left}{_number(lo[1])}, {_number(hi[1])}{right}"
        elif lo or hi:
            op, x = lo or hi
            cond = f"{op} {_number(x)}"
        if self.finite and (finite or not cond):
            cond = f"{cond} and finite" if cond else "finite"
        return verb, cond

    def message(self, key: str, value: Any) -> str:
        """The one-line error for ``value`` at the dotted ``key``: ``sampler.steps must be >= 1 or null, got 0``.

        Args:
            key: the field's dotted key in the composed config.
            value: its refused value.
        """
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
        items = value if isinstance(value, list) else [value]
        infinite = any(isinstance(v, float) and math.isinf(v) for v in items)  # else the bounds alone say what is wrong
        text = f"{key} must {self.describe(finite=infinite)}"
        unknown = [v for v in items if self.choices is not None and v not in self.choices]
        if self.item and unknown:  # a long list: say which of its items are wrong
            text += f" (unknown {self.item} {', '.join(map(repr, unknown))})"
        return f"{text}, got {value!r}" if isinstance(value, str) else f"{text}, got {value}"


def _number(x: float) -> str:
    """A bound as the messages print it: 100.0 as 100, 0.5 as 0.5."""
    return f"{x:g}" if isinstance(x, float) else str(x)


def rule(
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[Any, ...] | None = None,
    optional: bool = False,
    finite: bool = False,
    length: int | None = None,
    min_len: int = 0,
    nonempty: bool = False,
    note: str = "",
    item: str = "",
) -> dict[str, Rule]:
    """A field's rule, as its dataclass metadata: ``steps: int = field(default=50, metadata=rule(ge=1))``.

    Args:
        ge: the value must be >= ge.
        gt: the value must be > gt.
        le: the value must be <= le.
        lt: the value must be < lt.
        choices: the values allowed.
        optional: null is allowed too.
        finite: inf is refused (NaN fails every bound already).
        length: list fields: exactly this many items.
        min_len: list fields: at least this many items.
        nonempty: string fields: refuse "" (and whitespace only).
        note: why, printed after the condition (e.g. ``(FID needs a covariance)``).
        item: list fields with choices: what one item is, to name the unknown ones (``metric``).
    """
    return {
        RULE: Rule(
            ge=ge,
            gt=gt,
            le=le,
            lt=lt,
            choices=tuple(choices) if choices is not None else None,
            optional=optional,
            finite=finite,
            length=length,
            min_len=min_len,
            nonempty=nonempty,
            note=note,
            item=item,
        )
    }


@functools.cache
def _nested(schema: type) -> dict[str, type]:
    """The fields of ``schema`` that hold a dataclass (or null), with that dataclass."""
    out = {}
    for name, hint in typing.get_type_hints(schema).items():
        options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        found = [t for t in options if dataclasses.is_dataclass(t)]
        if found:
            out[name] = found[0]
    return out


def field_rules(schema: type, prefix: str = "") -> Iterator[tuple[str, Rule]]:
    """(dotted key, rule) of every field of ``schema`` that declares one, nested dataclasses included.

    Args:
        schema: a config dataclass.
        prefix: the dotted key of ``schema``'s node with a trailing dot (``""`` at the top).
    """
    nested = _nested(schema)
    for f in dataclasses.fields(schema):
        if RULE in f.metadata:
            yield prefix + f.name, f.metadata[RULE]
        if f.name in nested:
            yield from field_rules(nested[f.name], f"{prefix}{f.name}.")


def check(node: Any, schema: type, prefix: str = "") -> None:
    """Apply every field rule of ``schema`` (nested dataclasses included) to the composed ``node``;
    raises :class:`ConfigError` naming the first refused field's dotted key. Keys the node lacks or
    leaves ``???`` are skipped (configs read back from older checkpoints), and so is a null group.

    Args:
        node: a composed config, or a part of one, merged into ``schema``.
        schema: its config dataclass.
        prefix: the dotted key of ``node`` with a trailing dot (``""`` at the top).
    """
    nested = _nested(schema)
    for f in dataclasses.fields(schema):
        if f.name not in node or (isinstance(node, DictConfig) and OmegaConf.is_missing(node, f.name)):
            continue
        value = node[f.name]
        r = f.metadata.get(RULE)
        if r is not None and not r.accepts(value):
            raise ConfigError(r.message(prefix + f.name, value))
        if f.name in nested and value is not None:
            check(value, nested[f.name], f"{prefix}{f.name}.")


def validates(schema: type) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """Make a command's ``validate_<command>`` from its rules that span several fields: the result
    runs :func:`check` of every field rule of ``schema``, then those rules.

    Args:
        schema: the command's config dataclass.
    """

    def wrap(cross_rules: Callable[[Any], None]) -> Callable[[Any], None]:
        @functools.wraps(cross_rules)
        def validate(cfg: Any) -> None:
            check(cfg, schema)
            cross_rules(cfg)

        return validate

    return wrap


def _check(ok: bool, msg: str) -> None:
    """Raise :class:`ConfigError` with ``msg`` unless ``ok``: the one check of the rules that span several fields."""
    if not ok:
        raise ConfigError(msg)


@dataclass
class DatasetConfig:
    name: str = MISSING  # loader: mnist, cryptopunks, cats, cifar10, folder
    root: str = ""  # sub-folder of paths.data_dir
    image_size: int = field(default=32, metadata=rule(gt=0, le=MAX_IMAGE_SIZE))  # side the model sees (MNIST 28 is zero-padded to 32)
    channels: int = field(default=3, metadata=rule(choices=(1, 3)))
    hflip: bool = False  # random horizontal flips (not for digits)
    resize: bool = False  # resize images of another size instead of failing
    download: bool = False  # let torchvision download where a network exists
    # RGB behind transparent pixels
    background: list[int] = field(default_factory=lambda: [99, 133, 150], metadata=rule(ge=0, le=255, length=3))
    path: str | None = None  # folder dataset: a directory or .tar of images
    # held-out share for datasets without an official test split
    test_fraction: float = field(default=0.1, metadata=rule(ge=0.0, lt=1.0))
    num_classes: int | None = None
    # train on a seeded subset of n images, class-balanced where labels exist (null: all)
    n: int | None = field(default=None, metadata=rule(ge=1, le=MAX_DATASET_N, optional=True, note="(all images)"))
    subset_seed: int = 0  # seed of that subset (subsets of one seed nest: n=64 lies inside n=128)
    # 0 or 1: one of two disjoint subsets of n images (each nests across n; needs n)
    subset_part: int | None = field(default=None, metadata=rule(choices=(0, 1), optional=True))
    # auto: in memory when images x channels x image_size² bytes <= in_memory_max_gb GiB, else streamed
    # by loader workers (folders, tars, shards only; ddpm/data/residency.py); true / false force it.
    in_memory: Any = "auto"
    in_memory_max_gb: float = 4.0
    workers: int | None = None  # streaming: loader worker processes per rank (null: one per core, at most 8)


@dataclass
class ModelConfig:
    name: str = MISSING
    channels: int = field(default=64, metadata=rule(gt=0, le=MAX_MODEL_CHANNELS))
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2], metadata=rule(ge=1, min_len=1))
    num_res_blocks: int = field(default=2, metadata=rule(ge=1))
    attention_resolutions: list[int] = field(default_factory=lambda: [16])
    num_heads: int = field(default=4, metadata=rule(ge=1))
    dropout: float = field(default=0.1, metadata=rule(ge=0.0, lt=1.0))
    scale_shift_norm: bool = True
    # GroupNorm groups hold at least this many channels (32 groups at most). Checkpoints written
    # before the key existed used one channel per group at <= 32 channels: they load with 1.
    norm_min_group_channels: int = field(default=4, metadata=rule(ge=1))
    # Class conditioning: null = unconditional, auto = the dataset's classes, or a count. A class
    # embedding (plus a learned null class for dropped labels) is added to the time embedding.
    num_classes: Any = None  # checked by ddpm.conditioning.check_num_classes (auto, null or a count)


@dataclass
class ScheduleConfig:
    name: str = MISSING  # linear, cosine, quadratic
    T: int = field(default=1000, metadata=rule(gt=0, le=MAX_T))
    beta_start: float = 1e-4  # beta_start, beta_end: checked by NoiseSchedule.from_config with the schedule's name
    beta_end: float = 0.02
    cosine_s: float = field(default=0.008, metadata=rule(gt=0.0, finite=True))
    max_beta: float = field(default=0.999, metadata=rule(gt=0.0, lt=1.0))


@dataclass
class RuntimeConfig:
    """Where and how every command runs its network (the ``runtime`` group: fp32, fp16, bf16)."""

    name: str = "fp32"
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    precision: str = field(default="fp32", metadata=rule(choices=PRECISIONS))  # fp16: GradScaler when training; CUDA only
    tf32: bool = True  # TF32 matmuls/convs on Ampere+ (set explicitly either way)
    channels_last: bool | None = None  # null: by device (on for CPU networks >= 32 channels wide)
    compile: bool = False  # torch.compile the network
    # torch CPU threads; null: 1 per job under the joblib launcher, else torch's default
    num_threads: int | None = field(default=None, metadata=rule(ge=1, optional=True))


@dataclass
class SamplerConfig:
    name: str = MISSING  # ddpm, ddim, ... (see ddpm.samplers.SAMPLERS)
    steps: int | None = field(default=None, metadata=rule(ge=1, optional=True))  # network evaluations; null = all T steps
    # The other keys' values are checked by the sampler builders (ddpm.samplers), with the sampler they apply to.
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
    max_steps: int = field(default=10000, metadata=rule(ge=0))  # optimizer steps
    # per process and micro-batch; global = batch_size x ranks x grad_accum_steps
    batch_size: int = field(default=128, metadata=rule(gt=0))
    lr: float = field(default=2e-4, metadata=rule(gt=0.0, finite=True))
    weight_decay: float = field(default=0.0, metadata=rule(ge=0.0, finite=True))
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata=rule(ge=0.0, lt=1.0, length=2))
    warmup_steps: int = field(default=500, metadata=rule(ge=0))
    lr_schedule: str = field(default="constant", metadata=rule(choices=("constant", "cosine")))  # cosine: after warmup
    grad_clip: float = field(default=1.0, metadata=rule(ge=0.0))  # max global grad norm; 0 disables
    # conditional models: share of labels replaced by the null class (classifier-free guidance)
    cond_drop_prob: float = field(default=0.1, metadata=rule(ge=0.0, lt=1.0))
    ema_decay: float = field(default=0.9999, metadata=rule(ge=0.0, lt=1.0))
    grad_accum_steps: int = field(default=1, metadata=rule(ge=1))  # micro-batches per optimizer step
    objective: str = field(default="eps", metadata=rule(choices=("eps", "x0", "v")))
    # none, min_snr (min(SNR, γ) on the x0 error) or edm (SNR + 1/σ_d²)
    loss_weighting: str = field(default="none", metadata=rule(choices=("none", "min_snr", "edm")))
    min_snr_gamma: float = field(default=5.0, metadata=rule(gt=0.0))
    # uniform over k, or lognormal: ln σ_k ~ N(p_mean, p_std) (EDM)
    timestep_sampling: str = field(default="uniform", metadata=rule(choices=("uniform", "lognormal")))
    p_mean: float = field(default=-1.2, metadata=rule(finite=True))  # lognormal: also within the schedule's ln σ range
    p_std: float = field(default=1.2, metadata=rule(gt=0.0, finite=True))
    # stop after this many minutes (checkpoint + grid); cosine LR decays over it
    time_budget_min: float | None = field(default=None, metadata=rule(gt=0.0, finite=True, optional=True))
    # wall, or process (CPU time of this process: fair on a shared machine)
    budget_clock: str = field(default="wall", metadata=rule(choices=("wall", "process")))
    # domain FID of eval_samples samples every N steps (0: off); keeps checkpoints/best.pt
    eval_every: int = field(default=0, metadata=rule(ge=0))
    eval_samples: int = field(default=256, metadata=rule(ge=2, note="(FID needs a covariance)"))
    # memorised fraction, held-out loss, ε-gaps every N steps into regimes.jsonl (0: off; ddpm/regimes/monitor.py)
    regimes_every: int = field(default=0, metadata=rule(ge=0))
    # 0: regimes every regimes_every steps; N: N log-spaced steps per decade from regimes_every, each with a checkpoint
    regimes_per_decade: int = field(default=0, metadata=rule(ge=0, le=100))
    regimes_samples: int = field(default=16, metadata=rule(ge=1, le=MAX_REGIMES_SAMPLES))  # samples whose memorised fraction is logged
    seed: int = 0
    log_every: int = field(default=50, metadata=rule(ge=0))
    sample_every: int = field(default=1000, metadata=rule(ge=0))  # 0 disables sample grids
    num_sample_images: int = field(default=64, metadata=rule(ge=0))
    ckpt_every: int = field(default=1000, metadata=rule(ge=0))
    keep_checkpoints: int = field(default=3, metadata=rule(ge=0))  # rotated step checkpoints kept besides last.pt
    max_bad_steps: int = field(default=20, metadata=rule(ge=1))  # consecutive non-finite steps before giving up
    progress: bool = True  # tqdm bar


@dataclass
class MemorisationConfig:
    # k: a sample is a copy when d1/d2 < k (its nearest / second-nearest training distance)
    threshold: float = field(default=DEFAULT_THRESHOLD, metadata=rule(gt=0.0, lt=1.0))


@dataclass
class PathsConfig:
    """The roots every command shares (``paths/default.yaml`` reads them from the environment)."""

    # data root (DDPM_DATA_DIR); null: the root stored in the checkpoint a command loads, else DEFAULT_DATA_DIR
    data_dir: str | None = None
    # run dirs of every command (DDPM_OUTPUT_DIR), and the dashboard's runs
    output_dir: str = field(default=DEFAULT_OUTPUT_DIR, metadata=rule(nonempty=True, note="(a folder: the run dirs go below it)"))
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


def dataset_rules(d: Any, where: str = "dataset") -> None:
    """The rules of a ``dataset`` node that span several fields (each field's own is in
    :class:`DatasetConfig`); raises :class:`ConfigError`.

    Args:
        d: the ``dataset`` node.
        where: its key, for the message.
    """
    part = d.get("subset_part")
    _check(part is None or d.get("n") is not None, f"{where}.subset_part={part} needs {where}.n")  # 2n <= the split: checked once it loads
