"""Session fixtures for the external services some tests need: SLURM, PostgreSQL, Chromium and
a small local LLM server.

Each fixture runs the matching script under ``scripts/`` (which installs with apt when needed
and starts the service), sends the script's output to a log file under pytest's base temp
directory and hands the test what it needs to connect. When a service cannot be had, the test
is skipped with the log's tail in the reason; under ``CI=true`` it fails instead, so that
nothing is skipped unseen (see :func:`need_service`).

Daemons are shared between concurrent test sessions on one machine: each session holds a lease
(a file named after its pid) in the service's state directory, and the last session to leave
stops the service if a test session started it. A service that was already running when the
first session came (started by hand, or by CI) is left running. Set ``HPO_KEEP_SERVICES=1`` to
leave everything running for a faster next session.

``tests/conftest.py`` re-exports everything here with ``from _services import *``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

__all__ = [
    "CHROMIUM_HEADLESS_FLAGS",
    "LocalLLM",
    "SlurmCluster",
    "chromium_argv",
    "chromium_path",
    "fresh_database",
    "local_llm",
    "need_service",
    "postgres_db_url",
    "postgres_url",
    "slurm_cluster",
]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = REPO_ROOT / "scripts"

# Seconds a script may take: a first `up` on a fresh machine installs packages with apt.
SCRIPT_TIMEOUT_S = 900
LOG_TAIL_LINES = 30

# Flags that let Chromium run headless as root, offline, without touching the user's profile.
CHROMIUM_HEADLESS_FLAGS: tuple[str, ...] = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def need_service(name: str, reason: str) -> NoReturn:
    """Give up on a test because a service it needs is not available.

    Skips the test normally; fails it when ``CI=true`` is set, so that a CI run never passes
    with a service silently missing.

    Args:
        name: The service, e.g. ``"slurm"``.
        reason: Why it is not available; include what the user can do about it.
    """
    message = f"{name} is not available: {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}\n(CI=true: a missing service fails the run)", pytrace=False)
    pytest.skip(message)


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _run_script(
    name: str,
    script: str,
    args: list[str],
    log: Path,
    *,
    env: dict[str, str] | None = None,
    timeout: float = SCRIPT_TIMEOUT_S,
) -> str:
    """Run ``scripts/<script> <args>``; stderr (and stdout) go to ``log``; return stdout.

    Calls :func:`need_service` with the log's tail when the script fails or runs over
    ``timeout`` seconds.
    """
    path = SCRIPTS / script
    if not path.is_file():
        need_service(name, f"{path} is missing from this checkout.")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as log_file:
        log_file.write(f"$ {path} {' '.join(args)}\n")
        log_file.flush()
        try:
            done = subprocess.run(
                ["bash", str(path), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log_file,
                text=True,
                timeout=timeout,
                env=env,
                check=False,
            )
        except subprocess.TimeoutExpired:
            need_service(
                name,
                f"{script} {' '.join(args)} ran over {timeout:.0f} s; "
                f"log {log}:\n{_log_tail(log)}",
            )
        log_file.write(done.stdout)
    if done.returncode != 0:
        need_service(
            name,
            f"{script} {' '.join(args)} exited with {done.returncode}; "
            f"log {log}:\n{_log_tail(log)}",
        )
    return done.stdout


def _pid_alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    # No init reaps orphans on some machines: a zombie is a dead session.
    return "\nState:\tZ" not in status


class _SharedService:
    """Leases that let concurrent test sessions share one service and stop it last.

    State lives in ``<root>/.pytest-sessions/``: one file per session pid, plus a ``started``
    marker when a test session (rather than a person or CI) started the service.
    """

    def __init__(self, *, root: Path, pid: int | None = None) -> None:
        self.dir = root / ".pytest-sessions"
        self.pid = os.getpid() if pid is None else pid

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / "lock").open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _live_leases(self) -> list[int]:
        live = []
        for lease in self.dir.glob("session-*"):
            pid = int(lease.name.removeprefix("session-"))
            if pid != self.pid and not _pid_alive(pid):
                lease.unlink(missing_ok=True)  # left behind by a killed session
            else:
                live.append(pid)
        return live

    def acquire(self, *, is_running: Callable[[], bool], start: Callable[[], object]) -> None:
        """Take a lease, then start the service unless it runs (``start`` may skip the test)."""
        with self._locked():
            was_running = is_running()
            (self.dir / f"session-{self.pid}").touch()
            try:
                start()  # also when running: `up` is idempotent and checks health
            except BaseException:
                (self.dir / f"session-{self.pid}").unlink(missing_ok=True)
                raise
            if not was_running:
                (self.dir / "started").touch()

    def release(self, *, stop: Callable[[], object]) -> bool:
        """Drop the lease; stop the service when this was the last one and tests started it.

        Returns:
            Whether ``stop`` was called.
        """
        with self._locked():
            (self.dir / f"session-{self.pid}").unlink(missing_ok=True)
            others = [pid for pid in self._live_leases() if pid != self.pid]
            started = self.dir / "started"
            if others or not started.exists() or os.environ.get("HPO_KEEP_SERVICES") == "1":
                return False
            stop()
            started.unlink(missing_ok=True)
            return True


def _status_ok(script: str, args: list[str]) -> bool:
    try:
        done = subprocess.run(
            ["bash", str(SCRIPTS / script), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _stop(script: str, args: list[str], log: Path) -> None:
    with log.open("a") as log_file:
        try:
            subprocess.run(
                ["bash", str(SCRIPTS / script), *args],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                timeout=180,
                check=False,
            )
        except subprocess.TimeoutExpired:
            logger.warning("%s %s ran over 180 s; see %s", script, " ".join(args), log)


def _log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.getbasetemp() / "services"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------------------ SLURM


@dataclass(frozen=True, kw_only=True)
class SlurmCluster:
    """The one-node SLURM cluster of ``scripts/slurm-local.sh``.

    Attributes:
        conf: Path of ``slurm.conf``; ``SLURM_CONF`` points at it while the fixture is active.
        partition: Name of the (default) partition.
        root: State directory (``HPO_SLURM_ROOT``), holding logs under ``log/``.
    """

    conf: Path
    partition: str
    root: Path


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A running one-node SLURM cluster with accounting (``sacct``); sets ``SLURM_CONF``.

    The partition is ``HPO_SLURM_PARTITION`` (default ``debug``), the state directory
    ``HPO_SLURM_ROOT`` (default ``/tmp/hpo-slurm``).
    """
    root = Path(os.environ.get("HPO_SLURM_ROOT", "/tmp/hpo-slurm"))
    partition = os.environ.get("HPO_SLURM_PARTITION", "debug")
    log = _log_dir(tmp_path_factory) / "slurm.log"
    args = ["--partition", partition]
    shared = _SharedService(root=root)
    shared.acquire(
        is_running=lambda: _status_ok("slurm-local.sh", ["status"]),
        start=lambda: _run_script("slurm", "slurm-local.sh", [*args, "up"], log),
    )
    conf = root / "etc" / "slurm.conf"
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    try:
        yield SlurmCluster(conf=conf, partition=partition, root=root)
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        shared.release(stop=lambda: _stop("slurm-local.sh", [*args, "down"], log))


