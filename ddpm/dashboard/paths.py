"""Every file the dashboard reads or writes is resolved through :func:`inside`."""

from __future__ import annotations

from pathlib import Path

from ddpm.errors import ConfigError


def inside(root: str | Path, path: str | Path) -> Path:
    """``path`` (relative to ``root``, or absolute) resolved, refused unless it lies inside ``root``.

    Symlinks are resolved first, so a link that points out of the root is refused like ``..`` is.

    Args:
        root: the outputs root the dashboard serves.
        path: a path from the user or from a listing of the root.
    """
    base = Path(root).expanduser().resolve()
    text = str(path)
    if "\x00" in text:
        raise ConfigError(f"refused path {text!r}: it contains a NUL byte")
    target = (base / Path(text).expanduser()).resolve()
    if target != base and base not in target.parents:
        raise ConfigError(f"refused path {text}: it is outside the outputs root {base}")
    return target


def relative(root: str | Path, path: str | Path) -> str:
    """``path`` (inside ``root``) as a string relative to ``root``, for display and as a widget value.

    Args:
        root: the outputs root.
        path: a path inside it.
    """
    return str(inside(root, path).relative_to(Path(root).expanduser().resolve()))
