"""Checkpoints: written atomically, loaded safely, found again after any interruption.

A checkpoint is one ``torch.save`` file holding only tensors and plain containers, so that
``torch.load(weights_only=True)`` reads it: a file carrying pickled code is refused, not run.
Writes go to a temporary file in the same folder, are fsynced and renamed over the target, so a
kill at any moment leaves either the old or the new file, never a torn one.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ddpm.errors import CheckpointError

log = logging.getLogger(__name__)

STEP_RE = re.compile(r"^step_(\d+)\.pt$")
# Temp files of atomic_save (".step_0000010.pt.ab12cd.tmp") and of the last.pt link swap.
PARTIAL_RE = re.compile(r"^\.(step_\d+\.pt|last\.pt)\..+\.(tmp|lnk)$")
FORMAT = "ddpm-checkpoint-v1"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# Testing hook (used by scripts/fault_drill.py): seconds to pause in the middle of every checkpoint
# write, so that a kill can be aimed inside a write. Unset in normal use.
SLOW_WRITE_ENV = "DDPM_TEST_SLOW_WRITE"


class _PausingWriter:
    """A file wrapper that sleeps once after the first write: makes a write last long enough to hit."""

    def __init__(self, f: Any, pause_s: float) -> None:
        self._f, self._pause_s, self._paused = f, pause_s, False

    def write(self, data: bytes) -> int:
        n = self._f.write(data)
        if not self._paused:
            self._f.flush()  # the torn half is really on disk when the kill lands
            self._paused = True
            time.sleep(self._pause_s)
        return n

    def flush(self) -> None:
        self._f.flush()


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write a file through a temp file + fsync + rename; the old file survives any failure.

    The temp file (``.<name>.<random>.tmp``) lies beside the target, so the rename stays on one file
    system; the folder is fsynced after it so that the rename itself survives a power cut.

    Args:
        path: the target file; its folder is created if needed.
        write: writes the content into the open binary file it is given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` through :func:`atomic_write`; the old file survives any failure.

    Args:
        obj: what to save (tensors and plain containers only, so that the safe loader reads it).
        path: the target file; its folder is created if needed.
    """
    pause = float(os.environ.get(SLOW_WRITE_ENV) or 0)
    return atomic_write(path, lambda f: torch.save(obj, _PausingWriter(f, pause) if pause > 0 else f))


def clean_partial_writes(ckpt_dir: str | Path) -> list[Path]:
    """Delete the temp files that a killed writer left in ``ckpt_dir``; returns what was removed.

    Call it only while holding the run directory's lock: a live writer's temp file looks the same.

    Args:
        ckpt_dir: a checkpoint folder (missing is fine).
    """
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    removed = []
    for p in ckpt_dir.iterdir():
        if PARTIAL_RE.match(p.name):
            try:
                p.unlink(missing_ok=True)
            except OSError as exc:  # a read-only folder: the next write reports the real problem
                log.warning("could not remove the incomplete write %s: %s", p, exc)
                continue
            removed.append(p)
    if removed:
        log.warning(
            "removed %d incomplete checkpoint write(s) left by an interrupted run: %s", len(removed), ", ".join(p.name for p in removed)
        )
    return removed


def _write_failure(exc: BaseException) -> str:
    """The operating system's reason behind a failed write (torch.save wraps it in a RuntimeError)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return seen.strerror or str(seen)
        seen = seen.__cause__ or seen.__context__
    return " ".join(str(exc).split()) or type(exc).__name__


def save_checkpoint(state: dict[str, Any], ckpt_dir: str | Path, step: int, keep: int) -> Path:
    """Write ``step_XXXXXXX.pt`` and point ``last.pt`` at it; keep the ``keep`` newest step files."""
    ckpt_dir = Path(ckpt_dir)
    state = {"format": FORMAT, **state}
    target = ckpt_dir / f"step_{step:07d}.pt"
    try:
        step_path = atomic_save(state, target)
    except (OSError, RuntimeError) as exc:  # full disk, read-only or unwritable folder, quota, file size limit
        raise CheckpointError(
            f"could not write checkpoint {target}: {_write_failure(exc)}; the checkpoints already in {ckpt_dir} are untouched"
        ) from exc
    # last.pt is a hard link to the same bytes (no second write), swapped in atomically.
    tmp_link = ckpt_dir / f".last.pt.{os.getpid()}.lnk"
    tmp_link.unlink(missing_ok=True)
    try:
        os.link(step_path, tmp_link)
        os.replace(tmp_link, ckpt_dir / "last.pt")
    except OSError:  # file systems without hard links
        tmp_link.unlink(missing_ok=True)
        try:
            atomic_save(state, ckpt_dir / "last.pt")
        except OSError as exc:  # step_path is complete: resume=latest finds it
            raise CheckpointError(f"wrote {step_path} but could not update {ckpt_dir / 'last.pt'}: {exc.strerror or exc}") from exc
    if keep >= 0:
        for old in step_checkpoints(ckpt_dir)[keep:]:
            if old != step_path:
                old.unlink(missing_ok=True)
    return step_path


def step_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Step checkpoints of a folder, newest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := STEP_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def _unpickling_reason(exc: BaseException) -> str:
    """The specific line of torch's weights-only error, without its advice to load unsafely."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation", "WeightsUnpickler error")
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    specific = [ln for ln in lines if not ln.startswith(boilerplate)]
    return " ".join(specific).rstrip(".") or (lines[0] if lines else "unreadable content")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; every failure is a :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _unpickling_reason(exc)
        if "GLOBAL" in reason:  # the file names Python callables: code, not weights
            raise CheckpointError(
                f"checkpoint {path} was refused by the safe loader (weights_only=True), it carries code: {reason}; do not load it unsafely"
            ) from exc
        raise CheckpointError(f"checkpoint {path} is corrupt or not a checkpoint (the safe loader stopped at: {reason})") from exc
    except Exception as exc:  # torn or garbage bytes make the unpickler raise anything (EOFError, IndexError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = first.split(". ")[0].rstrip(".")  # torch appends paragraphs of generic advice
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {first}") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a ddpm checkpoint (no '{FORMAT}' marker)")
    return state


def find_latest(ckpt_dir: str | Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of a folder that loads; broken files are skipped with a warning."""
    ckpt_dir = Path(ckpt_dir)
    candidates = step_checkpoints(ckpt_dir)
    last = ckpt_dir / "last.pt"
    if last.is_file():
        candidates.insert(0, last)
    best: tuple[int, Path, dict[str, Any]] | None = None
    for path in candidates:
        try:
            state = load_checkpoint(path, map_location)
        except CheckpointError as exc:
            log.warning("skipping %s", exc)
            continue
        if best is None or state["step"] > best[0]:
            best = (state["step"], path, state)
        if path != last:  # step files are sorted newest first: the first good one wins
            break
    return None if best is None else (best[1], best[2])
