"""The Hydra entry points' shared shell: config checks up front, user errors as one line.

Every ``ddpm-*`` command is ``@hydra_main(config_name=...)`` over a function ``fn(cfg, run_dir)``
(the commands and their schemas are listed in :mod:`ddpm.commands`). Before Hydra runs, the command line is checked for keys that were renamed and
composed once with Hydra's compose API, so that an old key, an unknown group option, key or wrongly
typed value is reported as one ``error: ...`` line with exit code 2 instead of Hydra's multi-line report.
"""

from __future__ import annotations

import errno
import functools
import importlib.resources
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ddpm.errors import EXIT_USAGE, USER_ERRORS, ConfigError
from ddpm.runlock import held_by_another, locked_message

CONFIG_MODULE = "ddpm.conf"
log = logging.getLogger("ddpm")


def group_options(group: str) -> str:
    """The options of a config group as ``a|b|c`` (the YAML files of ``conf/<group>/``)."""
    folder = importlib.resources.files(CONFIG_MODULE).joinpath(group)
    return "|".join(sorted(f.name.removesuffix(".yaml") for f in folder.iterdir() if f.name.endswith(".yaml")))


# Keys that were renamed (when every command took the shared ``runtime`` group, and when every concept
# got one name): old key (or key prefix, ending in ".") -> the key to use now, per config name ("*": every command).
RENAMED: dict[str, dict[str, str]] = {
    "*": {"gpu": "runtime", "gpu.": "runtime."},
    "train": {"gpu.grad_accum_steps": "train.grad_accum_steps", "train.sample_steps": "sampler.steps"},
    "sample": {"device": "runtime.device", "precision": "runtime.precision"},
    "visualize": {"device": "runtime.device", "precision": "runtime.precision"},
    "evaluate": {"device": "runtime.device", "real_split": "split"},
    "regimes": {
        "kernel.device": "runtime.device",
        "threads": "runtime.num_threads",
        "data": f"dataset=<{group_options('dataset')}> (images) or synthetic=<{group_options('synthetic')}>",
        "data.n": "dataset.n= (images) or synthetic.n= (synthetic laws)",
        "data.seed": "dataset.subset_seed= (images) or synthetic.seed= (synthetic laws)",
        "data.downsample": "points.downsample",
        **{f"data.{k}": f"synthetic.{k}" for k in ("name", "d", "sigma2", "power", "classes", "mu", "sigma")},
        "data.dataset.": "dataset.",
        "trained.memorised_ratio": "memorisation.threshold",
        "points.n": "dataset.n= (images) or synthetic.n= (synthetic laws)",
        "points.seed": "dataset.subset_seed= (images) or synthetic.seed= (synthetic laws)",
        "trained.use_ema": "use_ema",
    },
}

# What a refused write raises: a full disk, a quota, a file size limit, a read-only or unwritable folder.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM)

