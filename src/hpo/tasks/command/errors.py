"""The command task's errors."""

from __future__ import annotations

from hpo.errors import HPOError

__all__ = ["CommandError", "CommandFailedError", "CommandTimeoutError"]


class CommandError(HPOError, RuntimeError):
    """The command could not run, failed, or left no usable metrics."""


class CommandFailedError(CommandError):
    """The command exited with a non-zero code (or was killed by a signal)."""


class CommandTimeoutError(CommandError, TimeoutError):
    """The command ran longer than ``command.timeout_s`` and was killed."""
