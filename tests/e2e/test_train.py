"""hpo.train: every config option composes and instantiates; runs and sweeps end to end."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from conftest import REPO_ROOT, clean_env, run_cli
from hpo.attrs import trial_output_dir
from hpo.train import config_dir

optuna.logging.set_verbosity(optuna.logging.WARNING)
CONF = Path(config_dir())


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_group_has_the_promised_options() -> None:
    assert {"digits", "mnist", "fashion_mnist", "cifar10"} <= set(options("data"))
    assert {"mlp", "cnn", "resnet9"} <= set(options("model"))
    assert {"adamw", "adam", "sgd"} <= set(options("optimizer"))
    assert {"none", "cosine", "step"} <= set(options("scheduler"))
    assert {"default", "gpu", "debug"} <= set(options("trainer"))
    agents = {"auto", "claude", "openai", "deepseek", "gemini", "openrouter", "local", "none"}
    assert agents <= set(options("agent"))


@pytest.fixture(scope="module")
def composer():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield lambda *o: compose(config_name="train", overrides=list(o))


@pytest.mark.parametrize("data", options("data"))
def test_data_options_instantiate_without_touching_disk(composer, data: str) -> None:
    cfg = composer(f"data={data}", "seed=0")
    dm = instantiate(cfg.data)
    assert dm.num_classes == 10 and len(dm.input_shape) == 3


@pytest.mark.parametrize("model", options("model"))
@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_model_optimizer_scheduler_instantiate_and_step(
    composer, model: str, optimizer: str, scheduler: str
) -> None:
    import torch

    cfg = composer(f"model={model}", f"optimizer={optimizer}", f"scheduler={scheduler}")
    sched = instantiate(cfg.scheduler) if "_target_" in cfg.scheduler else None
    module = instantiate(
        cfg.model, optimizer=instantiate(cfg.optimizer), scheduler=sched,
        input_shape=(1, 8, 8), num_classes=10,
    )
    opt = module.configure_optimizers()
    if isinstance(opt, tuple):
        opt = opt[0][0]
    first = opt["optimizer"] if isinstance(opt, dict) else opt
    assert isinstance(first, torch.optim.Optimizer)
    out = module(torch.zeros(4, 1, 8, 8))
    assert out.shape == (4, 10)


@pytest.mark.parametrize("trainer", options("trainer"))
def test_trainer_options_compose(composer, trainer: str) -> None:
    from hpo.tasks.lightning import trainer_config

    cfg = composer(f"trainer={trainer}")
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    node, quiet = trainer_config(cfg)  # hpo's own `quiet` key is not a Trainer argument
    assert quiet is True
    if trainer != "gpu":  # a GPU trainer can only be built where there is a GPU
        t = instantiate(node, logger=False, enable_checkpointing=False)
        assert t.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("agent", options("agent"))
def test_agent_options_compose(composer, agent: str) -> None:
    cfg = composer(f"agent={agent}")
    assert "provider" in cfg.agent


@pytest.mark.parametrize("space", options("search_space"))
def test_search_space_presets_parse(composer, space: str) -> None:
    from hydra_plugins.hpo_sweeper._grammar import parse_params

    cfg = compose(config_name="train", overrides=[f"search_space={space}"],
                  return_hydra_config=True)
    params = dict(cfg.hydra.sweeper.params or {})
    parsed = parse_params([(k, str(v)) for k, v in params.items()]) if params else []
    assert all(p.distribution is not None for p in parsed)


# Lightning's banners, tips and notes that a trial must not print (trainer.quiet=true)
LIGHTNING_NOISE = ("GPU available", "TPU available", "litlogger", "LOCAL_RANK",
                   "Restoring states", "Loaded model weights", "`Trainer.fit` stopped")


def test_single_run_prints_epochs_and_the_objective(tmp_path: Path) -> None:
    proc = run_cli(["-m", "hpo.train", "trainer=debug", "trainer.max_epochs=2"], cwd=tmp_path)
    assert "objective: val/acc=" in proc.stdout
    epochs = re.findall(
        r"epoch (\d)/2: train/loss=\S+ val/loss=\S+ val/acc=\S+ \(\d+\.\d s\)", proc.stdout
    )
    assert epochs == ["1", "2"], proc.stdout
    output = proc.stdout + proc.stderr
    assert not [n for n in LIGHTNING_NOISE if n in output], output
    runs = list((tmp_path / "outputs" / "runs").iterdir())
    assert len(runs) == 1
    out = runs[0]
    assert (out / "metrics.csv").exists() and (out / "summary.json").exists()
    assert (out / "checkpoints" / "best.ckpt").exists()
    assert not (out / "csv").exists()  # one metrics.csv: hpo's, no Lightning CSV logger


def test_help_describes_groups_and_sweep(tmp_path: Path) -> None:
    out = run_cli(["-m", "hpo.train", "--help"], cwd=tmp_path).stdout
    for needle in ("python -m hpo.train -m", "data: cifar10, digits", "model: cnn, mlp, resnet9",
                   "optimizer: adam, adamw, sgd", "trainer: debug, default, gpu",
                   "agent:", "search_space:", "tag(log, interval"):
        assert needle in out, needle


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The issue's check: 6 trials, 2 slots, log-uniform lr, model choice, SQLite."""
    tmp = tmp_path_factory.mktemp("sweep")
    proc = run_cli(_check_command(tmp), cwd=tmp)
    (tmp / "output.txt").write_text(proc.stdout + proc.stderr)
    return tmp


