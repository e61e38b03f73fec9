"""User-facing errors.

Anything the user can fix (a wrong path, a bad flag, a checkpoint from another backbone) raises
:class:`UserError`. The CLI prints its message on one line and exits with code 2, with no traceback.
Messages name the offending file or value and say how to fix it.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input; printed as one line by the CLI (exit code 2)."""

    exit_code = 2


class DataError(UserError):
    """Missing, empty or unreadable data."""


class CheckpointError(UserError):
    """A file that is not a selfsup checkpoint, or one that does not fit the requested model."""


class ConfigError(UserError):
    """An invalid configuration value or flag."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""
