"""The storage lost mid-sweep: its real cause in one line, transient errors retried, and the
results that could not be told kept beside their trials and told on the next run.

- :func:`lost_storage` turns a storage failure of a SQLite study into a :class:`StorageLost`
  that names the real cause (the folder is gone, the file is gone, it is read-only) instead of
  the SQLAlchemy/Optuna message (e.g. "invalid data in the commit") a write ends with.
- :func:`with_retries` retries a storage call on "database is locked"/"busy" with backoff.
- :func:`save_unreported` writes a finished trial's outcome as ``hpo_unreported.json`` in its
  output dir when it cannot be told; :func:`tell_unreported` tells those of RUNNING trials
  when the next run opens the study, before orphans are judged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.trial import TrialState

from hpo.errors import HPOError
from hpo.storage import retrying

log = logging.getLogger(__name__)

UNREPORTED = "hpo_unreported.json"
T = TypeVar("T")
_TRANSIENT = ("database is locked", "database is busy", "database table is locked")
_READ_ONLY = ("readonly database", "read-only file system", "permission denied")
_RESUME = "rerun the same command to resume"


class StorageLost(HPOError, RuntimeError):
    """The sweep's storage cannot be written any more; the message names the cause."""


def sqlite_path(url: str | None) -> Path | None:
    """The database file of a ``sqlite:///`` URL; None for other storages and memory."""
    if not url or not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _chain(exc: BaseException | None) -> Iterable[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _text(exc: BaseException | None) -> str:
    return " ".join(str(e) for e in _chain(exc)).lower()


def lost_storage(url: str | None, exc: BaseException | None = None) -> StorageLost | None:
    """The one-line error when the SQLite storage at ``url`` is gone or read-only (judged from
    the file system, and from ``exc``, what a storage call raised); None when it looks fine."""
    path = sqlite_path(url)
    if path is None:
        return None
    path = path.absolute()
    if not path.parent.is_dir():
        return StorageLost(f"storage folder is gone: {path.parent}: restore it (or point "
                           f"hydra.sweeper.storage elsewhere) and {_RESUME}")
    if not path.is_file():
        return StorageLost(f"storage file is gone: {path}: restore it and {_RESUME}")
    text = _text(exc)
    writable = os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
    if not writable or any(s in text for s in _READ_ONLY):
        return StorageLost(f"storage is read-only: {path}: make it and its folder writable and "
                           f"{_RESUME}")
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a storage error that a later attempt may not hit (a lock)."""
    text = _text(exc)
    return any(s in text for s in _TRANSIENT)


def with_retries(call: Callable[[], T], *, attempts: int = 6, first_delay_s: float = 0.2,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """``call()``, retried on a transient storage error with exponential backoff (0.2 s,
    0.4 s, ... ``attempts`` tries in all); the last error is raised."""
    return retrying(call, retry_if=is_transient, sleep=sleep,
                    delays=(first_delay_s * 2**k for k in range(attempts - 1)))


def save_unreported(where: Path, record: Mapping[str, Any]) -> Path | None:
    """Write ``record`` (a trial's outcome: ``study``, ``number``, ``trial_id``, ``state``,
    ``values``, ``user_attrs``) as ``where/hpo_unreported.json``; None when that fails."""
    path = where / UNREPORTED
    try:
        where.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(record), default=str))
        tmp.replace(path)
    except OSError as exc:
        log.warning("could not keep the result of trial %s in %s: %s", record.get("number"),
                    where, exc)
        return None
    return path


def tell_unreported(study: optuna.Study, output_dir: Callable[[int, Mapping[str, Any]],
                                                                 str | None]) -> list[int]:
    """Tell the results an earlier run kept beside its RUNNING trials (``hpo_unreported.json``
    in the trial's output dir, ``output_dir(number, user_attrs)``); each file is renamed
    ``.told`` once told. Returns the numbers of the trials told."""
    told = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        where = output_dir(t.number, t.user_attrs)
        path = Path(where) / UNREPORTED if where else None
        if path is None or not path.is_file():
            continue
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", path, exc)
            continue
        if rec.get("trial_id") != t._trial_id or rec.get("study") != study.study_name:
            continue  # another study's or another trial's file
        for key, value in (rec.get("user_attrs") or {}).items():
            study._storage.set_trial_user_attr(t._trial_id, str(key), value)
        state = TrialState[str(rec.get("state", "FAIL"))]
        with contextlib.suppress(RuntimeError):  # a sampler's stop request: stored all the same
            study.tell(t.number, rec.get("values") if state == TrialState.COMPLETE else None,
                       state=state, skip_if_finished=True)
        path.replace(path.with_suffix(".told"))
        log.info("trial %d: told the result kept in %s by the run that lost its storage",
                 t.number, path)
        told.append(t.number)
    return told


__all__ = ["UNREPORTED", "StorageLost", "is_transient", "lost_storage", "save_unreported",
           "sqlite_path", "tell_unreported", "with_retries"]
