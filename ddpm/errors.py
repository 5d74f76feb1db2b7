"""User-facing errors: one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

EXIT_USAGE = 2


class ConfigError(ValueError):
    """A bad value in the configuration or on the command line."""


class DataError(RuntimeError):
    """A dataset that is missing, empty or malformed."""


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, unsafe or does not match the config."""


USER_ERRORS = (ConfigError, DataError, CheckpointError)


def report_user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the project's user errors raised by ``fn`` into ``error: ...`` on stderr and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            msg = " ".join(str(exc).split())
            log.error(msg)
            print(f"error: {msg}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USAGE)

    return wrapper
