"""Fault matrix, bad input (issue 5 item 6): ``python -m hpo.train -m`` with a mistake in it.

Each mistake must end the run with a non-zero exit and ONE clear line on stderr that names the
bad value and the fix (no traceback, no wrapper lines), and leave storage untouched: the SQLite
file not created, or at least no study in it. A metric that is never logged cannot be known
before a trial ran: there the trials fail with a clear message and the sweep stops by its
failure rate. SLURM rejections are covered by tests/sweeper/test_slurm.py.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from conftest import clean_env, run_cli, run_cli_batch

HYDRA_HINT = "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace."


def sweep_args(tmp_path: Path, *overrides: str) -> list[str]:
    return ["-m", "hpo.train", "-m", "trainer=debug", f"hydra.sweep.dir={tmp_path / 'sweep'}",
            f"hydra.sweeper.storage=sqlite:///{tmp_path / 's.db'}", *overrides]


def sweep(tmp_path: Path, *overrides: str) -> tuple[int, str, str]:
    proc = run_cli(sweep_args(tmp_path, *overrides), cwd=tmp_path, check=False, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def error_lines(stderr: str) -> list[str]:
    """What the user reads on stderr, less Hydra's standard hint and library log records."""
    out = []
    for line in stderr.splitlines():
        line = line.rstrip()
        if not line or line == HYDRA_HINT or re.match(r"^\[[IWD] \d{4}-", line):
            continue
        out.append(line)
    return out


def storage_untouched(tmp_path: Path) -> bool:
    db = tmp_path / "s.db"
    if not db.exists():
        return True
    with sqlite3.connect(db) as conn:
        try:
            return conn.execute("SELECT COUNT(*) FROM studies").fetchone()[0] == 0
        except sqlite3.OperationalError:  # no tables
            return True


KEY = "sk-test-bad-input-0123456789"


def case(overrides: list[str], needle: str, id: str, *, key: bool = False) -> object:
    return pytest.param(id, overrides, needle, key, id=id)


CASES = [
    case(["optimizer.lr=tag(log, interval(0, 1))"],
         "optimizer.lr: tag(log, interval(0.0, 1.0)) needs low > 0; use a positive lower bound "
         "or drop the log tag", "grammar_log_of_zero"),
    case(["optimizer.lr=interval(0.1, 0.01)"], "optimizer.lr", "grammar_low_gt_high"),
    case(["model=mlp,nope"],
         "model=nope is not an option of config group 'model': choose from cnn, mlp, resnet9",
         "unknown_group_option"),
    case(["optimizer.lrr=interval(0.1, 0.2)"],
         "unknown parameter path 'optimizer.lrr': it is not in the config; check the spelling, "
         "or write +optimizer.lrr to add a new key", "unknown_path"),
    case(["hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0 must be an integer >= 1",
         "n_trials_0"),
    case(["hydra.sweeper.n_jobs=0"], "hydra.sweeper.n_jobs=0 must be an integer >= 1",
         "n_jobs_0"),
    case(["hydra.sweeper.direction=maximise"],
         "hydra.sweeper.direction='maximise' is not minimize or maximize", "direction_misspelt"),
    case(["agent=openai"], "agent=openai needs OPENAI_API_KEY: export it or put it in .env",
         "explicit_provider_without_key"),
    case(["agent=openai", "agent.chain=singel"], "agent.chain='singel' is unknown",
         "agent_chain_with_key", key=True),
    case(["agent.chain=singel", "hydra.sweeper.n_trials=1"], "agent.chain='singel' is unknown",
         "agent_chain_without_key"),
    case(["hydra.sweeper.storage=postgresql://u@127.0.0.1:1/db"],
         "cannot open storage 'postgresql://u@127.0.0.1:1/db'", "storage_unreachable"),
    case(["hydra.sweeper.storage=sqlite:////proc/nope/s.db"], "/proc/nope",
         "storage_dir_uncreatable"),
    case(["hydra.sweep.dir=/proc/nope"], "hydra.sweep.dir", "sweep_dir_unwritable"),
]


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, int, str]]:
    """Every case of CASES as its own ``python -m hpo.train -m`` command line, all in one
    process (tests/apps/cli_batch.py): each fails before any trial, so importing the stack
    once per case would be most of the time."""
    runs = {}
    for param in CASES:
        case_id, overrides, _, key = param.values  # type: ignore[attr-defined]
        tmp = tmp_path_factory.mktemp(case_id)
        runs[case_id] = (sweep_args(tmp, *overrides), tmp,
                         clean_env(OPENAI_API_KEY=KEY) if key else None)
    done = run_cli_batch(runs)
    return {cid: (runs[cid][1], p.returncode, p.stderr) for cid, p in done.items()}


@pytest.mark.parametrize(("case_id", "overrides", "needle", "key"), CASES)
def test_bad_input_is_one_line_nonzero_and_stores_nothing(
    bad_runs: dict[str, tuple[Path, int, str]], case_id: str, overrides: list[str], needle: str,
    key: bool
) -> None:
    tmp_path, code, stderr = bad_runs[case_id]
    assert code != 0
    assert "Traceback" not in stderr
    lines = error_lines(stderr)
    assert len(lines) == 1, "\n".join(lines)
    assert needle in lines[0]
    assert KEY not in stderr
    assert storage_untouched(tmp_path)


def test_hydra_grammar_errors_name_the_override(tmp_path: Path) -> None:
    """A call the override grammar itself rejects: Hydra's own message (before hpo runs)."""
    code, _, stderr = sweep(tmp_path, "optimizer.lr=interval(1e-3)")
    assert code != 0 and "Traceback" not in stderr
    assert error_lines(stderr)[0] == "Error parsing override 'optimizer.lr=interval(1e-3)'"
    assert storage_untouched(tmp_path)


@pytest.mark.slow
def test_objective_never_logged_fails_trials_and_stops_by_failure_rate(tmp_path: Path) -> None:
    import optuna
    from optuna.trial import TrialState

    code, stdout, stderr = sweep(tmp_path, "objective=val/nope", "agent=none",
                                 "hydra.sweeper.n_trials=6")
    assert code != 0
    assert "Traceback" not in stderr
    last = error_lines(stderr)[-1]
    assert last.startswith("3 of 3 trials failed (rate 1.00 > hydra.sweeper.max_failure_rate=0.5)")
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path / 's.db'}")
    trials = study.trials
    assert len(trials) == 3 and {t.state for t in trials} == {TrialState.FAIL}
    for t in trials:
        error = t.user_attrs["hpo:error"]
        assert error.startswith(
            "MetricNotFoundError: objective metric 'val/nope' is never logged; logged metrics: "
        ), error
        assert "val/acc" in error and error.endswith("set objective= to one of them")
        assert not t.user_attrs.get("hpo:retried")  # the task's own error: not retried
    assert "objective metric 'val/nope' is never logged" in stdout + stderr
