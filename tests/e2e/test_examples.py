"""docs/your-project.md's three ways in, run through ``examples/`` as a user would.

(a) ``examples/own_app``: a plain Hydra app with ``hydra/sweeper: hpo`` and hpo's ``agent``
group from the search path ``pkg://hpo.conf`` (source tree and wheel), swept with the LLM
(``FakeLLMServer`` over loopback); (b) ``examples/own_module``: one's own LightningModule and
DataModule through ``python -m hpo.train --config-dir``; (c) ``examples/own_trainer``: one's own
Trainer with hpo's callbacks (reporting, pruning, curves, artifacts).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState

from conftest import REPO_ROOT, clean_env, run_cli
from hpo.attrs import trial_output_dir
from hpo.testing import FakeLLMServer

optuna.logging.set_verbosity(optuna.logging.WARNING)

EXAMPLES = REPO_ROOT / "examples"
OPENAI_KEY = "sk-test-examples-0a1b2c3d"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(seed=3) as srv:
        yield srv


def _site_from_wheel(tmp: Path) -> Path:
    """hpo as a user installs it: the wheel, unpacked (no source tree on the path)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp), "."],
        cwd=REPO_ROOT, check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp.glob("hpo-*.whl")
    site = tmp / "site"
    zipfile.ZipFile(wheel).extractall(site)
    return site


@pytest.mark.slow
@pytest.mark.parametrize("install", ["source", "wheel"])
def test_own_app_finds_hpo_agent_group(install: str, tmp_path: Path) -> None:
    """``pkg://hpo.conf`` resolves from the source tree and from the installed wheel."""
    path = str(REPO_ROOT / "src") if install == "source" else str(_site_from_wheel(tmp_path))
    proc = run_cli([str(EXAMPLES / "own_app" / "app.py"), "--cfg", "job", "agent=openai",
                    "agent.chain=single"], cwd=tmp_path, env=clean_env(PYTHONPATH=path))
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["agent"]["provider"] == "openai"  # hpo's conf/agent/openai.yaml
    assert cfg["agent"]["chain"] == "single"
    assert cfg["agent"]["mode"] == "propose"  # ... and the auto.yaml it extends
    assert cfg["agent"]["context"].startswith("A toy stand-in")  # the app's own value wins
    assert cfg["lr"] == 0.01


@pytest.mark.slow
def test_own_app_sweeps_with_the_llm(server: FakeLLMServer, tmp_path: Path) -> None:
    server.reset()
    env = clean_env(OPENAI_API_KEY=OPENAI_KEY, OPENAI_BASE_URL=server.openai_base_url,
                    PYTHONPATH=str(REPO_ROOT / "src"))
    run_cli([str(EXAMPLES / "own_app" / "app.py"), "-m", "agent=openai", "agent.chain=single",
             "agent.adaptive_share=false", "hydra.sweeper.n_trials=4"], cwd=tmp_path, env=env)
    study = optuna.load_study(study_name="own_app",
                              storage=f"sqlite:///{tmp_path / 'outputs' / 'own_app.db'}")
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert trials[0].params == {"lr": 0.01, "width": 64, "activation": "relu"}
    assert [t.user_attrs["hpo:source"] for t in trials[1:]] == ["llm"] * 3
    proposer = [r for r in server.requests if r.system.startswith("You are the proposer")]
    assert proposer and all(r.api_key == OPENAI_KEY for r in proposer)
    assert "A toy stand-in for a training run" in proposer[0].last_user_text  # agent.context
    for t in trials:
        assert 1e-5 <= t.params["lr"] <= 1e-1 and 16 <= t.params["width"] <= 256


@pytest.mark.slow
def test_own_module_through_hpo_train(tmp_path: Path) -> None:
    own = EXAMPLES / "own_module"
    env = clean_env(PYTHONPATH=f"{own}:{REPO_ROOT / 'src'}")
    run_cli(["-m", "hpo.train", "-m", "--config-dir", str(own / "conf"), "model=tiny",
             "data=moons", "search_space=tiny", "trainer=debug", "agent=none",
             "hydra.sweeper.n_trials=3", "hydra.sweeper.study_name=tiny"], cwd=tmp_path, env=env)
    study = optuna.load_study(study_name="tiny",
                              storage=f"sqlite:///{tmp_path / 'outputs' / 'hpo.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert set(study.trials[0].params) == {"optimizer.lr", "model.hidden", "model.depth",
                                           "data.batch_size"}
    for t in study.trials:
        assert 0.0 <= t.value <= 1.0  # val/acc, logged by the module
        assert t.user_attrs["curves"]["val/acc"]  # hpo's reporter saw the module's metrics
        out = Path(str(trial_output_dir(t.number, t.user_attrs, study.user_attrs)))
        cfg = yaml.safe_load((out / ".hydra" / "config.yaml").read_text())
        assert cfg["model"]["_target_"] == "my_module.TinyClassifier"
        assert cfg["model"]["hidden"] == t.params["model.hidden"]
        assert cfg["data"]["batch_size"] == t.params["data.batch_size"]
        assert (out / "metrics.csv").is_file()


@pytest.mark.slow
def test_own_trainer_reports_prunes_and_uploads(tmp_path: Path) -> None:
    env = clean_env(PYTHONPATH=str(REPO_ROOT / "src"))
    proc = run_cli([str(EXAMPLES / "own_trainer" / "train.py"), "-m", "epochs=3",
                    "hydra.sweeper.n_trials=5", "hydra.sweeper.seed=0"], cwd=tmp_path, env=env)
    assert "GPU available" not in proc.stdout + proc.stderr  # quiet_lightning
    db = tmp_path / "outputs" / "own_trainer.db"
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    study = optuna.load_study(study_name="own_trainer", storage=storage)
    assert (tmp_path / "outputs" / "own_trainer.db.artifacts").is_dir()
    for t in study.trials:
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        assert t.intermediate_values  # one report per validation epoch
        assert len(t.user_attrs["curves"]["val/acc"]) >= len(t.intermediate_values)
        names = {m.filename for m in get_all_artifact_meta(t, storage=storage)}
        assert {"metrics.csv", "summary.json"} <= names, names
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, "seed 0 gives a trial that the median pruner stops (trial 3 on CPU)"
    for t in pruned:  # stopped after an epoch, before the last
        assert len(t.intermediate_values) < 3
        assert "pruned_at_epoch" in t.user_attrs
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete and all(len(t.intermediate_values) == 3 for t in complete)
