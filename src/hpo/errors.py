"""The typed errors of hpo. Each message is one line naming the bad value and the fix.

A plain exception hierarchy: nothing here imports Hydra, so :mod:`hpo.llm`, :mod:`hpo.agents`
and :mod:`hpo.samplers` load without it. Only the Hydra entry points (``python -m hpo.train``'s
``main`` and the ``hpo`` sweeper) turn an :class:`HPOError` into Hydra's one-line form
(:func:`hpo.hydra_errors.reported_by_hydra`), so a user sees one line and a non-zero exit.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataUnavailableError",
    "FailureRateExceeded",
    "HPOError",
    "MetricNotFoundError",
    "SearchSpaceError",
    "first_line",
]


def first_line(exc: BaseException, default: str | None = None) -> str:
    """The first line of ``exc``'s message; ``default`` (else the type's name) when empty."""
    text = str(exc).strip()
    if text:
        return text.splitlines()[0]
    return type(exc).__name__ if default is None else default


class HPOError(Exception):
    """Base class of every error hpo raises on purpose: something the user can fix.

    Its message is one line naming the bad value and the fix. The Hydra entry points print it
    alone, without a stack trace (set HYDRA_FULL_ERROR=1 for the trace); the other commands
    (``hpo.report``, ``hpo.status``, ...) print it and exit non-zero themselves.
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