# Flags that make Hydra do something other than run the job: leave them to Hydra.
_HYDRA_FLAGS = (
    "-m",
    "--multirun",
    "--cfg",
    "-c",
    "--help",
    "-h",
    "--hydra-help",
    "--info",
    "-i",
    "--resolve",
    "--package",
    "-p",
    "--shell-completion",
    "-sc",
    "--version",
    "--run",
    "-r",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
)


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` (or of the first cause that has one) folded onto one line."""
    seen: BaseException | None = exc
    while seen is not None:
        text = " ".join(str(seen).split())
        if text:
            return text
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)


def renamed_key(config_name: str, arg: str) -> str | None:
    """The one-line message for a command-line override that uses a renamed key, else None."""
    key = arg.split("=", 1)[0].lstrip("+~")
    table = {**RENAMED["*"], **RENAMED.get(config_name, {})}
    if key in table:
        new = table[key]
        return f"{key}= was renamed: use {new if '=' in new else new + '='} instead"
    for old, new in table.items():
        if old.endswith(".") and key.startswith(old):
            return f"{key}= was renamed: use {new}{key[len(old) :]}= instead"
    return None


# Groups that default to null, per config name: a key below one means nothing until an option is chosen.
NULL_GROUPS: dict[str, tuple[str, ...]] = {"regimes": ("synthetic",)}


def needs_group(config_name: str, argv: list[str], arg: str) -> str | None:
    """The one-line message for a key below a null group whose option the command line does not
    choose (``synthetic.n=5`` without ``synthetic=...``: Hydra would say "Unexpected type for root"), else None."""
    key = arg.split("=", 1)[0].lstrip("+~")
    for group in NULL_GROUPS.get(config_name, ()):
        if key.startswith(group + ".") and not any(a.split("=", 1)[0].lstrip("+") == group for a in argv):
            return f"{key}= needs a {group} option: add {group}=<{group_options(group)}>"
    return None


def compose_checked(config_name: str, overrides: list[str]) -> DictConfig:
    """Compose ``config_name`` from command-line ``overrides`` as the command would (``hydra.*``
    ones are Hydra's own and left out); any failure is a :class:`ConfigError` of one line.

    Args:
        config_name: the command's primary config (``train``, ``sample``, ...).
        overrides: ``key=value`` / ``group=option`` strings as typed on the command line.
    """
    kept = [a for a in overrides if not a.lstrip("+~").startswith("hydra.") and not a.lstrip("+~").startswith("hydra/")]
    from hydra import compose, initialize_config_module

    from ddpm.commands import register_schemas  # here, not at the top: the commands' modules import this one

    register_schemas()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            return compose(config_name, overrides=kept)
    except Exception as exc:  # Hydra and OmegaConf raise many types; all mean a bad command line
        raise ConfigError(one_line(exc)) from exc


def precheck(config_name: str, argv: list[str]) -> None:
    """Compose the config from ``argv``'s overrides; exit with one line if that fails."""
    for a in argv:  # also before a multirun (-m) or --cfg, which Hydra would report in many lines
        msg = renamed_key(config_name, a) or needs_group(config_name, argv, a)
        if msg:
            fail(msg)
    if any(a.split("=")[0] in _HYDRA_FLAGS for a in argv):
        return
    try:
        cfg = compose_checked(config_name, argv)
        if "paths" in cfg:  # Hydra makes the run dir below paths.output_dir before the command's checks run
            from ddpm.config import PathsConfig, check

            check(cfg.paths, PathsConfig, "paths.")
    except ConfigError as exc:
        fail(str(exc))
    # torchrun's other ranks skip this: rank 0 of the same launch may already hold the lock.
    if int(os.environ.get("RANK", "0")) == 0:
        refuse_live_run_dir(argv)
        refuse_unwritable_run_dir(argv)


def refuse_unwritable_run_dir(argv: list[str]) -> None:
    """Hydra's first write into ``hydra.run.dir=`` would fail with a traceback: say it in one line
    before, probing the folder (or its nearest existing parent) with a temporary file.

    Args:
        argv: the command line.
    """
    for a in argv:
        if a.startswith("hydra.run.dir="):
            run_dir = Path(a.split("=", 1)[1]).expanduser()
            probe = run_dir
            while not probe.exists() and probe != probe.parent:
                probe = probe.parent
            try:
                with tempfile.TemporaryFile(dir=probe):
                    pass
            except OSError as exc:
                fail(f"cannot write into {run_dir}: {exc.strerror} ({probe}); choose another hydra.run.dir")


def refuse_live_run_dir(argv: list[str]) -> None:
    """Hydra rewrites <run dir>/.hydra/*.yaml and appends to its log before the command runs: refuse
    a ``hydra.run.dir=`` that a live training run holds now, not after those writes."""
    for a in argv:
        if a.startswith("hydra.run.dir="):
            run_dir = Path(a.split("=", 1)[1]).expanduser()
            if held_by_another(run_dir):
                fail(locked_message(run_dir))


def hydra_main(config_name: str, extra_errors: tuple[type[BaseException], ...] = ()) -> Callable:
    """Decorate ``fn(cfg, run_dir)`` into a console-script ``main()`` driven by Hydra; the schemas are
    registered when ``main()`` runs, not when the command's module is imported.

    Args:
        config_name: the primary config, ``conf/<config_name>.yaml``.
        extra_errors: exception types reported as one line besides :data:`ddpm.errors.USER_ERRORS`.
    """
    errors = USER_ERRORS + tuple(extra_errors)

    def decorate(fn: Callable[[DictConfig, Path], Any]) -> Callable[[], Any]:
        @functools.wraps(fn)
        def task(cfg: DictConfig) -> Any:
            run_dir = Path(HydraConfig.get().runtime.output_dir)
            try:
                return fn(cfg, run_dir)
            except errors as exc:
                fail(one_line(exc))
            except OSError as exc:
                if exc.errno not in WRITE_ERRNOS:
                    raise
                # outputs are written one file at a time: the ones before the failed write stay
                fail(f"could not write {exc.filename or 'into ' + str(run_dir)}: {exc.strerror}; the files already in {run_dir} are kept")

        hydra_task = hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name=config_name)(task)

        def main() -> Any:
            from ddpm.commands import register_schemas

            register_schemas()
            precheck(config_name, sys.argv[1:])
            if int(os.environ.get("RANK", "0")) > 0:
                # torchrun: only rank 0 writes the run dir (config copies, log file).
                sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
            return hydra_task()

        main.__doc__ = fn.__doc__
        return main

    return decorate
