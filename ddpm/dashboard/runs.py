"""What the outputs root holds: training runs (config, progress, loss, grids, checkpoints) and the
results of ``ddpm-evaluate``, ``ddpm-regimes`` and the sweep collector."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ddpm.checkpoint import STEP_RE
from ddpm.dashboard.paths import inside
from ddpm.runlock import held_by_another
from ddpm.tables import flatten

# Folders a run (of any command) writes inside itself: never runs of their own, not worth walking.
# Skipped only inside a run, so a run that is itself named ``tb`` or ``samples`` is still found.
RUN_PARTS = {"checkpoints", "samples", "tb", ".hydra", "images"}
_NEVER = {"__pycache__", ".git"}  # skipped at every depth
ARCHIVE = "archive"  # <root>/archive: runs put away from the Runs page (not listed)
LOSS_RE = re.compile(r"\bstep (\d+) loss ([-+0-9.eE]+|nan|inf)\b")
IPS_RE = re.compile(r"\bstep (\d+) loss \S+ .*?\bimg/s ([0-9.]+)")
STAMP_RE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)[,.](\d+)\]")
SESSION_RE = re.compile(r"\]\[INFO\] - ddpm \S+$")  # the first line ddpm-train logs, right before its first step
CKPT_LOG_RE = re.compile(r"\] - checkpoint \S*step_(\d+)\.pt\s*$", re.M)
BEST_LOG_RE = re.compile(r"\] - best\.pt: FID ([-+0-9.eE]+|nan|inf) at step (\d+)", re.M)
LAUNCH_LOG = "launch.log"  # stdout and stderr of a run the dashboard started
EXIT_LINE = "[ddpm-dashboard] ddpm-train exited with status {}"  # appended to launch.log when the process ends
EXIT_RE = re.compile(r"^\[ddpm-dashboard\] ddpm-train exited with status (-?\d+)$")
STOP_CODES = {130, 143, -2, -15}  # SIGINT / SIGTERM: stopped on purpose, a checkpoint written


@dataclass
class Run:
    """One training run directory.

    Args:
        path: the run directory (resolved, inside the outputs root).
        name: its path relative to the outputs root.
        status: ``running`` (a live ddpm-train holds its lock), ``finished`` (metrics.json written),
            ``failed`` (its last start ended with an error: see ``error``) or ``stopped`` (stopped on
            purpose, killed without a trace, or not started yet).
        step: the last step it logged or checkpointed.
        max_steps: ``train.max_steps`` of its config (0 when unknown).
        checkpoints: its checkpoint files: ``last.pt``, ``best.pt``, then the step ones, newest first.
        grids: its sample grids ``samples/step_*.png``, oldest first.
        time_budget_min: ``train.time_budget_min`` of its config (None: the run ends on ``max_steps``).
        elapsed_s: seconds of training: ``train_seconds`` of metrics.json once finished, else the
            time between the first and last lines of each start in train.log (None: nothing logged).
        images_per_s: the training speed of its last logged step (train.log's ``img/s``).
        error: the one-line error of a failed run.
    """

    path: Path
    name: str
    status: str
    step: int
    max_steps: int
    checkpoints: list[Path] = field(default_factory=list)
    grids: list[Path] = field(default_factory=list)
    time_budget_min: float | None = None
    elapsed_s: float | None = None
    images_per_s: float | None = None
    error: str = ""

    @property
    def progress(self) -> tuple[float, str]:
        """The progress bar's fraction and text: time spent of the budget for a run that ends on
        ``train.time_budget_min``, else steps of ``max_steps``."""
        speed = f" · {self.images_per_s:.0f} img/s" if self.images_per_s else ""
        if self.time_budget_min:
            budget_s = 60.0 * self.time_budget_min
            spent = min(self.elapsed_s or 0.0, budget_s)  # the log's clock also runs through grids and checkpoints
            frac = 1.0 if self.status == "finished" else min(spent / budget_s, 1.0)
            return frac, f"{_minutes(spent)} / {_minutes(budget_s)} min of the time budget · step {self.step}{speed}"
        if self.max_steps:
            return min(self.step / self.max_steps, 1.0), f"step {self.step} / {self.max_steps}{speed}"
        return 0.0, f"step {self.step}{speed}"

    @property
    def progress_short(self) -> str:
        """The Runs table's progress cell: minutes of the budget, or steps of max_steps."""
        if self.time_budget_min:
            budget_s = 60.0 * self.time_budget_min
            return f"{_minutes(min(self.elapsed_s or 0.0, budget_s))} / {_minutes(budget_s)} min"
        return f"{self.step} / {self.max_steps} steps" if self.max_steps else f"{self.step} steps"

    def checkpoint_count(self) -> int:
        """Distinct checkpoint files (``last.pt`` is a hard link to the newest step file, not another one)."""
        return len(distinct(self.checkpoints))


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}".removesuffix(".0")


