"""Open Optuna storages from a URL: sqlite / postgresql / mysql (RDB), journal files, memory.

SQLite engines. Optuna's default SQLite engine commits in rollback-journal mode with
``synchronous=FULL``: every commit waits for the disk twice, which was most of a trial's cost
on SQLite. The sweeper's driver therefore opens its SQLite file in WAL mode when every job runs
on its host (``open_storage(url, wal=True)``); WAL mode stays with the file, and every
connection to a file in WAL mode uses ``synchronous=NORMAL`` (a commit reaches the OS at once
and the disk at the next checkpoint: a power cut may lose the last commits, never corrupt the
file). WAL does not work when processes on several hosts share the file (e.g. a database on
NFS used by SLURM jobs), so the driver leaves the journal mode alone then. Override both in
the URL with hpo's own query keys, removed before SQLAlchemy sees the URL:
``sqlite:///outputs/hpo.db?journal_mode=delete&synchronous=full``. The URL reaches the jobs
unchanged, so they use the same settings. No ``pool_pre_ping`` for SQLite (a file has no
connection to lose); server databases keep it.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.storages import BaseStorage

from hpo.errors import ConfigError, first_line

log = logging.getLogger(__name__)
T = TypeVar("T")

JOURNAL_PREFIX = "journal://"
SQLITE_PREFIX = "sqlite:///"
# hpo's query keys of a sqlite URL -> the values SQLite's PRAGMA accepts
SQLITE_PRAGMAS: dict[str, tuple[str, ...]] = {
    "journal_mode": ("wal", "delete", "truncate", "persist", "memory", "off"),
    "synchronous": ("normal", "full", "extra", "off"),
}


def open_storage(url: str | None, *, wal: bool = False) -> BaseStorage:
    """An Optuna storage for ``url``.

    Forms: ``sqlite:///path.db``, ``postgresql://user@host/db``, ``mysql://...``,
    ``journal:///path/to/file.log`` (Optuna's JournalStorage with a file backend, good for many
    workers on a shared file system), ``memory`` or ``None`` (in-memory, nothing persisted).
    A sqlite URL may end in ``?journal_mode=...&synchronous=...`` (see the module docstring).

    Args:
        url: The storage URL.
        wal: Put a SQLite file in WAL mode unless the URL names a journal mode (the sweeper's
            driver, when all its jobs run on this host). Readers leave the mode alone.

    Raises:
        ConfigError: One line naming the URL (password hidden) and what to check.
    """
    if url is None or url in ("", "memory", "inmemory", "in-memory"):
        return optuna.storages.InMemoryStorage()
    if "://" not in url:
        raise ConfigError(
            f"storage URL {url!r} is not a URL: use sqlite:///path/hpo.db, "
            "postgresql://user@host/db, journal:///path/hpo.log or memory"
        )
    try:
        if url.startswith(JOURNAL_PREFIX):
            path = Path(url[len(JOURNAL_PREFIX):])
            path.parent.mkdir(parents=True, exist_ok=True)
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            return JournalStorage(JournalFileBackend(str(path)))
        if url.startswith(SQLITE_PREFIX):
            return _sqlite_storage(url, wal=wal)
        return _rdb_storage(_with_installed_driver(url), {"pool_pre_ping": True})
    except ConfigError:
        raise
    except Exception as exc:  # OSError, SQLAlchemy's many types: all mean "can't open it"
        first = first_line(exc, default="")
        raise ConfigError(
            f"cannot open storage {redact_url(url)!r}: {type(exc).__name__}: {first} "
            "(check the URL, the path's folder, the server and its credentials)"
        ) from exc


def _sqlite_storage(url: str, *, wal: bool) -> BaseStorage:
    base, pragmas = split_sqlite_pragmas(url)
    db = base[len(SQLITE_PREFIX):].split("?", 1)[0]
    if db in ("", ":memory:"):  # one connection holds the database: no pragmas, no new pool
        return _rdb_storage(base, {})
    Path(db).parent.mkdir(parents=True, exist_ok=True)
    storage = _rdb_storage(base, {})
    journal = pragmas.get("journal_mode") or ("wal" if wal else None)
    synchronous = pragmas.get("synchronous")

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        try:
            if journal is not None:
                cur.execute(f"PRAGMA journal_mode={journal}")
            mode = str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower()
            sync = synchronous or ("normal" if mode == "wal" else None)
            if sync is not None:
                cur.execute(f"PRAGMA synchronous={sync}")
        except sqlite3.OperationalError as exc:  # locked by another process: keep its mode
            log.debug("SQLite pragmas not applied to %s: %s", db, exc)
        finally:
            cur.close()

    from sqlalchemy import event

    assert isinstance(storage, optuna.storages.RDBStorage)
    event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # the connections opened while Optuna set up the schema
    return storage


def split_sqlite_pragmas(url: str) -> tuple[str, dict[str, str]]:
    """``sqlite:///x.db?journal_mode=wal&timeout=9`` -> (``sqlite:///x.db?timeout=9``,
    ``{"journal_mode": "wal"}``): hpo's pragma keys apart from the rest of the query.

    Raises:
        ConfigError: A pragma value SQLite does not know.
    """
    base, sep, query = url.partition("?")
    kept: list[str] = []
    pragmas: dict[str, str] = {}
    for part in query.split("&") if sep else []:
        key, _, value = part.partition("=")
        if key not in SQLITE_PRAGMAS:
            kept.append(part)
            continue
        value = value.strip().lower()
        if value not in SQLITE_PRAGMAS[key]:
            raise ConfigError(
                f"storage URL {redact_url(url)!r}: {key}={value!r} is not one of "
                f"{', '.join(SQLITE_PRAGMAS[key])}"
            )
        pragmas[key] = value
    return base + ("?" + "&".join(kept) if kept else ""), pragmas


def _rdb_storage(url: str, engine_kwargs: dict[str, Any]) -> BaseStorage:
    # Several drivers starting at once on an empty database race to create Optuna's schema:
    # duplicate tables, unique violations, an alembic_version another process has not stamped
    # yet (Optuna asserts on it). The losers retry after a pause; errors that no retry can
    # mend (no server, wrong credentials, missing driver or database) fail at once.
    def mendable(exc: Exception) -> bool:
        text = f"{type(exc).__name__} {exc}".lower()
        return not isinstance(exc, ImportError) and not any(k in text for k in (
            "could not connect", "connection refused", "could not translate host",
            "authentication failed", "password", "does not exist", "unable to open",
            "no such host", "timeout expired", "permission denied",
        ))

    return retrying(
        lambda: optuna.storages.RDBStorage(url, engine_kwargs=dict(engine_kwargs)),
        retry_if=mendable,
        delays=(0.2 + random.random() * 0.5 * (attempt + 1) for attempt in range(5)),
    )


def retrying(call: Callable[[], T], *, retry_if: Callable[[Exception], bool],
             delays: Iterable[float], sleep: Callable[[float], None] = time.sleep) -> T:
    """``call()``, tried again after each of ``delays`` while it raises an error that
    ``retry_if`` accepts; an error it refuses, or the last try's, is raised."""
    for delay in delays:
        try:
            return call()
        except Exception as exc:
            if not retry_if(exc):
                raise
            log.debug("storage busy (%s): retrying in %.1f s", first_line(exc, default=""),
                      delay)
            sleep(delay)
    return call()


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and messages)."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    if ":" in creds:
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def _with_installed_driver(url: str) -> str:
    """``postgresql://`` with the driver we install (psycopg2) unless psycopg 3 is there.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which hpo does not depend on.
    """
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None:
            return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def require_existing(url: str) -> None:
    """Raise unless the SQLite or journal file of ``url`` exists (server URLs pass).

    Readers (report, status, dashboard) must not create an empty database at a mistyped path.
    """
    path: str | None = None
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):].split("?", 1)[0]
        if path in ("", ":memory:"):
            path = None
    elif url.startswith(JOURNAL_PREFIX):
        path = url[len(JOURNAL_PREFIX):]
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"storage file {path!r} does not exist: check --storage {url}")


