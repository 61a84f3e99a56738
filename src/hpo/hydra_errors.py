"""The Hydra side of :mod:`hpo.errors`: an :class:`~hpo.errors.HPOError` in Hydra's one-line form.

Used only by the Hydra entry points (``hpo.train.main`` and the ``hpo`` sweeper's facade): Hydra
prints a ``CompactHydraException``'s message alone, without a stack trace, and exits non-zero
(set HYDRA_FULL_ERROR=1 for the trace). Everything below them raises plain ``HPOError``\\ s.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode

from hpo.errors import HPOError

__all__ = ["HydraOneLine", "reported_by_hydra"]


class HydraOneLine(CompactHydraException):
    """An :class:`~hpo.errors.HPOError` for Hydra to print as one line (its ``__cause__``)."""


@contextmanager
def reported_by_hydra(*, job: bool = False) -> Iterator[None]:
    """Turn an ``HPOError`` raised inside into :class:`HydraOneLine`.

    Args:
        job: The block is a task function. In a sweep (``-m``) its error is left as it is:
            the sweeper records it on the trial (``hpo:error``, ``Type: message``) instead of
            Hydra printing it.
    """
    try:
        yield
    except HPOError as exc:
        if job and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        raise HydraOneLine(str(exc)) from exc
