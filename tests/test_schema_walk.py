"""Schema walk: every field of every command's config, fed bad values, is refused in one line.

For each command the walk composes the config, finds every leaf field generically (from the
composed config, whatever module its schema lives in), and sets each to values of its type that a
user could mistype: out of range, of the wrong type, empty, zero, negative, NaN, inf and huge. Each
value must be refused by the typed schema (as at composition) or by the command's start-up checks
(its ``validate_<command>`` plus the builders that run before any work: dataset name, schedule,
sampler, device), with a :class:`ConfigError`. What is still accepted must be listed below with its
reason, so that a new field without a check, or a check that disappears, fails this test.

A few cases also run as real processes: one ``error:`` line, exit code 2, run directory untouched.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import importlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import COMMAND_NAMES, compose_config, run_console
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ddpm.commands import COMMANDS as COMMAND_LIST
from ddpm.config import Rule, field_rules
from ddpm.errors import ConfigError, DataError

COMMANDS = COMMAND_NAMES  # every command of ddpm.commands.COMMANDS
# The walks: every command's config as composed, plus the groups its defaults leave null (a synthetic
# law for ddpm-regimes: the hierarchical one holds every synthetic key), as (command, overrides).
WALKS: list[tuple[str, list[str]]] = [(cmd, []) for cmd in COMMANDS] + [("regimes", ["synthetic=hierarchical"])]
# The fewest cases a command's walk must make (a walk that finds too few fields is vacuous); ddpm-export
# has five fields (eight cases).
MIN_CASES = {"export": 8}
HUGE_INT = 10**12
# Label -> value, per field type. Bool fields get a non-bool; lists get the empty list.
BAD_VALUES: dict[str, dict[str, object]] = {
    "int": {"negative": -1, "zero": 0, "huge": HUGE_INT, "wrong type": "abc", "nan": math.nan},
    "float": {"negative": -1.0, "zero": 0.0, "nan": math.nan, "inf": math.inf, "-inf": -math.inf, "huge": 1e300, "wrong type": "abc"},
    "bool": {"wrong type": "maybe"},
    "str": {"empty": "", "unknown": "no_such_value"},
    "list": {"empty": []},
}

# Accepted on purpose: fnmatch pattern of "<command> <key>" -> (labels, reason).
ACCEPTED: list[tuple[str, set[str] | None, str]] = [
    ("* *data_dir", None, "a path: opened at start-up, a missing one is one line naming it"),
    ("* *cache_dir", None, "a path: created on first use"),
    ("* paths.output_dir", {"unknown"}, "a path: Hydra creates the run dirs below it"),
    ("* *.root", None, "a path below the data root: opened at start-up, a missing one is one line naming it"),
    ("* *.path", None, "a path: opened at start-up, a missing one is one line naming it"),
    ("* ckpt", None, "a path: opened at start-up, a missing one is one line naming it"),
    ("export name", {"unknown"}, "any plain file stem names the exported pair"),
    ("* *weights_path", None, "a path: opened when used, a missing one is one line naming it"),
    ("* *seed", {"negative", "zero", "huge"}, "any integer seeds a generator"),
    ("* *.name", {"empty", "unknown"}, "a group's own name, informational (the group option chosen is what counts)"),
    ("train experiment", {"empty", "unknown"}, "informational: the name of the applied preset"),
    ("* *.num_classes", {"negative", "zero", "huge"}, "informational for loaders; labels are checked against it when present"),
    ("* train.max_steps", {"zero"}, "0 steps: writes the initial checkpoint only"),
    ("* train.regimes_per_decade", {"zero"}, "0: the regimes every train.regimes_every steps, not on a log grid"),
    ("* train.cond_drop_prob", {"zero"}, "0: no label dropout (guidance then warns: untrained null class)"),
    ("* class_label", {"zero", "huge"}, "0 is a class; a label beyond the checkpoint's classes is one line once it loads"),
    ("* guidance_scale", {"zero"}, "0: the unconditional prediction of a conditional model"),
    ("* train.warmup_steps", {"zero", "huge"}, "no warm-up / a warm-up longer than the run"),
    ("* train.*_every", {"zero"}, "0 disables it"),
    ("* train.*_every", {"huge"}, "never within the run"),
    ("* train.num_sample_images", {"zero"}, "0 writes no grids"),
    ("* train.keep_checkpoints", {"zero", "huge"}, "keep none besides last.pt / keep all"),
    ("* train.grad_clip", {"zero", "huge", "inf"}, "0 disables clipping; a huge one never clips"),
    ("* train.weight_decay", {"zero"}, "no weight decay"),
    ("* train.p_mean", {"negative", "zero"}, "the log-normal mean may be any real"),
    ("* train.max_bad_steps", {"huge"}, "never stop on non-finite steps"),
    ("* *.eval_samples", {"huge"}, "costly, not wrong"),
    ("* train.time_budget_min", {"huge"}, "a budget longer than the run"),
    ("* train.lr", {"huge"}, "diverges, and the non-finite-loss guard stops it with one line"),
    ("* train.min_snr_gamma", {"huge"}, "min(SNR, γ) = SNR"),
    ("* train.p_std", {"huge"}, "a very wide log-normal"),
    ("* model.dropout", {"zero"}, "no dropout"),
    ("* model.attention_resolutions", {"empty"}, "no attention layers"),
    ("* model.norm_min_group_channels", {"huge"}, "one group per layer"),
    ("* runtime.num_threads", {"huge"}, "torch caps threads itself"),
    ("* sampler.eta", {"zero"}, "deterministic DDIM"),
    ("* sampler.lambda_min", {"negative", "zero", "-inf"}, "λ may be any real; -inf means no clip"),
    ("* gif.frames", {"zero", "huge"}, "0 writes no GIFs; more frames than states is clamped to them, with a warning"),
    ("* gif.num_images", {"huge"}, "clamped to num_samples, with a warning"),
    ("* grid_images", {"huge"}, "clamped to num_samples, with a warning"),
    ("* *num_samples", {"huge"}, "costly, not wrong"),
    ("* *num_images", {"huge"}, "costly, not wrong"),
    ("evaluate denoise.num_images", {"huge"}, "clamped to the test split's size, with a warning"),
    ("* num_real", {"huge"}, "clamped to the split's size, with a warning"),
    ("* batch_size", {"huge"}, "a batch holds at most the images there are; results do not depend on it (image i has its own seed)"),
    ("* kid_subsets", {"huge"}, "costly, not wrong"),
    ("* kid_subset_size", {"huge"}, "shrunk to the sample counts, with a warning"),
    ("* feature_extractor.min_samples", {"zero", "huge"}, "0 never warns; a huge one always warns"),
    ("* memorisation.grid", {"zero"}, "0 draws no grid"),
    ("evaluate memorisation.grid", {"huge"}, "clamped to num_samples, with a warning"),
    ("* denoise.steps", {"empty"}, "no denoising rows"),
    ("* strip_frames", {"huge"}, "clamped to the sampler's evaluations, with a warning"),
    ("* strip_images", {"huge"}, "clamped to num_images, with a warning"),
    ("visualize steps", {"empty"}, "times=[...] may give all positions"),
    ("visualize num_images", {"huge"}, "clamped to the split's size, with a warning"),
    ("regimes eigenvalues", {"zero"}, "no eigenvalues reported"),
    ("regimes *.queries", {"huge"}, "costly, not wrong"),
    ("regimes *.samples", {"huge"}, "costly, not wrong"),
    ("regimes *.points", {"huge"}, "costly, not wrong"),
    ("regimes *.steps", {"huge"}, "costly, not wrong"),
    ("regimes *.gap_points", {"huge"}, "costly, not wrong"),
    ("regimes *.gap_queries", {"huge"}, "costly, not wrong"),
    ("regimes *.clone_*", {"huge"}, "costly, not wrong"),
    ("regimes speciation.clone_traj", {"zero"}, "0 disables the cloning experiment"),
    ("regimes collapse.refine", {"zero", "huge"}, "0 refines nothing"),
    ("regimes *.d", {"huge"}, "costly, not wrong"),
    ("regimes *.classes", {"huge"}, "costly, not wrong"),
    ("regimes *.power", {"negative", "zero"}, "any real exponent is a spectrum"),
    ("regimes *.mu", {"negative", "zero"}, "the class-mean scale may be any real"),
    ("regimes *.sigma*", {"huge"}, "a very wide Gaussian"),
    ("regimes *.mu", {"huge"}, "far-apart classes"),
    ("regimes *.power", {"huge"}, "one dominant direction"),
    ("regimes collapse.f_threshold", {"huge"}, "never reached: reported as not found"),
    ("* *test_fraction", {"zero"}, "no held-out split"),
    ("* model.num_heads", {"huge"}, "refused when the U-Net is built: heads must divide the channels (one line)"),
    ("* model.num_res_blocks", {"huge"}, "costly, not wrong"),
    ("* train.max_steps", {"huge"}, "a long run (train.time_budget_min bounds it)"),
    ("* train.batch_size", {"huge"}, "refused once the data is loaded: the batch exceeds the dataset (one line)"),
    ("* train.ema_decay", {"zero"}, "the EMA is the raw weights"),
    ("* train.grad_accum_steps", {"huge"}, "costly, not wrong"),
    ("* train.min_snr_gamma", {"inf"}, "min(SNR, γ) = SNR: no clip"),
    ("* train.weight_decay", {"huge"}, "drives the weights to zero, not an error"),
    ("* train.num_sample_images", {"huge"}, "costly, not wrong"),
    ("train resume", {"empty"}, "the same as null: a fresh run"),
    ("visualize schedules", {"empty"}, "no schedules to compare with: the command runs and draws schedules.png without them"),
    ("regimes points.downsample", {"huge"}, "refused when the images load: it must divide the image size (one line)"),
    ("regimes eigenvalues", {"huge"}, "a slice of the eigenvalues: at most the d there are"),
    ("regimes *.batch", {"huge"}, "a range over the queries in steps of batch: one batch of all"),
    ("regimes kernel.chunk_size", {"huge"}, "a range over the training points in steps of chunk_size: one chunk of all"),
    ("evaluate feature_extractor.dataset", {"unknown"}, "compared with the checkpoint's dataset once it loads (one line)"),
    ("evaluate feature_extractor.dataset", {"empty"}, "the same as null: the checkpoint's dataset"),
    ("regimes *.dataset.num_classes", None, "informational"),
    ("regimes dataset.subset_part", {"zero"}, "under synthetic=<law> no image is read: subset_part needs dataset.n only for images"),
]

# Values accepted today that should be refused: the open part of the schema walk (each line is a
# field whose check is still to be written in its command's validate function). Empty: every field
# has its check or its documented reason above.
KNOWN_GAPS: dict[str, set[str]] = {}

# Fields read only under another setting are walked under it ("<command> <key>" -> overrides), so
# that their checks are the ones that run when they matter.
CONTEXT: dict[str, dict[str, object]] = {
    "train train.p_mean": {"train.timestep_sampling": "lognormal"},  # checked against the schedule's ln σ range
    "train train.p_std": {"train.timestep_sampling": "lognormal"},
}


def find_validate(cmd: str) -> Callable[[Any], None]:
    """The command's ``validate_<cmd>``, wherever its schema module lives."""
    for mod in (f"ddpm.{cmd}.config", f"ddpm.{cmd}_config", "ddpm.config", f"ddpm.{cmd}.cli", f"ddpm.{cmd}"):
        try:
            fn = getattr(importlib.import_module(mod), f"validate_{cmd}", None)
        except ImportError:
            continue
        if fn is not None:
            return fn
    raise LookupError(f"no validate_{cmd} found")


