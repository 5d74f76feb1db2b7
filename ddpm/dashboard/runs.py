"""What the outputs root holds: training runs (config, progress, loss, grids, checkpoints) and the
results of ``ddpm-evaluate``, ``ddpm-regimes`` and the sweep collector."""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ddpm.checkpoint import STEP_RE
from ddpm.dashboard.paths import inside
from ddpm.runlock import held_by_another
from ddpm.tables import flatten

# Folders a run writes inside itself: never runs of their own, not worth walking.
_SKIP = {"checkpoints", "samples", "tb", ".hydra", "images", "__pycache__", ".git"}
LOSS_RE = re.compile(r"\bstep (\d+) loss ([-+0-9.eE]+|nan|inf)\b")
LAUNCH_LOG = "launch.log"  # stdout and stderr of a run the dashboard started


@dataclass
class Run:
    """One training run directory.

    Args:
        path: the run directory (resolved, inside the outputs root).
        name: its path relative to the outputs root.
        status: ``running`` (a live ddpm-train holds its lock), ``finished`` (metrics.json written)
            or ``stopped`` (neither: stopped, crashed or not started).
        step: the last step it logged or checkpointed.
        max_steps: ``train.max_steps`` of its config (0 when unknown).
        checkpoints: its checkpoint files, newest step first (``last.pt`` first).
        grids: its sample grids ``samples/step_*.png``, oldest first.
    """

    path: Path
    name: str
    status: str
    step: int
    max_steps: int
    checkpoints: list[Path] = field(default_factory=list)
    grids: list[Path] = field(default_factory=list)


def _walk(root: Path) -> list[Path]:
    """Directories under ``root`` (root included), not following symlinks, sorted."""
    found = []
    for here, dirs, _files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP)
        found.append(Path(here))
    return found


def is_train_run(path: Path) -> bool:
    """A directory ``ddpm-train`` wrote into (its log, checkpoints or lock) or the dashboard launched."""
    return any((path / n).exists() for n in ("train.log", "checkpoints", ".lock", LAUNCH_LOG))


def read_config(path: Path) -> dict[str, Any]:
    """The run's resolved ``config.yaml`` (else Hydra's ``.hydra/config.yaml``) as a dict; {} if none."""
    for cand in (path / "config.yaml", path / ".hydra" / "config.yaml"):
        if plain(cand):
            try:
                cfg = OmegaConf.to_container(OmegaConf.load(cand), resolve=False)
            except Exception:  # a half-written or hand-edited file: show the run without it
                continue
            if isinstance(cfg, dict):
                return cfg
    return {}


def loss_curve(path: Path) -> list[tuple[int, float]]:
    """(step, loss) pairs of a run: from ``train.log``, else from its TensorBoard events."""
    log_file = path / "train.log"
    if plain(log_file):
        points = [(int(m.group(1)), float(m.group(2))) for m in LOSS_RE.finditer(log_file.read_text(errors="replace"))]
        if points:
            return points
    return tensorboard_scalars(path / "tb", "train/loss")


def tensorboard_scalars(tb_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) pairs of one scalar tag from the TensorBoard event files in ``tb_dir``."""
    if not _plain_dir(tb_dir) or not any(tb_dir.glob("events.out.tfevents.*")):
        return []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags().get("scalars", []):
        return []
    return [(int(e.step), float(e.value)) for e in acc.Scalars(tag)]


def plain(path: Path) -> bool:
    """A regular file that is not a symlink (a link could point out of the outputs root)."""
    return path.is_file() and not path.is_symlink()


def _plain_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def checkpoints(path: Path) -> list[Path]:
    """``last.pt`` then the step checkpoints of a run, newest first (no partial writes, no symlinks)."""
    ckpt_dir = path / "checkpoints"
    if not _plain_dir(ckpt_dir):
        return []
    steps = sorted(((int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := STEP_RE.match(p.name)) and plain(p)), reverse=True)
    last = [ckpt_dir / "last.pt"] if plain(ckpt_dir / "last.pt") else []
    return last + [p for _, p in steps]


def sample_grids(path: Path) -> list[Path]:
    """The grids drawn during training, ``samples/step_*.png``, oldest first (no symlinks)."""
    return sorted(p for p in (path / "samples").glob("step_*.png") if plain(p)) if _plain_dir(path / "samples") else []


def run_info(root: str | Path, path: str | Path) -> Run:
    """Everything the Runs page shows of one run.

    Args:
        root: the outputs root.
        path: the run directory (relative to the root, or absolute inside it).
    """
    run = inside(root, path)
    cfg = read_config(run)
    curve = loss_curve(run)
    ckpts = checkpoints(run)
    ckpt_steps = [int(m.group(1)) for p in ckpts if (m := STEP_RE.match(p.name))]
    step = max([s for s, _ in curve[-1:]] + ckpt_steps[:1] + [0])
    if held_by_another(run):
        status = "running"
    elif (run / "metrics.json").is_file():
        status = "finished"
    else:
        status = "stopped"
    max_steps = int((cfg.get("train") or {}).get("max_steps") or 0)
    base = Path(root).expanduser().resolve()
    return Run(run, str(run.relative_to(base)) or ".", status, step, max_steps, ckpts, sample_grids(run))


def find_runs(root: str | Path) -> list[Run]:
    """Every training run under the outputs root, newest first (by last change)."""
    base = Path(root).expanduser().resolve()
    if not base.is_dir():
        return []
    runs = [run_info(base, d) for d in _walk(base) if is_train_run(d)]
    return sorted(runs, key=lambda r: _mtime(r.path), reverse=True)


def _mtime(path: Path) -> float:
    times = [p.stat().st_mtime for p in (path, path / "train.log", path / LAUNCH_LOG, path / "checkpoints") if p.exists()]
    return max(times, default=0.0)


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a text file ('' when it does not exist)."""
    if not plain(path):
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def results(root: str | Path, name: str) -> list[tuple[str, dict[str, Any]]]:
    """Every ``name`` JSON file (``metrics.json``, ``regimes.json``) under the root that is not a
    training run's own summary: (folder relative to the root, flattened scalars)."""
    base = Path(root).expanduser().resolve()
    if not base.is_dir():
        return []
    found = []
    for d in _walk(base):
        f = d / name
        if f.is_file() and not f.is_symlink() and not is_train_run(d):
            try:
                data = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            found.append((str(d.relative_to(base)) or ".", flatten(data)))
    return found


def files(root: str | Path, pattern: str) -> list[Path]:
    """Regular files under the root matching a glob ``pattern`` (symlinks left out), sorted."""
    base = Path(root).expanduser().resolve()
    if not base.is_dir():
        return []
    return [d / f.name for d in _walk(base) for f in sorted(d.glob(pattern)) if f.is_file() and not f.is_symlink()]


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file (a sweep table written by the collector)."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