def distinct(paths: list[Path]) -> list[Path]:
    """``paths`` without the ones that are the same file as an earlier one (hard links), order kept."""
    seen, kept = set(), []
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            kept.append(p)
    return kept


def _walk(root: Path) -> list[Path]:
    """Directories under ``root`` (root included), not following symlinks, sorted; a run's own
    folders (:data:`RUN_PARTS`) and ``<root>/archive`` are not entered."""
    found = []
    for here, dirs, _files in os.walk(root, followlinks=False):
        path = Path(here)
        own = RUN_PARTS if _is_run_of_any_command(path, dirs) else set()
        if path == root:
            own = own | {ARCHIVE}
        dirs[:] = sorted(d for d in dirs if d not in own and d not in _NEVER)
        found.append(path)
    return found


def _is_run_of_any_command(path: Path, dirs: list[str]) -> bool:
    """A folder a command wrote into (Hydra's ``.hydra`` in it) or a training run."""
    return ".hydra" in dirs or is_train_run(path)


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
    """``last.pt``, ``best.pt``, then the step checkpoints of a run, newest first (no partial writes,
    no symlinks)."""
    ckpt_dir = path / "checkpoints"
    if not _plain_dir(ckpt_dir):
        return []
    steps = sorted(((int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := STEP_RE.match(p.name)) and plain(p)), reverse=True)
    named = [ckpt_dir / n for n in ("last.pt", "best.pt") if plain(ckpt_dir / n)]
    return named + [p for _, p in steps]


@dataclass
class Checkpoint:
    """One checkpoint file as the Sample page lists it.

    Args:
        path: the file (inside the outputs root).
        step: the step it holds (None when its files do not say).
        fid: the domain FID that made it ``best.pt`` (None for the others).
    """

    path: Path
    step: int | None
    fid: float | None = None

    def label(self, root: str | Path) -> str:
        base = Path(root).expanduser().resolve()
        text = str(self.path.relative_to(base))
        if self.step is not None:
            text += f" · step {self.step}"
        if self.fid is not None:
            text += f" · FID {self.fid:.3g}"
        return text


def checkpoint_steps(run: Path) -> list[Checkpoint]:
    """A run's checkpoints with their steps, without repeats: ``best.pt`` (step and FID from
    train.log), ``last.pt`` (the step file it is a hard link to, else the last checkpoint train.log
    names), then the step files ``last.pt`` is not."""
    files = []
    for p in checkpoints(run):
        try:  # a live run removes its oldest step file as it writes a new one
            st = p.stat()
        except OSError:
            continue
        files.append((p, (st.st_dev, st.st_ino)))
    log_text = _read(run / "train.log")
    by_inode = {inode: int(m.group(1)) for p, inode in files if (m := STEP_RE.match(p.name))}
    out: list[Checkpoint] = []
    last_inode = None
    for p, inode in sorted(files, key=lambda f: f[0].name != "best.pt"):  # best.pt first, the rest in their order
        if p.name == "best.pt":
            best = BEST_LOG_RE.findall(log_text)
            fid, step = (float(best[-1][0]), int(best[-1][1])) if best else (None, None)
            out.append(Checkpoint(p, step, fid))
        elif p.name == "last.pt":
            last_inode = inode
            logged = CKPT_LOG_RE.findall(log_text)
            out.append(Checkpoint(p, by_inode.get(inode, int(logged[-1]) if logged else None)))
        elif inode != last_inode:
            out.append(Checkpoint(p, int(STEP_RE.match(p.name).group(1))))
    return out