# ------------------------------------------------------------------------------ PostgreSQL


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """SQLAlchemy URL of a running private PostgreSQL database, for Optuna storage.

    ``postgresql+psycopg2://hpo@127.0.0.1:55432/hpo``: the driver is named because SQLAlchemy
    2.1 maps a bare ``postgresql://`` to psycopg 3, which is not installed. The database
    ``hpo`` is shared by all tests of all sessions: use a unique study name, or
    :func:`postgres_db_url` for a database of the test's own. ``HPO_PG_PORT`` and
    ``HPO_PG_ROOT`` move the server.
    """
    root = Path(os.environ.get("HPO_PG_ROOT", "/tmp/hpo-pg"))
    log = _log_dir(tmp_path_factory) / "postgres.log"
    shared = _SharedService(root=root)
    shared.acquire(
        is_running=lambda: _status_ok("pg-local.sh", ["status"]),
        start=lambda: _run_script("postgres", "pg-local.sh", ["up"], log),
    )
    try:
        yield _run_script("postgres", "pg-local.sh", ["url", "--sqlalchemy"], log).strip()
    finally:
        shared.release(stop=lambda: _stop("pg-local.sh", ["down"], log))


@pytest.fixture
def postgres_db_url(postgres_url: str) -> Iterator[str]:
    """SQLAlchemy URL of a fresh, empty database for this test alone; dropped afterwards."""
    with fresh_database(postgres_url) as url:
        yield url


