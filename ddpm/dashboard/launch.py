"""Compose, check, launch, stop and resume ``ddpm-train`` runs.

The only program started is ``python -m ddpm.train`` with a list argv (no shell), in a run
directory inside the outputs root; the config is checked first with the CLI's own compose step.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ddpm.cli import CONFIG_MODULE, compose_checked, renamed_key
from ddpm.dashboard.paths import inside
from ddpm.dashboard.runs import ARCHIVE, EXIT_LINE, LAUNCH_LOG, is_train_run
from ddpm.errors import ConfigError
from ddpm.runlock import RunDirLocked, RunLock, held_by_another
from ddpm.train.config import validate_train

RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
# Keys the dashboard sets itself: the run directory (kept inside the root) and resuming (the Resume button).
RESERVED = ("hydra", "resume")
COMPOSE_LOCK = threading.Lock()  # Hydra's GlobalHydra is process-wide; sessions run in threads
_LAUNCH_LOCK = threading.Lock()  # claiming a run directory and starting its process is one step
_children: dict[Path, subprocess.Popen] = {}  # runs started by this server, polled so none lingers as a zombie
# The experiment the Train page starts from on a machine without CUDA: a short run sized for a CPU.
CPU_EXPERIMENT = "quickstart"


class RunExists(ConfigError):
    """A run of that name exists already (a second Launch of the same name starts nothing)."""


def default_experiment() -> str | None:
    """The ``experiment`` the Train page preselects: :data:`CPU_EXPERIMENT` without CUDA, else none."""
    import torch

    return None if torch.cuda.is_available() else CPU_EXPERIMENT


def train_groups() -> dict[str, tuple[str | None, list[str]]]:
    """The config groups ``train.yaml`` picks from: group -> (its default option, every option
    shipped in the ``ddpm.conf`` package)."""
    conf = resources.files(CONFIG_MODULE)
    defaults = OmegaConf.create(conf.joinpath("train.yaml").read_text()).get("defaults", [])
    groups: dict[str, tuple[str | None, list[str]]] = {}
    for entry in defaults:
        if not isinstance(entry, DictConfig):
            continue
        for group, default in entry.items():
            folder = conf.joinpath(str(group))
            if folder.is_dir():
                options = sorted(f.name[:-5] for f in folder.iterdir() if f.name.endswith(".yaml"))
                groups[str(group)] = (None if default is None else str(default), options)
    return groups


def group_options(group: str) -> list[str]:
    """Options of any packaged config group (e.g. ``sampler``), from the ``ddpm.conf`` resources.

    Args:
        group: the group's folder name in ``conf/``.
    """
    folder = resources.files(CONFIG_MODULE).joinpath(group)
    if not folder.is_dir():
        raise ConfigError(f"no config group {group!r} in {CONFIG_MODULE}")
    return sorted(f.name[:-5] for f in folder.iterdir() if f.name.endswith(".yaml"))


def parse_extra(text: str) -> list[str]:
    """Extra overrides typed as on the command line (``train.max_steps=50 schedule.T=100``).

    Quotes group words as a shell would, but nothing is run; ``hydra.*`` and ``resume`` are refused
    because the dashboard sets the run directory and resuming itself.

    Args:
        text: whitespace-separated ``key=value`` overrides.
    """
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise ConfigError(f"extra overrides: {exc}") from None
    for w in words:
        key = w.split("=", 1)[0].lstrip("+~")
        if "=" not in w:
            raise ConfigError(f"extra override {w!r} is not key=value")
        if key.split(".")[0].split("/")[0] in RESERVED:
            raise ConfigError(f"extra override {w!r}: {key} is set by the dashboard (run name, Resume button)")
    return words


def build_overrides(choices: dict[str, str | None], extra: str) -> list[str]:
    """Group choices (``{"model": "tiny", "experiment": None}``) and the extra overrides as one list.

    Args:
        choices: the option picked per group; None leaves the group's default.
        extra: the extra overrides, as typed.
    """
    picked = [f"{g}={o}" for g, o in choices.items() if o]
    return picked + parse_extra(extra)


def check_config(overrides: list[str]) -> DictConfig:
    """Compose and validate the training config the command line ``overrides`` give, exactly as
    ``ddpm-train`` does before it trains; a bad one is a one-line :class:`ConfigError`.

    Args:
        overrides: the launch's overrides (without ``hydra.run.dir``).
    """
    import ddpm.train  # noqa: F401  (its ``main`` registers the config schemas, as for the command)

    for o in overrides:
        if msg := renamed_key("train", o):
            raise ConfigError(msg)
    with COMPOSE_LOCK:
        try:
            cfg = compose_checked("train", overrides)
        except ConfigError as exc:
            reason = hydra_reason(exc)
            if not reason:
                raise
            raise ConfigError(f"{exc}: {reason}") from exc
    validate_train(cfg)
    return cfg


def hydra_reason(exc: BaseException) -> str:
    """Why Hydra refused an override when its own message does not say (``Error merging override
    train.max_steps=abc``): the first line of the first cause that adds something, '' when none does."""
    told = " ".join(str(exc).split())
    seen = exc.__cause__
    while seen is not None:
        first = (str(seen).strip().splitlines() or [""])[0].strip()
        if first and "$VALUE" not in first and " ".join(first.split()) not in told:
            return first
        seen = seen.__cause__ or seen.__context__
    return ""


def run_path(root: str | Path, name: str) -> Path:
    """``<root>/train/<name>`` for a checked run name (it may exist).

    Args:
        root: the outputs root.
        name: letters, digits, ``_ . -``.
    """
    if not RUN_NAME_RE.match(name):
        raise ConfigError(f"run name {name!r}: use letters, digits, '_', '.' and '-' (at most 80, not starting with a symbol)")
    return inside(root, Path("train") / name)


def _exists_message(name: str) -> str:
    return f"run train/{name} exists already: pick another name, or resume it from the Runs page"


def run_dir_for(root: str | Path, name: str) -> Path:
    """The directory of a new run ``name``: ``<root>/train/<name>``, refused (:class:`RunExists`) if
    it exists already.

    Args:
        root: the outputs root.
        name: letters, digits, ``_ . -``.
    """
    run = run_path(root, name)
    if run.exists():
        raise RunExists(_exists_message(name))
    return run


def launch_overrides(overrides: list[str]) -> list[str]:
    """The overrides a launch passes: ``train.progress=false`` added unless given (the launch log
    then holds the run's log lines, not a progress bar redrawn at every step)."""
    given = any(o.lstrip("+~").split("=", 1)[0] == "train.progress" for o in overrides)
    return list(overrides) if given else [*overrides, "train.progress=false"]


def command_line(root: str | Path, name: str, overrides: list[str]) -> str:
    """The ``ddpm-train`` command line a launch of ``name`` runs, as shown on the Train page.

    Args:
        root: the outputs root.
        name: the run's name (left out of the line when it is not a valid name).
        overrides: the checked overrides.
    """
    words = launch_overrides(overrides)
    with contextlib.suppress(ConfigError):
        words.append(f"hydra.run.dir={_hydra_path(run_path(root, name))}")
    return "ddpm-train " + shlex.join(words)


def _hydra_path(path: Path) -> str:
    """``path`` as a Hydra override value (quoted when its characters need it)."""
    text = str(path)
    if re.fullmatch(r"[A-Za-z0-9_./-]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def train_argv(run: Path, overrides: list[str]) -> list[str]:
    """The argv of ``ddpm-train`` (this interpreter, ``-m ddpm.train``) for ``run``.

    Args:
        run: the run directory, already resolved inside the root.
        overrides: checked training overrides.
    """
    return [sys.executable, "-m", "ddpm.train", *overrides, f"hydra.run.dir={_hydra_path(run)}"]


def _start(run: Path, argv: list[str]) -> subprocess.Popen:
    run.mkdir(parents=True, exist_ok=True)
    with open(run / LAUNCH_LOG, "ab") as log:
        log.write(f"$ {shlex.join(argv)}\n".encode())
        log.flush()
        # Own session: the run outlives a restart of the dashboard and its Ctrl-C.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _children[run] = proc
    threading.Thread(target=_record_exit, args=(run, proc), name=f"watch {run.name}", daemon=True).start()
    return proc


def _record_exit(run: Path, proc: subprocess.Popen) -> None:
    """Append the exit status to launch.log when the process ends: the Runs page tells a failed
    start from a stopped run by it."""
    code = proc.wait()
    try:
        with open(run / LAUNCH_LOG, "a") as log:
            log.write(EXIT_LINE.format(code) + "\n")
    except OSError:  # the folder went away (archived or deleted after the run ended)
        pass


def launch(root: str | Path, name: str, overrides: list[str]) -> subprocess.Popen:
    """Check the config and start ``ddpm-train`` in ``<root>/train/<name>``.

    Args:
        root: the outputs root.
        name: the new run's name.
        overrides: training overrides (group choices and extra ones).
    """
    for o in overrides:
        parse_extra(shlex.quote(o))  # the reserved keys are refused here too, whoever built the list
    check_config(overrides)
    with _LAUNCH_LOCK:  # two clicks in a row: the second finds the folder the first one made
        run = run_dir_for(root, name)
        run.parent.mkdir(parents=True, exist_ok=True)
        try:
            run.mkdir()
        except FileExistsError:
            raise RunExists(_exists_message(name)) from None
        return _start(run, train_argv(run, launch_overrides(overrides)))


def run_overrides(run: Path) -> list[str]:
    """The task overrides a run was started with (Hydra's ``.hydra/overrides.yaml``), ``resume`` left out."""
    f = run / ".hydra" / "overrides.yaml"
    if not f.is_file():
        raise ConfigError(f"{run} has no .hydra/overrides.yaml: it never started, nothing to resume")
    saved = OmegaConf.to_container(OmegaConf.load(f))
    if not isinstance(saved, list):
        raise ConfigError(f"{f} is not a list of overrides")
    kept = [str(o) for o in saved if not str(o).lstrip("+~").startswith("resume=")]
    for o in kept:
        parse_extra(shlex.quote(o))  # a hand-edited file must not move the run dir either
    return kept


def is_live(run: Path) -> bool:
    """Whether ``ddpm-train`` trains in ``run`` now (it holds the lock, or this server just started it)."""
    for path, proc in list(_children.items()):  # reap every ended child, not only this run's
        if proc.poll() is not None:
            _children.pop(path, None)
    return run in _children or held_by_another(run)


def resume(root: str | Path, path: str | Path) -> subprocess.Popen:
    """Continue a stopped run in its own directory with its own overrides and ``resume=latest``.

    Args:
        root: the outputs root.
        path: the run directory (relative to the root).
    """
    run = inside(root, path)
    if is_live(run):
        raise ConfigError(f"{path} is still training: stop it first")
    overrides = [*run_overrides(run), "resume=latest"]
    check_config(overrides)
    return _start(run, train_argv(run, overrides))


def trainer_pid(run: Path) -> int | None:
    """The pid of the live ``ddpm-train`` holding ``run``'s lock (written into ``.lock``), else None."""
    if not held_by_another(run):
        return None
    try:
        return int((run / ".lock").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stop(root: str | Path, path: str | Path, wait_s: float = 0.0) -> bool:
    """Send SIGTERM to the run's ``ddpm-train``: it finishes its step, writes a checkpoint and exits.

    Args:
        root: the outputs root.
        path: the run directory (relative to the root).
        wait_s: how long to wait for it to exit (0: return at once).
    Returns:
        whether a process was signalled.
    """
    run = inside(root, path)
    pid = trainer_pid(run)
    proc = _children.get(run)
    if pid is None and proc is not None and proc.poll() is None:
        pid = proc.pid  # started moments ago: not holding the lock yet
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while wait_s and time.monotonic() < deadline and is_live(run):
        if proc is not None:
            proc.poll()
        time.sleep(0.1)
    return True


def _removable(root: str | Path, path: str | Path) -> Path:
    """The run directory ``path`` if it may be archived or deleted: a training run inside the
    outputs root (not the root itself) that does not train now."""
    run = inside(root, path)
    if run == Path(root).expanduser().resolve() or not run.is_dir() or not is_train_run(run):
        raise ConfigError(f"{path} is not a training run under the outputs root")
    if is_live(run):
        raise ConfigError(f"{path} is training: stop it first")
    return run


def archive(root: str | Path, path: str | Path) -> Path:
    """Move a run that does not train to ``<root>/archive/<its path>`` (a number added when that
    is taken); the Runs page no longer lists it, moving the folder back lists it again.

    Args:
        root: the outputs root.
        path: the run directory (relative to the root).
    Returns:
        the run's new directory.
    """
    run = _removable(root, path)
    base = Path(root).expanduser().resolve()
    rel = run.relative_to(base)
    if rel.parts[0] == ARCHIVE:
        raise ConfigError(f"{path} is archived already")
    dest = inside(base, Path(ARCHIVE) / rel)
    n = 1
    while dest.exists():
        n += 1
        dest = inside(base, Path(ARCHIVE) / rel.parent / f"{rel.name}-{n}")
    try:
        with RunLock(run):  # a ddpm-train starting in it now is refused until the move is done
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(run, dest)
    except RunDirLocked:
        raise ConfigError(f"{path} is training: stop it first") from None
    return dest


def delete(root: str | Path, path: str | Path) -> None:
    """Delete a run that does not train, with its checkpoints (symlinks in it are removed, never
    followed).

    Args:
        root: the outputs root.
        path: the run directory (relative to the root).
    """
    run = _removable(root, path)
    try:
        with RunLock(run):
            shutil.rmtree(run)
    except RunDirLocked:
        raise ConfigError(f"{path} is training: stop it first") from None
