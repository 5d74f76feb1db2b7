"""Guards of a run directory: one live ``ddpm-train`` per run directory (an exclusive ``flock`` on
``<run_dir>/.lock``), and no command replaces an earlier run's outputs without ``overwrite=true``
(:func:`check_outputs`).

The kernel drops the lock when its process dies, however it dies, so a killed run never leaves a
stale lock behind and ``resume=latest`` works right after.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from ddpm.errors import ConfigError


class RunDirLocked(RuntimeError):
    """Another live process trains in this run directory."""


def locked_message(run_dir: Path) -> str:
    return f"another ddpm-train process is running in {run_dir}; wait for it to end or choose another hydra.run.dir"


class RunLock:
    """Hold ``<run_dir>/.lock`` (with this process's pid in it) for the duration of a ``with``."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise RunDirLocked(locked_message(self.path.parent)) from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


def held_by_another(run_dir: Path) -> bool:
    """Whether a live process holds ``run_dir``'s lock (creates nothing, takes nothing)."""
    try:
        fd = os.open(Path(run_dir) / ".lock", os.O_RDONLY)
    except OSError:  # no lock file (or no such directory): nobody has trained there
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock taken just now
    return False


def check_outputs(run_dir: Path, names: tuple[str, ...], overwrite: bool) -> None:
    """Refuse to replace the outputs of an earlier run unless ``overwrite=true``.

    Args:
        run_dir: the command's run dir.
        names: the files and folders the command writes there.
        overwrite: the command's ``overwrite`` setting.
    """
    found = [n for n in names if (run_dir / n).exists()]
    if found and not overwrite:
        raise ConfigError(
            f"{run_dir} already holds {', '.join(found)} from an earlier run; choose another hydra.run.dir or pass overwrite=true"
        )