@contextlib.contextmanager
def fresh_database(postgres_url: str) -> Iterator[str]:
    """An empty database of our own on the test server (SQLAlchemy URL), dropped afterwards.

    A client that just exited may still hold its backend for a moment; dropping WITH (FORCE)
    then needs rights the test role lacks, so the drop is retried briefly and finally left to
    the private test cluster (a leftover test database harms nothing).
    """
    import time

    import psycopg2
    from psycopg2 import sql

    name = f"t_{uuid.uuid4().hex[:16]}"
    base, _, _ = postgres_url.rpartition("/")

    def admin(statement: sql.Composable) -> None:
        conn = psycopg2.connect(postgres_url.replace("+psycopg2", "", 1))
        try:
            conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()

    admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{base}/{name}"
    finally:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        for attempt in range(10):
            try:
                admin(drop)
                break
            except psycopg2.Error as exc:
                if attempt == 9:
                    logger.warning("test database %s left behind: %s", name, exc)
                time.sleep(0.5)


# ------------------------------------------------------------------------------ local LLM

# A first `up` on a fresh machine builds llama-cpp-python from source (5-10 min on 2 cores,
# longer on a busy machine) before the server starts.
LLAMA_UP_TIMEOUT_S = 2400


@dataclass(frozen=True, kw_only=True)
class LocalLLM:
    """The llama-cpp-python server of ``scripts/llama-local.sh`` (SmolLM2-135M-Instruct).

    Attributes:
        base_url: OpenAI base URL, ``http://127.0.0.1:55480/v1``: the value for
            ``HPO_LOCAL_BASE_URL``.
        model: The model name the server answers to (its ``/v1/models`` id).
        root: State directory (``HPO_LLAMA_HOME``), holding ``log/server.log`` and
            ``log/build.log``.
    """

    base_url: str
    model: str
    root: Path


def _served_model(base_url: str) -> str:
    """The first model id that ``<base_url>/models`` lists."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"{base_url}/models", timeout=10) as response:
        return str(json.load(response)["data"][0]["id"])


@pytest.fixture(scope="session")
def local_llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLLM]:
    """A running llama-cpp-python server with a small real model on 127.0.0.1.

    The state directory is ``HPO_LLAMA_HOME`` (default ``~/.cache/hpo/llama``), the built
    llama-cpp-python wheel is cached in ``HPO_WHEEL_CACHE`` (default ``~/.cache/hpo/wheels``);
    ``HPO_LLAMA_PORT`` moves the server.
    """
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hpo"
    root = Path(os.environ.get("HPO_LLAMA_HOME") or cache / "llama")
    log = _log_dir(tmp_path_factory) / "llama.log"
    problem = ""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        problem = f"cannot create HPO_LLAMA_HOME={root}: {exc}"
    if problem:
        need_service("llama", f"{problem}; set HPO_LLAMA_HOME to a writable directory.")
    shared = _SharedService(root=root)
    shared.acquire(
        is_running=lambda: _status_ok("llama-local.sh", ["status"]),
        start=lambda: _run_script(
            "llama", "llama-local.sh", ["up"], log, timeout=LLAMA_UP_TIMEOUT_S
        ),
    )
    try:
        base_url = _run_script("llama", "llama-local.sh", ["url"], log).strip()
        model, problem = "", f"{base_url}/models listed no model"
        try:
            model = _served_model(base_url)
        except (OSError, ValueError, KeyError, IndexError) as exc:
            problem = f"{base_url}/models gave no model: {exc}"
        if not model:
            need_service("llama", f"{problem}; log {log}:\n{_log_tail(log)}")
        yield LocalLLM(base_url=base_url, model=model, root=root)
    finally:
        shared.release(stop=lambda: _stop("llama-local.sh", ["down"], log))


# ------------------------------------------------------------------------------ Chromium


@pytest.fixture(scope="session")
def chromium_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path of a Chromium that runs headless (installed with apt when missing)."""
    log = _log_dir(tmp_path_factory) / "chromium.log"
    out = _run_script("chromium", "chromium-local.sh", [], log).strip().splitlines()
    if not out:
        need_service(
            "chromium", f"chromium-local.sh printed nothing; log {log}:\n{_log_tail(log)}"
        )
    return out[-1]


def chromium_argv(chromium: str, user_data_dir: Path, *extra: str) -> list[str]:
    """Command line for a headless Chromium run with a throwaway profile.

    Args:
        chromium: Path from the ``chromium_path`` fixture.
        user_data_dir: An empty directory (e.g. under ``tmp_path``) for the profile.
        *extra: Further flags and the URL, e.g. ``"--dump-dom", url``.
    """
    return [chromium, *CHROMIUM_HEADLESS_FLAGS, f"--user-data-dir={user_data_dir}", *extra]
