"""Fault matrix, storage side (issue 5 item 4): many workers on one study.

Eight drivers of the quadratic app (a plain Hydra app using the hpo sweeper) start at once on
the same study with ``hydra.sweeper.n_trials=200``, on PostgreSQL and on a JournalStorage file;
and one driver with four parallel slots (``n_jobs=4``, submitit_local) on SQLite. Checked: the
study holds at least the budget, every trial finished (no lost tell, none left RUNNING), trial
numbers are unique, each value is the app's value for the trial's params, and no driver logged
a lock or serialization error. SQLite's limits are documented in docs/reliability.md.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from _services import fresh_database
from conftest import APPS, clean_env
from hpo.attrs import launch_driver

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.slow

SEARCH = ["x=interval(-5, 5)", "y=range(0, 3)", "kind=a,b"]
N_DRIVERS = 8
N_TRIALS = 200
LOCK_ERRORS = ("database is locked", "deadlock", "could not serialize", "LockTimeout",
               "OperationalError", "IntegrityError", "Traceback", "StaleDataError")


@dataclass
class Run:
    study: optuna.Study
    outputs: list[str]
    codes: list[int]

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)


def run_drivers(app: str, cwd: Path, url: str, n: int, *extra: str, study: str = "quadratic",
                timeout: float = 900) -> list[tuple[int, str]]:
    """Start ``n`` drivers of the same study at once; their exit codes and outputs."""
    env = clean_env(HPO_TEST_SWEEP_DIR=str(cwd / "multirun"))
    procs = []
    for i in range(n):
        log = (cwd / f"driver{i}.log").open("w")
        procs.append((log, subprocess.Popen(
            [sys.executable, app, "-m", *SEARCH, f"hydra.sweeper.storage={url}",
             f"hydra.sweeper.study_name={study}", f"hydra.sweeper.seed={i}",
             "hydra.sweeper.progress=false", *extra],
            cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
        )))
    out = []
    try:
        for log, proc in procs:
            out.append(proc.wait(timeout))
            log.close()
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
    return [(code, (cwd / f"driver{i}.log").read_text()) for i, code in enumerate(out)]


def app_value(t: FrozenTrial) -> float:
    return (t.params["x"] - 2) ** 2 + (t.params["kind"] != "a") + t.params["y"]


def assert_no_lost_tells(run: Run, n_trials: int) -> None:
    for code, output in zip(run.codes, run.outputs, strict=True):
        assert code == 0, output[-3000:]
        for needle in LOCK_ERRORS:
            assert needle not in output, output[-3000:]
    trials = run.trials
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))  # unique, no gaps
    states = {t.state for t in trials}
    assert states == {TrialState.COMPLETE}, states  # every trial told, none left RUNNING
    assert len(trials) >= n_trials
    for t in trials:  # each tell carries its own trial's value
        assert t.value == pytest.approx(app_value(t))
    drivers = {launch_driver(t.user_attrs) for t in trials}
    assert len(drivers) == len(run.codes)  # every driver took part


def assert_stops_near_budget(run: Run, n_trials: int, slots: int) -> None:
    # each driver may start at most its own slots past the shared budget
    assert len(run.trials) <= n_trials + slots, f"{len(run.trials)} trials for {n_trials}"


# --------------------------------------------------------------------------- JournalStorage


@pytest.fixture(scope="module")
def journal_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    from optuna.storages.journal import JournalFileBackend, JournalStorage


    cwd = tmp_path_factory.mktemp("journal")
    log = cwd / "j.log"
    done = run_drivers(str(APPS / "quadratic" / "app.py"), cwd, f"journal://{log}", N_DRIVERS,
                       f"hydra.sweeper.n_trials={N_TRIALS}")
    study = optuna.load_study(study_name="quadratic",
                              storage=JournalStorage(JournalFileBackend(str(log))))
    return Run(study=study, codes=[c for c, _ in done], outputs=[o for _, o in done])


@pytest.mark.parametrize("backend", ["journal", "sqlite"])
def test_drivers_registering_together_are_all_recorded(tmp_path: Path, backend: str) -> None:
    """Each driver's record is its own study attr: none is lost when they start together (a
    shared list written read-modify-write kept only the last writer's view, and a driver that
    saw no other one never re-counted the budget: 351 trials for 200 under load)."""
    import threading
    from types import SimpleNamespace

    from optuna.storages.journal import JournalFileBackend, JournalStorage

    from hpo import attrs
    from hydra_plugins.hpo_sweeper._recovery import other_drivers_alive
    from hydra_plugins.hpo_sweeper._study import register_driver

    def storage() -> optuna.storages.BaseStorage:
        if backend == "journal":
            return JournalStorage(JournalFileBackend(str(tmp_path / "j.log")))
        return optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}",
                                          engine_kwargs={"connect_args": {"timeout": 60}})

    optuna.create_study(study_name="q", storage=storage())
    ids = [f"{attrs.driver_id().rsplit(':', 2)[0]}:{n}:0" for n in range(1, 9)]
    gate = threading.Barrier(len(ids))

    def start(driver: str) -> None:  # each "driver" with its own storage object, as a process
        study = optuna.load_study(study_name="q", storage=storage())
        gate.wait()
        register_driver(study, driver, SimpleNamespace(output_dir_pattern=None))

    threads = [threading.Thread(target=start, args=(d,)) for d in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    study_attrs = optuna.load_study(study_name="q", storage=storage()).user_attrs
    assert sorted(d["id"] for d in attrs.driver_records(study_attrs)) == sorted(ids)
    # every one of them sees the others (ids of this host with no live process count as gone,
    # so a live one is added: this process)
    me = attrs.driver_id()
    register_driver(optuna.load_study(study_name="q", storage=storage()), me,
                    SimpleNamespace(output_dir_pattern=None))
    study_attrs = optuna.load_study(study_name="q", storage=storage()).user_attrs
    assert other_drivers_alive(study_attrs, ids[0])


def test_journal_eight_drivers_lose_no_tell(journal_run: Run) -> None:
    assert_no_lost_tells(journal_run, N_TRIALS)


def test_journal_eight_drivers_stop_near_the_budget(journal_run: Run) -> None:
    assert_stops_near_budget(journal_run, N_TRIALS, N_DRIVERS)


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="module")
def postgres_run(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    from hpo.storage import open_storage

    cwd = tmp_path_factory.mktemp("postgres")
    with fresh_database(postgres_url) as url:
        open_storage(url)  # the schema exists before the drivers come (see the test below)
        done = run_drivers(str(APPS / "quadratic" / "app.py"), cwd, url, N_DRIVERS,
                           f"hydra.sweeper.n_trials={N_TRIALS}")
        storage = optuna.storages.RDBStorage(url)
        try:
            study = optuna.load_study(study_name="quadratic", storage=storage)
            yield Run(study=study, codes=[c for c, _ in done], outputs=[o for _, o in done])
        finally:
            storage.engine.dispose()


@pytest.mark.postgres
def test_postgres_eight_drivers_lose_no_tell(postgres_run: Run) -> None:
    assert_no_lost_tells(postgres_run, N_TRIALS)


@pytest.mark.postgres
def test_postgres_eight_drivers_stop_near_the_budget(postgres_run: Run) -> None:
    assert_stops_near_budget(postgres_run, N_TRIALS, N_DRIVERS)


@pytest.mark.postgres
def test_postgres_drivers_starting_together_on_an_empty_database(
    postgres_url: str, tmp_path: Path
) -> None:
    """Eight processes open the storage at the same instant on a fresh database: all succeed.

    The race does not show every time, so up to five fresh databases are tried.
    """
    for _ in range(5):
        with fresh_database(postgres_url) as url:
            at = time.time() + 5  # after every process has imported hpo
            code = (
                "import sys, time; from hpo.storage import open_storage; "
                "time.sleep(max(0.0, float(sys.argv[2]) - time.time())); open_storage(sys.argv[1])"
            )
            procs = [
                subprocess.Popen([sys.executable, "-c", code, url, str(at)], cwd=tmp_path,
                                 env=clean_env(), stderr=subprocess.PIPE, text=True)
                for _ in range(N_DRIVERS)
            ]
            results = [(p.wait(120), p.stderr.read() if p.stderr else "") for p in procs]
            for rc, err in results:
                assert rc == 0, err.strip().splitlines()[-1]


# --------------------------------------------------------------------------- SQLite


def test_sqlite_four_parallel_slots(quadratic_app: str, tmp_path: Path) -> None:
    """One driver, four submitit_local workers at once, SQLite storage."""
    db = tmp_path / "s.db"
    ((code, output),) = run_drivers(
        quadratic_app, tmp_path, f"sqlite:///{db}", 1, "hydra/launcher=submitit_local",
        "hydra.sweeper.n_jobs=4", "hydra.sweeper.n_trials=12", "sleep=1",
    )
    run = Run(study=optuna.load_study(study_name="quadratic", storage=f"sqlite:///{db}"),
              codes=[code], outputs=[output])
    assert_no_lost_tells(run, 12)
    assert len(run.trials) == 12
    # the slots really ran at once: some trials overlap in time
    spans = sorted(
        (t.datetime_start.timestamp(), t.datetime_complete.timestamp())
        for t in run.trials if t.datetime_start and t.datetime_complete
    )
    overlaps = sum(b[0] < a[1] for a, b in itertools.pairwise(spans))
    assert overlaps >= 3


def test_sqlite_several_drivers(quadratic_app: str, tmp_path: Path) -> None:
    """Four drivers on one SQLite file on one machine: slower, but nothing is lost."""
    from hpo.storage import open_storage

    db = tmp_path / "s.db"
    # the schema exists before the drivers come: a first use by several processes at once
    # races on its creation (see test_postgres_drivers_starting_together_on_an_empty_database;
    # on SQLite the race shows too, but too rarely for a strict test)
    open_storage(f"sqlite:///{db}")
    done = run_drivers(quadratic_app, tmp_path, f"sqlite:///{db}", 4,
                       "hydra.sweeper.n_trials=40")
    run = Run(study=optuna.load_study(study_name="quadratic", storage=f"sqlite:///{db}"),
              codes=[c for c, _ in done], outputs=[o for _, o in done])
    assert_no_lost_tells(run, 40)