def start_up_checks(cmd: str, cfg: DictConfig) -> None:
    """What the command checks before any work: its validate function, then the builders of its
    dataset name, schedule, sampler and device (cheap, and only for sizes they can build)."""
    from ddpm.data import load_dataset
    from ddpm.diffusion import GaussianDiffusion
    from ddpm.runtime import resolve_device
    from ddpm.samplers import build_sampler
    from ddpm.schedules import NoiseSchedule

    find_validate(cmd)(cfg)
    dataset = OmegaConf.select(cfg, "dataset") or OmegaConf.select(cfg, "data.dataset")
    if dataset is not None:
        with contextlib.suppress(DataError):  # the name and split passed; the files are not the point here
            load_dataset(dataset, "/nonexistent-data-root", "/nonexistent-cache", "train")
    schedule = OmegaConf.select(cfg, "schedule")
    if schedule is not None and 0 < schedule.T <= 100_000:
        NoiseSchedule.from_config(schedule)
    sampler = OmegaConf.select(cfg, "sampler")
    if sampler is not None:  # steps beyond T are refused before anything is allocated
        schedule_cfg = OmegaConf.create(
            {"name": "linear", "T": 1000, "beta_start": 1e-4, "beta_end": 0.02, "cosine_s": 0.008, "max_beta": 0.999}
        )
        build_sampler(sampler, GaussianDiffusion(NoiseSchedule.from_config(schedule_cfg), "eps"))
    runtime = OmegaConf.select(cfg, "runtime")
    if runtime is not None:  # ddpm-export runs on the CPU and has no runtime group
        resolve_device(str(runtime.device))


