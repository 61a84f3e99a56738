"""Open Optuna storages from a URL: sqlite / postgresql / mysql (RDB), journal files, memory."""

from __future__ import annotations

import random
import time
from pathlib import Path

import optuna
from optuna.storages import BaseStorage

from hpo.errors import ConfigError, first_line

JOURNAL_PREFIX = "journal://"


def open_storage(url: str | None) -> BaseStorage:
    """An Optuna storage for ``url``.

    Forms: ``sqlite:///path.db``, ``postgresql://user@host/db``, ``mysql://...``,
    ``journal:///path/to/file.log`` (Optuna's JournalStorage with a file backend, good for many
    workers on a shared file system), ``memory`` or ``None`` (in-memory, nothing persisted).

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
        if url.startswith("sqlite:///"):
            db = url[len("sqlite:///"):].split("?", 1)[0]
            if db and db != ":memory:":
                Path(db).parent.mkdir(parents=True, exist_ok=True)
        return _rdb_storage(_with_installed_driver(url))
    except Exception as exc:  # OSError, SQLAlchemy's many types: all mean "can't open it"
        first = first_line(exc, default="")
        raise ConfigError(
            f"cannot open storage {redact_url(url)!r}: {type(exc).__name__}: {first} "
            "(check the URL, the path's folder, the server and its credentials)"
        ) from exc


def _rdb_storage(url: str) -> BaseStorage:
    # Several drivers starting at once on an empty database race to create Optuna's schema:
    # duplicate tables, unique violations, an alembic_version another process has not stamped
    # yet (Optuna asserts on it). The losers retry after a pause; errors that no retry can
    # mend (no server, wrong credentials, missing driver or database) fail at once.
    for attempt in range(6):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except Exception as exc:
            text = f"{type(exc).__name__} {exc}".lower()
            final = isinstance(exc, ImportError) or any(k in text for k in (
                "could not connect", "connection refused", "could not translate host",
                "authentication failed", "password", "does not exist", "unable to open",
                "no such host", "timeout expired", "permission denied",
            ))
            if final or attempt == 5:
                raise
            time.sleep(0.2 + random.random() * 0.5 * (attempt + 1))
    raise AssertionError("unreachable")


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


def load_existing_study(storage: BaseStorage, url: str, name: str | None) -> optuna.Study:
    """Study ``name`` of ``storage`` (None: its only study); one clear line when absent."""
    names = [s.study_name for s in storage.get_all_studies()]
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


def _names(names: list[str]) -> str:
    if not names:
        return "none: the storage is empty"
    shown = ", ".join(repr(n) for n in names[:10])
    return shown + (f" and {len(names) - 10} more" if len(names) > 10 else "")
