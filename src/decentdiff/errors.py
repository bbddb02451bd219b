"""User-facing errors.

Every failure a user can cause (bad path, corrupt file, wrong config value, a RUN made from other
data, ...) raises a :class:`DecentDiffError` subclass whose message is one line naming the problem and
the fix. The CLI prints ``decentdiff: error: <message>`` and exits with status 2; ``--debug`` shows the
traceback. Programming errors are not wrapped and keep their traceback.
"""

from __future__ import annotations


class DecentDiffError(Exception):
    """Base class of every error meant for the user (exit status 2 in the CLI)."""

    exit_code = 2


class DataError(DecentDiffError):
    """A data source is missing, unreadable, corrupt or inconsistent."""


class ConfigError(DecentDiffError):
    """A configuration value, override or option is invalid."""


class CheckpointError(DecentDiffError):
    """A checkpoint is missing, truncated, altered or does not match the model."""


class RunError(DecentDiffError):
    """A run directory lacks something a command needs, or was made from different data."""


class TrainingError(DecentDiffError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""
