"""The typed errors of hpo. Each message is one line naming the bad value and the fix."""

from __future__ import annotations

from hydra.errors import CompactHydraException


def first_line(exc: BaseException, default: str | None = None) -> str:
    """The first line of ``exc``'s message; ``default`` (else the type's name) when empty."""
    text = str(exc).strip()
    if text:
        return text.splitlines()[0]
    return type(exc).__name__ if default is None else default


class HPOError(CompactHydraException):
    """Base class of every error hpo raises on purpose.

    A ``CompactHydraException``: Hydra prints its message alone, without a stack trace, when it
    ends a run (set HYDRA_FULL_ERROR=1 for the trace).
    """


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
