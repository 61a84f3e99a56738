"""The typed errors of hpo. Each message is one line naming the bad value and the fix."""

from __future__ import annotations


class HPOError(Exception):
    """Base class of every error hpo raises on purpose."""


class ConfigError(HPOError, ValueError):
    """The user's configuration or command line is invalid."""


class SearchSpaceError(ConfigError):
    """A search-space override or preset does not parse or does not fit the config."""


class MetricNotFoundError(HPOError, KeyError):
    """The objective metric named in config was never logged by the task."""

    def __str__(self) -> str:  # KeyError quotes its message; we want the sentence
        return str(self.args[0]) if self.args else ""


class DataUnavailableError(HPOError, RuntimeError):
    """A dataset is not on disk and cannot be downloaded here."""


class FailureRateExceeded(HPOError, RuntimeError):
    """Too many trials failed: the sweep stops."""