def _check_command(tmp: Path) -> list[str]:
    return [
        "-m", "hpo.train", "-m", "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=2",
        f"hydra.sweeper.storage=sqlite:///{tmp / 's.db'}",
        "optimizer.lr=tag(log, interval(1e-4, 1e-1))", "model=mlp,cnn",
        "search_space=none", "trainer.max_epochs=2", "trainer.limit_train_batches=5",
    ]


@pytest.mark.slow
def test_sweep_stores_six_trials_with_real_distributions(swept: Path) -> None:
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{swept / 's.db'}")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    for t in trials:
        assert t.distributions["optimizer.lr"] == FloatDistribution(1e-4, 1e-1, log=True)
        assert t.distributions["model"] == CategoricalDistribution(["mlp", "cnn"])
        assert 0.0 <= t.value <= 1.0
        assert sorted(t.intermediate_values) == [0, 1]  # per-epoch values from the job
        assert str(trial_output_dir(t.number, t.user_attrs, study.user_attrs)).endswith(
            f"trial_{t.number}")
    baseline = trials[0]
    assert baseline.params == {"optimizer.lr": 1e-3, "model": "mlp"}  # config defaults first
    assert baseline.user_attrs["hpo:source"] == "baseline"
    assert study.metric_names == ["val/acc"]


@pytest.mark.slow
def test_sweep_trials_print_no_lightning_noise(swept: Path) -> None:
    output = (swept / "output.txt").read_text()
    assert not [n for n in LIGHTNING_NOISE if n in output], output
    assert "objective:" not in output  # the driver logs each trial's result once
    assert not re.search(r"^epoch \d", output, re.M)  # per-epoch lines: single runs only


@pytest.mark.slow
def test_same_command_again_leaves_six(swept: Path) -> None:
    run_cli(_check_command(swept), cwd=swept)
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{swept / 's.db'}")
    assert len(study.trials) == 6


@pytest.mark.slow
def test_dashboard_serves_the_study(swept: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("optuna-dashboard")), f"sqlite:///{swept / 's.db'}",
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        data = None
        for _ in range(120):
            try:
                url = f"http://127.0.0.1:{port}/api/studies"
                with urllib.request.urlopen(url, timeout=2) as r:
                    data = json.load(r)
                    break
            except OSError:
                time.sleep(0.25)
        assert data is not None, "optuna-dashboard did not answer"
        (summary,) = data["study_summaries"]  # the storage's only study
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}", timeout=5
        ) as r:
            detail = json.load(r)
        assert len(detail["trials"]) == 6
        names = {p["name"] for p in detail["union_search_space"]}
        assert names == {"optimizer.lr", "model"}
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
def test_submitit_local_sweep_of_the_training_task(tmp_path: Path) -> None:
    run_cli(
        ["-m", "hpo.train", "-m", "hydra/launcher=submitit_local", "hydra.sweeper.n_trials=2",
         "hydra.sweeper.n_jobs=2", f"hydra.sweeper.storage=sqlite:///{tmp_path / 's.db'}",
         "search_space=none", "model=mlp,cnn", "trainer=debug",
         f"hydra.launcher.submitit_folder={tmp_path / 'submitit'}"],
        cwd=tmp_path,
    )
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path / 's.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert all(t.intermediate_values for t in study.trials)  # reported from the job process


@pytest.mark.slow
def test_wheel_ships_conf_and_runs_from_any_directory(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), "."],
        cwd=REPO_ROOT, check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("hpo-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "hpo/conf/train.yaml" in names and "hpo/conf/model/mlp.yaml" in names
    assert any(n.startswith("hydra_plugins/hpo_sweeper/") for n in names)
    assert "hydra_plugins/__init__.py" not in names  # a namespace package
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_cli(
        ["-c", "import hpo.train as t; print(t.config_dir())"], cwd=elsewhere,
        env=clean_env(PYTHONPATH=str(site)),
    )
    assert proc.stdout.strip() == str(site / "hpo" / "conf")
    proc = run_cli(["-m", "hpo.train", "--cfg", "job", "model=cnn"], cwd=elsewhere,
                   env=clean_env(PYTHONPATH=str(site)))
    assert "hpo.tasks.nets.CNN" in proc.stdout