def checkpoint_choices(root: str | Path) -> list[Checkpoint]:
    """Every run's checkpoints for the Sample page, the most trained run first and, within a run,
    ``best.pt`` (picked by FID during training) before ``last.pt`` and the older steps: the first
    one is the one to sample from."""
    per_run = [checkpoint_steps(r.path) for r in find_runs(root)]
    per_run = [c for c in per_run if c]
    per_run.sort(key=lambda cs: max((c.step or 0) for c in cs), reverse=True)  # stable: newer run first on a tie
    return [c for cs in per_run for c in cs]


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
    metrics = _metrics(run)
    exit_code, error = last_exit(run)
    running = held_by_another(run)
    if running:
        status, error = "running", ""
    elif metrics is not None:
        status, error = "finished", ""
    elif (exit_code is not None and exit_code != 0 and exit_code not in STOP_CODES) or (exit_code is None and error):
        status = "failed"
        error = error or _exit_words(exit_code)
    else:
        status, error = "stopped", ""
    train_cfg = cfg.get("train") or {}
    max_steps = int(train_cfg.get("max_steps") or 0)
    budget = train_cfg.get("time_budget_min")
    log_text = _read(run / "train.log")
    if metrics is not None and isinstance(metrics.get("train_seconds"), (int, float)):
        elapsed = float(metrics["train_seconds"])
    else:
        elapsed = logged_seconds(log_text, live=running)
    speeds = IPS_RE.findall(log_text)
    base = Path(root).expanduser().resolve()
    return Run(
        run,
        str(run.relative_to(base)) or ".",
        status,
        step,
        max_steps,
        ckpts,
        sample_grids(run),
        time_budget_min=float(budget) if isinstance(budget, (int, float)) and budget > 0 else None,
        elapsed_s=elapsed,
        images_per_s=float(speeds[-1][1]) if speeds else None,
        error=error,
    )


def _exit_words(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"ddpm-train was killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"ddpm-train exited with status {code}"


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if plain(path) else ""


def _metrics(run: Path) -> dict[str, Any] | None:
    """metrics.json of a finished run ({} when unreadable), None when absent."""
    f = run / "metrics.json"
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _stamp(line: str) -> float | None:
    m = STAMP_RE.match(line)
    if not m:
        return None
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + float("0." + m.group(2))


def logged_seconds(log_text: str, live: bool = False, now: float | None = None) -> float | None:
    """Seconds a run has trained by its train.log: for each start (the ``ddpm <version>`` line it
    logs before its first step), the time to the last line of that start; for a live run, the last
    start counts up to ``now``. None when nothing is logged.

    Args:
        log_text: the text of train.log.
        live: whether ddpm-train runs now.
        now: the current time (None: ``time.time()``).
    """
    total, start, last = 0.0, None, None
    for line in log_text.splitlines():
        t = _stamp(line)
        if t is None:
            continue
        if SESSION_RE.search(line):
            if start is not None and last is not None:
                total += max(last - start, 0.0)
            start = t
        last = t
    if start is None or last is None:
        return None
    end = max(time.time() if now is None else now, last) if live else last
    return total + max(end - start, 0.0)


def last_exit(run: Path) -> tuple[int | None, str]:
    """How the last start of a run the dashboard launched ended: (exit status, or None when not
    recorded; its one-line error, '' when none). Read from launch.log after its last ``$`` line: the
    status the dashboard appends, the command's ``error:`` line, else the last line of a traceback."""
    lines = _read(run / LAUNCH_LOG).splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("$ ")]
    if not starts:
        return None, ""
    code, error, exc_line, stopped = None, "", "", False
    for line in lines[starts[-1] + 1 :]:
        if m := EXIT_RE.match(line):
            code = int(m.group(1))
        elif line.startswith("error: "):
            error = line[len("error: ") :].strip()
        elif re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b:?", line):
            exc_line = line.strip()
        elif line.startswith("received SIG"):
            stopped = True
    if stopped and code is None:
        return None, ""
    return code, error or exc_line


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
