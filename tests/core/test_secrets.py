"""Fault matrix, secrets (issue 5 item 7): the API key never reaches a file, storage or a log.

A full CLI sweep (``python -m hpo.train -m agent=openai``, default ``outputs/`` layout, reply
cache on, Markdown prompt copies on) runs with a random canary key against the fake LLM server,
which echoes the key back wherever a careless or hostile server could: in error bodies (as
OpenAI's own 401/400 messages do), in a malformed reply, and in every string field of a reply
(rationale, diagnosis, parameter values and names, the model name, response headers), as the
raw key and as the ``Authorization: Bearer`` header it was sent in; bad values make the sampler
log the reply's problems and ask for a repair (the log line that once printed 'Bearer sk-…').
A second, foreign key that is configured nowhere (``sk-…`` shaped) is echoed too: only the
secret patterns can find it. Then every file under the run's directory (sweep dir, .hydra,
logs, checkpoints, prompt dumps, LLM cache, the SQLite file and its artifact store), every
attribute and note in storage, and the captured stdout/stderr are searched: neither key appears.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest

from conftest import clean_env, run_cli
from hpo.testing import FakeLLMServer, FakeReply, RecordedRequest

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.slow

P1 = {"optimizer.lr": 0.003, "optimizer.weight_decay": 0.0002, "data.batch_size": 32,
      "model.label_smoothing": 0.05, "optimizer": "adam"}
P2 = {"optimizer.lr": 0.02, "optimizer.weight_decay": 1e-05, "data.batch_size": 128,
      "model.label_smoothing": 0.1, "optimizer": "sgd"}


FOREIGN = f"sk-foreign-{secrets.token_hex(12)}"


def echo(key: str) -> FakeReply:
    """A reply with the key in every string field, a header and the model name."""
    bearer = f"Authorization: Bearer {key}"
    params = {**P1, "optimizer": f"Bearer {key}", "optimizer.lr": key, key: bearer,
              "model.label_smoothing": f"{bearer} {FOREIGN}"}
    return FakeReply(
        json_obj={
            "proposals": [{"params": params, "rationale": f"{bearer}; also Bearer {FOREIGN}"}],
            "diagnosis": f"{bearer} / {FOREIGN}",
        },
        headers={"x-echo-authorization": f"Bearer {key}", "x-request-id": key},
        model=f"gpt-{key}",
    )


@dataclass
class Leaky:
    """Responder whose every answer carries the key it was sent."""

    proposer: list[str]

    def __call__(self, req: RecordedRequest) -> Any:
        key = req.api_key or ""
        if req.system.startswith("You are the analyst"):
            return {"diagnosis": f"the run used key {key}", "findings": [f"key={key}"],
                    "recommendations": []}
        if not req.system.startswith("You are the proposer"):
            return None
        what = self.proposer.pop(0) if self.proposer else "ok2"
        if what == "echo":
            return echo(key)
        if what == "400":
            return FakeReply(status=400, error_message=f"Incorrect API key provided: {key}.")
        if what == "429":
            return FakeReply(status=429, headers={"retry-after-ms": "20"},
                             error_message=f"Rate limit reached for key {key}")
        if what == "malformed":
            return FakeReply(text=f"Sorry, I lost the JSON. Your key is {key}.")
        params = P1 if what == "ok1" else P2
        return FakeReply(json_obj={
            "proposals": [{"params": params, "rationale": f"because {key} said so"}],
            "diagnosis": f"diagnosis mentioning {key}",
        })


@dataclass
class Run:
    canary: str
    root: Path
    output: str
    study: optuna.Study
    requests: list[RecordedRequest]


@pytest.fixture(scope="module")
def canary_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    canary = f"sk-canary-{secrets.token_hex(12)}"
    root = tmp_path_factory.mktemp("secrets")
    with FakeLLMServer() as server:
        # the 400 comes last: a rejected request is permanent and turns the LLM off for the sweep;
        # the echo is answered to the proposal and to the repair it asks for
        server.responder = Leaky(["429", "ok1", "echo", "echo", "malformed", "ok2", "400"])
        env = clean_env(OPENAI_API_KEY=canary, OPENAI_BASE_URL=server.openai_base_url)
        proc = run_cli(
            ["-m", "hpo.train", "-m", "agent=openai", "agent.max_retries=1", "agent.cache=true",
             "trainer=debug", "hydra.sweeper.n_trials=6",
             "hydra.sweeper.seed=0"],
            cwd=root, env=env, timeout=600,
        )
        requests = server.requests
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{root / 'outputs/hpo.db'}")
    yield Run(canary=canary, root=root, output=proc.stdout + proc.stderr, study=study,
              requests=requests)


def needles(canary: str) -> list[bytes]:
    # the whole key, and its random part alone (a partial echo such as "sk-canary-1a2b..."),
    # and the foreign key
    return [canary.encode(), canary.removeprefix("sk-canary-").encode(), FOREIGN.encode(),
            FOREIGN.removeprefix("sk-foreign-").encode()]


def test_the_canary_was_really_used(canary_run: Run) -> None:
    assert canary_run.requests, "no LLM request was made"
    assert {r.api_key for r in canary_run.requests} == {canary_run.canary}
    sources = [t.user_attrs.get("hpo:source") for t in canary_run.study.trials]
    assert "llm" in sources and "fallback" in sources
    files = {p.relative_to(canary_run.root).parts[:2] for p in canary_run.root.rglob("*")}
    for where in [("outputs", "hpo.db"), ("outputs", "sweeps"), ("outputs", ".llm_cache")]:
        assert where in files, f"{'/'.join(where)} was not written"
    assert list((canary_run.root / "outputs/sweeps").glob("*/llm/call-*.json"))
    # the echo reached the sampler: its problems were logged (redacted) and a repair was asked
    assert "asking the chain for a repair" in canary_run.output
    assert "Bearer ***" in canary_run.output
    repairs = [r for r in canary_run.requests if "asked to repair" in r.system]
    assert repairs, "the echo did not lead to a repair request"


def leaks(run: Run, under: str = "") -> list[str]:
    found = []
    for path in sorted((run.root / under).rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if any(n in data for n in needles(run.canary)):
                found.append(str(path.relative_to(run.root)))
    return found


# the LLM reply cache: tested on its own below
OWN_TESTS = ("outputs/.llm_cache/",)


def test_no_file_under_the_run_holds_the_canary(canary_run: Run) -> None:
    found = [p for p in leaks(canary_run) if not p.startswith(OWN_TESTS)]
    assert not found, f"the canary key leaked into {found}"


def test_reply_cache_holds_no_canary(canary_run: Run) -> None:
    found = leaks(canary_run, "outputs/.llm_cache")
    assert not found, f"the canary key leaked into {found}"


def test_storage_holds_no_canary(canary_run: Run) -> None:
    study = canary_run.study
    storage = study._storage
    blobs: dict[str, Any] = {
        "study user attrs": study.user_attrs,
        "study system attrs (dashboard notes)": storage.get_study_system_attrs(study._study_id),
    }
    for t in study.trials:
        blobs[f"trial {t.number} user attrs"] = t.user_attrs
        blobs[f"trial {t.number} system attrs"] = t.system_attrs
    for where, blob in blobs.items():
        text = json.dumps(blob, default=str)
        for n in needles(canary_run.canary):
            assert n.decode() not in text, f"the canary key leaked into {where}"


def test_stdout_and_stderr_hold_no_canary(canary_run: Run) -> None:
    for n in needles(canary_run.canary):
        assert n.decode() not in canary_run.output
