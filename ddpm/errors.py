"""User-facing errors: raised for anything a user can fix; ``ddpm.cli.hydra_main`` turns them
into one ``error: ...`` line and exit code :data:`EXIT_USAGE`."""

from __future__ import annotations

EXIT_USAGE = 2


class ConfigError(ValueError):
    """A bad value in the configuration or on the command line."""


class DataError(RuntimeError):
    """A dataset that is missing, empty or malformed."""


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, unsafe or does not match the config."""


USER_ERRORS = (ConfigError, DataError, CheckpointError)
