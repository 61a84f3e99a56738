"""The services of ``scripts/`` work for real: SLURM + submitit + sacct, PostgreSQL + Optuna
under concurrent writers, headless Chromium; plus the skip/fail policy and session leases."""

from __future__ import annotations

import functools
import http.server
import operator
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from _services import SlurmCluster, _SharedService, chromium_argv, need_service

# ------------------------------------------------------------------------------ policy


def test_need_service_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="slurm is not available: no root"):
        need_service("slurm", "no root")


def test_need_service_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="postgres is not available: port taken"):
        need_service("postgres", "port taken")


def test_last_session_out_stops_what_tests_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HPO_KEEP_SERVICES", raising=False)
    running = False
    events: list[str] = []

    def start() -> None:
        nonlocal running
        running = True
        events.append("up")

    def stop() -> None:
        nonlocal running
        running = False
        events.append("down")

    # Two live sessions (this process and its parent) share the service.
    first = _SharedService(root=tmp_path, pid=os.getpid())
    second = _SharedService(root=tmp_path, pid=os.getppid())
    first.acquire(is_running=lambda: running, start=start)
    second.acquire(is_running=lambda: running, start=start)
    assert not first.release(stop=stop)  # the other session still uses it
    assert second.release(stop=stop)
    assert events == ["up", "up", "down"]

    # Already running before any test session came: never stopped by tests.
    running = True
    third = _SharedService(root=tmp_path, pid=os.getpid())
    third.acquire(is_running=lambda: running, start=start)
    assert not third.release(stop=stop)
    assert running


def test_lease_of_a_dead_session_does_not_keep_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HPO_KEEP_SERVICES", raising=False)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stopped: list[bool] = []
    ghost = _SharedService(root=tmp_path, pid=dead.pid)
    ghost.acquire(is_running=lambda: False, start=lambda: None)  # then "killed": no release
    me = _SharedService(root=tmp_path)
    me.acquire(is_running=lambda: True, start=lambda: None)
    assert me.release(stop=lambda: stopped.append(True))
    assert stopped == [True]


# ------------------------------------------------------------------------------ SLURM


def _sacct_state(job_id: str, timeout_s: float = 20.0) -> str:
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        state = out[0] if out else ""
        if state == "COMPLETED":
            break
        time.sleep(0.25)
    return state


@pytest.mark.slurm
def test_submitit_job_completes_on_slurm(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    import submitit

    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    executor.update_parameters(
        timeout_min=5, slurm_partition=slurm_cluster.partition, cpus_per_task=1, mem_gb=1
    )
    # Functions from the standard library unpickle in the job without this test module.
    product = executor.submit(operator.mul, 6, 7)
    job_id_seen_by_job = executor.submit(os.getenv, "SLURM_JOB_ID")
    assert product.result() == 42
    assert job_id_seen_by_job.result() == job_id_seen_by_job.job_id
    for job in (product, job_id_seen_by_job):
        assert _sacct_state(job.job_id) == "COMPLETED", job.job_id


# ------------------------------------------------------------------------------ PostgreSQL


@pytest.mark.postgres
def test_optuna_rdb_storage_with_concurrent_writers(postgres_db_url: str) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = f"services-{uuid.uuid4().hex[:8]}"
    optuna.create_study(
        study_name=name,
        storage=optuna.storages.RDBStorage(postgres_db_url),
        sampler=optuna.samplers.RandomSampler(seed=0),
    )

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -10.0, 10.0)
        return (x - 2.0) ** 2

    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            # Each worker has its own storage (engine, connection pool), like a separate job.
            study = optuna.load_study(
                study_name=name,
                storage=optuna.storages.RDBStorage(postgres_db_url),
                sampler=optuna.samplers.RandomSampler(seed=seed),
            )
            study.optimize(objective, n_trials=25)
        except BaseException as exc:  # re-raised in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    trials = optuna.load_study(study_name=name, storage=postgres_db_url).trials
    assert len(trials) == 100
    assert sorted(t.number for t in trials) == list(range(100))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


# ------------------------------------------------------------------------------ Chromium


@pytest.fixture
def local_page(tmp_path: Path) -> Iterator[str]:
    """URL of a tiny page served from ``tmp_path`` on 127.0.0.1."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(
        "<html><head><title>t</title></head>"
        "<body><p id='msg'>hello from hpo</p>"
        "<script>document.getElementById('msg').dataset.js = 'ran';</script></body></html>"
    )
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.browser
def test_headless_chromium_dumps_the_dom(
    chromium_path: str, local_page: str, tmp_path: Path
) -> None:
    profile = tmp_path / "profile"
    profile.mkdir()
    done = subprocess.run(
        chromium_argv(chromium_path, profile, "--dump-dom", local_page),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "hello from hpo" in done.stdout
    assert 'data-js="ran"' in done.stdout  # the page's script ran
