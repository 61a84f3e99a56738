"""Fault matrix, process side (issue 5 items 2 and 3): a killed driver, a killed worker.

- The driver of ``python -m hpo.train -m agent=openai`` (fake LLM server) is SIGKILLed mid-sweep;
  the same command resumes: orphaned RUNNING trials are failed and retried with their params,
  the budget counts each trial once, numbers are unique, and the LLM totals and token budget
  kept in storage carry over (no more LLM calls than the budget allows over both runs).
- A trial's worker process (``hydra/launcher=submitit_local``) is SIGKILLed mid-trial: that trial
  fails with ``hpo:error`` and is retried with the same params; the budget is reached.

Processes are found by scanning ``/proc`` (children of the driver), never by name patterns.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from conftest import clean_env, run_cli
from hpo.attrs import LAUNCH
from hpo.testing import FakeLLMServer, FakeReply, RecordedRequest, random_proposer

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.slow

KEY = "sk-test-workers-a1b2c3d4e5"
CALL_USAGE = (1000, 100)  # tokens of every LLM reply: 1100 per call


# --------------------------------------------------------------------------- /proc helpers


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def descendants(root: int) -> list[int]:
    """Every live descendant of ``root`` (from /proc), parents before children."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _ppid(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(0), []):
            out.append(child)
            todo.append(child)
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def wait_for(cond: Callable[[], Any], timeout: float, what: str, proc: subprocess.Popen) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the driver ended (exit {proc.returncode}) before {what}")
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def load(db: Path, name: str | None) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    except Exception:  # not created yet, or locked for a moment
        return None


def trials_of(db: Path, name: str | None) -> list[FrozenTrial]:
    study = load(db, name)
    try:
        return study.get_trials() if study is not None else []
    except Exception:
        return []


def assert_resumed_cleanly(trials: list[FrozenTrial], n_trials: int) -> list[FrozenTrial]:
    """Common checks after a fault; returns the trials that were failed and retried."""
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(trials)))  # unique, no gaps
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    retried = [t for t in trials if t.user_attrs.get("hpo:retried")]
    assert retried, "no trial was failed and retried"
    for t in retried:
        assert t.state == TrialState.FAIL and t.user_attrs.get("hpo:error")
    retries = [t for t in trials if "hpo:retry_of" in t.user_attrs]
    assert sorted(t.user_attrs["hpo:retry_of"] for t in retries) == sorted(
        t.number for t in retried
    )
    for r in retries:  # a retry runs the very same parameters
        assert r.params == trials[r.user_attrs["hpo:retry_of"]].params
        assert r.state == TrialState.COMPLETE
    counted = [t for t in trials if t.state.is_finished() and not t.user_attrs.get("hpo:retried")]
    assert len(counted) == n_trials
    return retried


# --------------------------------------------------------------------------- C: driver killed


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    proposer = random_proposer(seed=5)

    def respond(req: RecordedRequest) -> FakeReply:
        return FakeReply(json_obj=proposer(req), usage=CALL_USAGE)

    with FakeLLMServer(responder=respond) as srv:
        yield srv


def test_llm_sweep_resumes_after_driver_sigkill(server: FakeLLMServer, tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    args = [
        "-m", "hpo.train", "-m", "agent=openai", "agent.chain=single", "trainer=debug",
        "trainer.max_epochs=4", "agent.budget.max_tokens=2500",  # 3 calls of 1100 tokens
        "hydra.sweeper.n_trials=7", "hydra.sweeper.seed=0",
        f"hydra.sweeper.storage=sqlite:///{db}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    env = clean_env(OPENAI_API_KEY=KEY, OPENAI_BASE_URL=server.openai_base_url)
    proc = subprocess.Popen([sys.executable, *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def training_after_two_done() -> bool:
            ts = trials_of(db, None)
            done = [t for t in ts if t.state == TrialState.COMPLETE]
            # a RUNNING trial with its overrides set has been sampled: it is in training, and
            # no LLM request is in flight (n_jobs=1)
            busy = [t for t in ts if t.state == TrialState.RUNNING
                    and LAUNCH in t.user_attrs]
            return len(done) >= 2 and bool(busy)

        wait_for(training_after_two_done, 240, "two trials finished", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    study = load(db, None)
    assert study is not None
    before = study.get_trials()
    assert any(t.state == TrialState.RUNNING for t in before)  # killed mid-trial
    calls_before = study.user_attrs.get("hpo:llm_calls_total", 0)
    assert calls_before == len(server.requests)

    run_cli(args, cwd=tmp_path, env=env, timeout=600)  # the same command again
    study = load(db, None)
    assert study is not None
    trials = study.get_trials()
    orphans = assert_resumed_cleanly(trials, 7)
    assert all("orphaned" in t.user_attrs["hpo:error"] for t in orphans)
    # the token budget and the totals live in storage: over both runs the LLM was asked
    # exactly 3 times (3 x 1100 tokens >= max_tokens=2500), then the fallback took over
    totals = study.user_attrs
    assert len(server.requests) == 3
    assert totals["hpo:llm_calls_total"] == 3
    assert totals["hpo:tokens_in_total"] == 3 * CALL_USAGE[0]
    assert totals["hpo:tokens_out_total"] == 3 * CALL_USAGE[1]
    calls = {t.user_attrs["hpo:llm_call"] for t in trials if "hpo:llm_call" in t.user_attrs}
    assert calls == {"call-0001", "call-0002", "call-0003"}
    fresh = [t for t in trials if "hpo:retry_of" not in t.user_attrs]
    reasons = [t.user_attrs.get("hpo:fallback_reason") for t in fresh[4:]]
    assert reasons and set(reasons) == {"budget"}


# --------------------------------------------------------------------------- D: worker killed


def test_killed_worker_fails_its_trial_and_it_is_retried(
    quadratic_app: str, tmp_path: Path
) -> None:
    db = tmp_path / "s.db"
    args = [
        quadratic_app, "-m", "x=interval(-5, 5)", "y=range(0, 3)", "kind=a,b", "sleep=3",
        "hydra/launcher=submitit_local", "hydra.sweeper.n_trials=3", "hydra.sweeper.seed=2",
        f"hydra.sweeper.storage=sqlite:///{db}",
    ]
    env = clean_env(HPO_TEST_SWEEP_DIR=str(tmp_path / "multirun"))
    log = (tmp_path / "driver.log").open("w")
    proc = subprocess.Popen([sys.executable, *args], cwd=tmp_path, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    seen: dict[int, float] = {}
    try:
        def worker_in_trial() -> int | None:
            for pid in descendants(proc.pid):
                if "submitit.core._submit" in cmdline(pid):
                    first = seen.setdefault(pid, time.time())
                    if time.time() - first > 1.0:  # past its start-up, inside the app
                        return pid
            return None

        worker = wait_for(worker_in_trial, 120, "a worker process", proc)
        running = [t for t in trials_of(db, "quadratic") if t.state == TrialState.RUNNING]
        assert len(running) == 1
        victim = running[0]
        os.kill(worker, signal.SIGKILL)
        rc = proc.wait(180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        log.close()
    output = (tmp_path / "driver.log").read_text()
    assert rc == 0, output[-4000:]
    study = load(db, "quadratic")
    assert study is not None
    trials = study.get_trials()
    retried = assert_resumed_cleanly(trials, 3)
    assert [t.number for t in retried] == [victim.number]
    error = trials[victim.number].user_attrs["hpo:error"]
    assert error.startswith("job lost:"), error
    assert "\n" not in error
    assert "Traceback" not in output