def leaves(node: DictConfig, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value node) of every leaf of a composed config; lists are leaves."""
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            if not child._is_none() and not child._is_missing():
                yield from leaves(child, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", child


def kind(node: Any) -> str | None:
    """The field's type among :data:`BAD_VALUES`, from its schema annotation."""
    if isinstance(node, ListConfig):
        return "list"
    t = getattr(node._metadata, "ref_type", Any)
    name = getattr(t, "__name__", str(t))
    for k in ("bool", "int", "float", "str"):  # bool first: it is also an int
        if k in name:
            return k
    return None


def base_config(cmd: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """``cmd``'s config as composed with ``overrides`` (and a checkpoint path where it needs one)."""
    ckpt = ["ckpt=/nonexistent/last.pt"] if cmd in ("sample", "evaluate", "visualize", "export") else []
    return compose_config(cmd, [*ckpt, *overrides])


def _leaf(cfg: DictConfig, key: str) -> Any:
    """The node at a dotted key, unresolved."""
    node: Any = cfg
    for part in key.split("."):
        node = node._get_node(part)
    return node


def _raw(node: Any) -> Any:
    """A leaf's value as set (interpolations and ``???`` kept), to put it back after a case."""
    return OmegaConf.to_container(node, resolve=False) if isinstance(node, ListConfig) else node._value()


def walk(cmd: str, only: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> tuple[int, dict[str, set[str]], dict[str, str]]:
    """Feed every bad value to every field of ``cmd``'s config composed with ``overrides`` (or to the
    field ``only``); returns (cases, accepted labels per key, crashes).

    Each case sets its values in the composed config and puts the old ones back afterwards (a deep
    copy per case made the walk three times slower); the config is compared with a copy at the end.
    """
    base = base_config(cmd, overrides)
    start_up_checks(cmd, base)  # the defaults pass
    pristine = copy.deepcopy(base)
    cases, accepted, crashed = 0, {}, {}
    for key, node in list(leaves(base)):
        if only is not None and key != only:
            continue
        k = kind(node)
        context = CONTEXT.get(f"{cmd} {key}", {})
        for label, value in BAD_VALUES.get(k, {}).items():
            cases += 1
            saved = {name: _raw(_leaf(base, name)) for name in (key, *context)}
            try:
                for k2, v2 in context.items():
                    OmegaConf.update(base, k2, v2, merge=False)
                try:
                    OmegaConf.update(base, key, value, merge=False)
                except OmegaConfBaseException:  # the typed schema refuses it, as at composition
                    continue
                try:
                    start_up_checks(cmd, base)
                except ConfigError as exc:
                    assert "\n" not in str(exc), f"{cmd} {key}={value!r}: {exc}"
                    continue
                except Exception as exc:  # a traceback for the user: always a failure
                    crashed[f"{key}={value!r}"] = f"{type(exc).__name__}: {exc}"
                    continue
                accepted.setdefault(key, set()).add(label)
            finally:
                for name, old in saved.items():
                    OmegaConf.update(base, name, old, merge=False)
    assert base == pristine, f"{cmd}: the walk did not restore the config"
    return cases, accepted, crashed


def allowed(cmd: str, key: str, label: str) -> bool:
    return any(fnmatch.fnmatchcase(f"{cmd} {key}", pat) and (labels is None or label in labels) for pat, labels, _ in ACCEPTED)


def unexplained(cmd: str, accepted: dict[str, set[str]]) -> dict[str, list[str]]:
    """The accepted values that neither :data:`ACCEPTED` nor :data:`KNOWN_GAPS` explain, per key."""
    out = {
        k: sorted(v for v in labels if not allowed(cmd, k, v) and v not in KNOWN_GAPS.get(f"{cmd} {k}", set()))
        for k, labels in accepted.items()
    }
    return {k: v for k, v in out.items() if v}


@pytest.mark.parametrize("cmd, overrides", WALKS, ids=[" ".join([cmd, *over]) for cmd, over in WALKS])
def test_every_field_refuses_bad_values(cmd: str, overrides: list[str]) -> None:
    cases, accepted, crashed = walk(cmd, overrides=overrides)
    assert cases >= MIN_CASES.get(cmd, 50), f"only {cases} cases: the walk found too few fields"
    assert not crashed, f"{cmd}: values that end in a traceback instead of one line: {crashed}"
    assert unexplained(cmd, accepted) == {}, (
        f"{cmd}: accepted bad values without a check or a documented reason (add a check to validate_{cmd}, "
        f"or list the value in ACCEPTED with its reason): {unexplained(cmd, accepted)}"
    )
    for gap, labels in KNOWN_GAPS.items():  # an open gap that got its check must leave the list
        name, key = gap.split(" ", 1)
        if name == cmd and not overrides:
            assert labels <= accepted.get(key, set()), (
                f"{gap}: {sorted(labels - accepted.get(key, set()))} refused now: drop it from KNOWN_GAPS"
            )


def test_the_walk_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """A field whose check is gone is reported (the walk is not vacuous)."""
    import ddpm.train.config as train_config

    assert not allowed("train", "train.lr", "negative")
    assert allowed("train", "paths.data_dir", "empty")
    base = base_config("train")
    cfg = copy.deepcopy(base)
    OmegaConf.update(cfg, "train.lr", -1.0, merge=False)
    with pytest.raises(ConfigError, match="train.lr must be > 0"):
        start_up_checks("train", cfg)
    # validate_train without its learning-rate checks: the walk reports every bad value it lets through
    strict = train_config.validate_train

    def without_lr_checks(cfg: DictConfig) -> None:
        cfg = copy.deepcopy(cfg)
        cfg.train.lr = 1e-3
        strict(cfg)

    monkeypatch.setattr(train_config, "validate_train", without_lr_checks)
    cases, accepted, crashed = walk("train", only="train.lr")
    assert (cases, crashed) == (len(BAD_VALUES["float"]), {})
    assert accepted == {"train.lr": {"negative", "zero", "nan", "inf", "-inf", "huge"}}
    assert unexplained("train", accepted) == {"train.lr": ["-inf", "inf", "nan", "negative", "zero"]}  # huge: documented


def outside(r: Rule, value: Any) -> list[Any]:
    """Values just outside the rule ``r`` of a field whose composed value is ``value``: each bound
    crossed, a choice that is not one, inf where it must be finite; for lists, such items and a list
    of the wrong length."""
    if isinstance(value, ListConfig):
        items = list(value)
        bad: list[Any] = [[b] * (r.length or 1) for b in outside(r, items[0])]
        if r.length is not None:
            bad.append(items[: r.length - 1])
        if r.min_len:
            bad.append([])
        return bad
    bad = []
    if r.choices is not None:
        bad.append("no_such_value" if isinstance(r.choices[0], str) else max(r.choices) + 1)
    for bound, step in ((r.ge, -1), (r.gt, 0), (r.le, 1), (r.lt, 0)):
        if bound is not None:
            bad.append(bound + step)
    if r.finite:
        bad.append(math.inf)
    return bad


def test_every_field_rule_is_walked_and_applied() -> None:
    """Every rule declared beside a field of a registered schema (ddpm.config.rule) lies on the walk
    (its key is a leaf of one of WALKS' configs) and is applied by its command's start-up checks: each
    value just outside it is refused in one line that starts with the field's dotted key."""
    configs: dict[str, list[DictConfig]] = {}
    for cmd, overrides in WALKS:
        configs.setdefault(cmd, []).append(base_config(cmd, overrides))
    unwalked, wrong, total = [], {}, 0
    for c in COMMAND_LIST:
        for key, r in field_rules(c.schema):
            cfg = next((cfg for cfg in configs[c.name] if key in dict(leaves(cfg))), None)
            if cfg is None:
                unwalked.append(f"{c.name} {key}")
                continue
            saved = _raw(_leaf(cfg, key))
            for bad in outside(r, OmegaConf.select(cfg, key)):
                total += 1
                OmegaConf.update(cfg, key, bad, merge=False)
                try:
                    start_up_checks(c.name, cfg)
                    wrong[f"{c.name} {key}={bad!r}"] = "accepted"
                except ConfigError as exc:
                    if not str(exc).startswith(f"{key} must ") or "\n" in str(exc):
                        wrong[f"{c.name} {key}={bad!r}"] = str(exc)
                finally:
                    OmegaConf.update(cfg, key, saved, merge=False)
    assert not unwalked, f"field rules on keys that no walk reaches (add a walk to WALKS): {unwalked}"
    assert not wrong, f"field rules not applied, or refused under another key: {wrong}"
    assert total >= 150, f"only {total} values outside the field rules: the rules were not found"


# ---------------------------------------------------------------------------- as real processes
PROCESS_CASES = [
    ("ddpm-train", ["train.lr=inf"], "train.lr"),
    ("ddpm-train", ["schedule.T=-1"], "schedule.T"),
    ("ddpm-train", ["train.batch_size=1.5"], "train.batch_size"),
    ("ddpm-sample", ["ckpt=/nonexistent/last.pt", "num_samples=-3"], "num_samples"),
    ("ddpm-visualize", ["ckpt=/nonexistent/last.pt", "times=[nan]"], "times"),
    ("ddpm-regimes", ["collapse.t_min=nan"], "collapse"),
]


@pytest.mark.parametrize("exe, args, expect", PROCESS_CASES, ids=lambda x: str(x))
def test_bad_value_as_a_process(exe: str, args: list[str], expect: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("earlier output\n")
    proc = run_console(exe, [*args, f"hydra.run.dir={run}"])
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], proc.stderr
    new = {p.name for p in run.iterdir()} - {"keep.txt", ".hydra", ".lock"}  # Hydra's record and train's run lock
    assert all(n.endswith(".log") for n in new), new  # no outputs: refused before any work
    assert (run / "keep.txt").read_text() == "earlier output\n"


def test_sample_clamps_print_a_warning(tiny_ckpt: Path, tmp_path: Path) -> None:
    """The clamps of ``ddpm-sample`` listed in ACCEPTED say so in the log (and still succeed)."""
    run = tmp_path / "run"
    args = ["num_samples=2", "gif.num_images=5", "gif.frames=1000", "grid_images=10", "sampler.steps=3", "progress=false"]
    proc = run_console("ddpm-sample", [f"ckpt={tiny_ckpt}", *args, f"hydra.run.dir={run}"])
    assert proc.returncode == 0, proc.stderr
    log = (run / "sample.log").read_text()
    assert "gif.num_images=5 exceeds num_samples=2: the GIFs show 2 images" in log
    assert "grid_images=10 exceeds num_samples=2: the grid shows 2 images" in log
    assert "gif.frames=1000 exceeds the 4 states of a 3-evaluation sampler: writing 4 frames" in log