def open_existing(url: str) -> BaseStorage:
    """Open an existing storage for reading; one clear line when it cannot be read."""
    require_existing(url)
    storage = open_storage(url)
    try:
        storage.get_all_studies()
    except Exception as exc:  # a file that is no database, a server that went away
        first = first_line(exc, default="")
        raise ConfigError(
            f"cannot read storage {redact_url(url)!r}: {type(exc).__name__}: {first} "
            "(check the URL, the server and its credentials)"
        ) from exc
    return storage


def load_existing_study(
    storage: BaseStorage, url: str, name: str | None, *, latest: bool = False
) -> optuna.Study:
    """Study ``name`` of ``storage``; one clear line when absent.

    Args:
        storage: An open storage.
        url: Its URL, for messages (redacted).
        name: The study; None: the storage's only study, or with ``latest`` the one whose
            last trial started last (one line on stderr names it and the others).
        latest: Pick the most recent of several studies instead of asking for ``--study``.
    """
    names = [s.study_name for s in storage.get_all_studies()]
    if name is None and latest and len(names) > 1:
        name = _latest(storage, names)
        others = _names([n for n in names if n != name])
        sys.stderr.write(f"{len(names)} studies in {redact_url(url)}: showing the latest, "
                         f"{name!r} (--study NAME for another: {others})\n")
    if name is None:
        if len(names) != 1:
            raise ConfigError(
                f"storage {redact_url(url)!r} holds {len(names)} studies ({_names(names)}): "
                "pick one with --study NAME"
            )
        name = names[0]
    if name not in names:
        raise ConfigError(
            f"study {name!r} is not in storage {redact_url(url)!r}: use one of {_names(names)}"
        )
    return optuna.load_study(study_name=name, storage=storage)


def _latest(storage: BaseStorage, names: list[str]) -> str:
    """The study whose last trial started last (a study with no trial counts as oldest)."""

    def started(name: str) -> float:
        trials = storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False)
        stamps = [t.datetime_start.timestamp() for t in trials if t.datetime_start]
        return max(stamps, default=float("-inf"))

    return max(names, key=started)


def _names(names: list[str]) -> str:
    if not names:
        return "none: the storage is empty"
    shown = ", ".join(repr(n) for n in names[:10])
    return shown + (f" and {len(names) - 10} more" if len(names) > 10 else "")
