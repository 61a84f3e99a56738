"""hpo.best: optimization_results.yaml, ``python -m hpo.best`` and the exported config.

One real sweep of ``python -m hpo.train`` (3 tiny trials in SQLite) is shared by the tests that
read it; the exported config is checked by composing it (``--cfg job``) against the trial's own
command line, and by running it: the same objective value comes back.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import yaml
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from conftest import clean_env, run_cli, run_cli_batch
from hpo import attrs
from hpo.best import RESULTS_FILE, App, app_of, export_config, results, write_results
from hpo.errors import ConfigError

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

SWEEP = ["trainer=debug", "agent=none", "search_space=none", "model=mlp,cnn",
         "optimizer.lr=tag(log, interval(1e-3, 1e-1))"]


@dataclass
class Swept:
    root: Path
    url: str
    sweep_dir: Path

    def study(self) -> optuna.Study:
        return optuna.load_study(study_name=None, storage=self.url)


def composed(overrides: list[str]) -> object:
    """The config the sweeper holds (with its ``hydra`` node), composed like the CLI does."""
    from hydra import compose, initialize_config_dir

    from hpo.paths import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Swept:
    root = tmp_path_factory.mktemp("best")
    url = f"sqlite:///{root / 's.db'}"
    run_cli(["-m", "hpo.train", "-m", *SWEEP, "hydra.sweeper.n_trials=3",
             f"hydra.sweeper.storage={url}", f"hydra.sweep.dir={root / 'sweep'}",
             "hydra.sweeper.seed=0"], cwd=root)
    return Swept(root=root, url=url, sweep_dir=root / "sweep")


def sweep_app() -> App:
    fixed = [o for o in SWEEP if "," not in o and "(" not in o]
    return app_of(composed(fixed),
                  argv=["/venv/bin/python", "-m", "hpo.train", "-m", *SWEEP])


# ---------------------------------------------------------------------------- the app


@pytest.mark.parametrize(("argv", "expected"), [
    (["python", "-m", "hpo.train", "-m", "x=1"], ["python", "-m", "hpo.train"]),
    (["/usr/bin/python3", "-u", "-m", "hpo.train", "--config-name", "forecast", "-m"],
     ["python", "-m", "hpo.train", "--config-name", "forecast"]),
    (["python", "apps/my_app.py", "-cp", "conf", "-cn=exp", "-m", "lr=interval(0,1)"],
     ["python", "apps/my_app.py", "--config-path", "conf", "--config-name", "exp"]),
    (["/venv/bin/python", "/venv/bin/hpo-train", "-m", "--config-dir", "mine"],
     ["hpo-train", "--config-dir", "mine"]),
])
def test_app_keeps_the_program_and_its_config_flags(argv: list[str],
                                                     expected: list[str]) -> None:
    app = app_of(composed(["model=cnn"]), argv=argv)
    assert list(app.argv) == expected
    assert app.config_name == "train"
    assert {"model", "optimizer", "data", "trainer", "agent"} <= set(app.groups)
    assert not any(g.startswith("hydra/") for g in app.groups)
    assert app.config_dir is not None and app.config_dir.startswith("file://")
    assert App.from_record(app.record()) == app


# ---------------------------------------------------------------------------- results file


def test_results_file_has_the_peers_keys_and_the_rerun_command(swept: Swept) -> None:
    study = swept.study()
    path = write_results(study, swept.sweep_dir, app=sweep_app(), storage_url=swept.url)
    assert path == swept.sweep_dir / RESULTS_FILE
    res = OmegaConf.load(path)  # as hydra-optuna-sweeper's users read it
    best = study.best_trial
    assert res.name == "optuna"
    assert res.study_name == study.study_name and res.study_name.startswith("train-")
    assert res.direction == "maximize"
    assert res.objective == "val/acc"
    assert dict(res.best_params) == best.params
    assert res.best_value == best.value
    assert res.best_trial_number == best.number
    tokens = shlex.split(res.command)
    assert tokens[:3] == ["python", "-m", "hpo.train"]
    assert f"model={best.params['model']}" in tokens
    assert f"optimizer.lr={best.params['optimizer.lr']!r}" in tokens
    assert "trainer=debug" in tokens
    # the app is recorded in the study, for python -m hpo.best
    assert App.from_record(optuna.load_study(study_name=None, storage=swept.url)
                           .user_attrs[attrs.APP]) == sweep_app()


def test_no_complete_trial_writes_no_file(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    study.add_trial(create_trial(state=TrialState.FAIL))
    assert write_results(study, tmp_path, app=None) is None
    assert not (tmp_path / RESULTS_FILE).exists()


# ---------------------------------------------------------------------------- export


def test_exported_config_reruns_the_best_trial(swept: Swept) -> None:
    study = swept.study()
    write_results(study, swept.sweep_dir, app=sweep_app())
    out = swept.root / "exported"
    proc = run_cli(["-m", "hpo.best", "--storage", swept.url, "--export", str(out / "best.yaml")],
                   cwd=swept.root)
    best = study.best_trial
    assert f"trial {best.number}: val/acc=" in proc.stdout
    assert "rerun: python -m hpo.train trainer=debug" in proc.stdout
    assert "does not record its app" not in proc.stdout
    command = proc.stdout.strip().splitlines()[-1].strip()
    assert command == f"python -m hpo.train --config-dir {out} --config-name best"
    doc = yaml.safe_load((out / "best.yaml").read_text())
    assert doc["defaults"][0] == "train" and doc["defaults"][-1] == "_self_"
    assert {"override /model": best.params["model"]} in doc["defaults"]

    # the exported command composes the trial's config exactly
    exported = run_cli([*shlex.split(command)[1:], "--cfg", "job"], cwd=swept.root).stdout
    overrides = attrs.launch_overrides(best.user_attrs)
    assert overrides is not None
    direct = run_cli(["-m", "hpo.train", *overrides, "--cfg", "job"], cwd=swept.root).stdout
    assert exported == direct
    cfg = OmegaConf.create(exported)
    assert cfg.optimizer.lr == best.params["optimizer.lr"]
    # ... and trains to the trial's value (CPU, seeded)
    ran = run_cli(shlex.split(command)[1:], cwd=swept.root)
    value = re.search(r"objective: val/acc=([0-9.]+)", ran.stdout + ran.stderr)
    assert value is not None
    assert float(value.group(1)) == pytest.approx(best.value, abs=1e-5)


def _multi_study(url: str) -> optuna.Study:
    study = optuna.create_study(study_name="mo", storage=url,
                                directions=["maximize", "minimize"])
    study.set_metric_names(["val/acc", "model/params"])
    dists = {"model": CategoricalDistribution(["mlp", "cnn"]),
             "optimizer.lr": FloatDistribution(1e-4, 1e-1, log=True)}
    rows = [("mlp", 0.01, [0.90, 1000.0]), ("cnn", 0.002, [0.95, 5000.0]),
            ("mlp", 0.05, [0.80, 2000.0]), ("cnn", 0.03, [0.97, 9000.0])]
    for model, lr, values in rows:
        params = {"model": model, "optimizer.lr": lr}
        launch = attrs.launch_record("h:1:1", ["trainer=debug", f"model={model}",
                                               f"optimizer.lr={lr!r}"])
        study.add_trial(create_trial(params=params, distributions=dists, values=values,
                                     user_attrs={attrs.LAUNCH: launch}))
    return study


def test_multi_objective_lists_the_pareto_front(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'mo.db'}"
    study = _multi_study(url)
    res = results(study)
    assert res is not None
    assert res["directions"] == ["maximize", "minimize"]
    assert res["objectives"] == ["val/acc", "model/params"]
    assert [t["number"] for t in res["best_trials"]] == [3, 1, 0]  # best val/acc first
    assert res["solutions"] == [{"params": t["params"], "values": t["values"]}
                                for t in res["best_trials"]]
    assert res["best_trials"][0]["command"] == (
        "python -m hpo.train trainer=debug model=cnn optimizer.lr=0.03")
    proc = run_cli(["-m", "hpo.best", "--storage", url, "--export",
                    str(tmp_path / "best.yaml")], cwd=tmp_path)
    assert "Pareto front (3 trials) of 4 complete" in proc.stdout
    assert sorted(p.name for p in tmp_path.glob("best*.yaml")) == [
        "best_trial0.yaml", "best_trial1.yaml", "best_trial3.yaml"]
    proc = run_cli(["-m", "hpo.best", "--storage", url, "--trial", "2"], cwd=tmp_path)
    assert "trial 2: val/acc=0.8, model/params=2000" in proc.stdout


# ---------------------------------------------------------------------------- bad input


def _storage_with_empty_study(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'e.db'}"
    study = optuna.create_study(study_name="empty", storage=url)
    study.add_trial(create_trial(state=TrialState.FAIL))
    return url


BAD_INPUT = [
    (["--storage", "sqlite:///{tmp}/missing.db"], "does not exist"),
    (["--storage", "nosuch://x"], "cannot"),
    (["--storage", "{empty}", "--study", "other"], "study 'other' is not in storage"),
    (["--storage", "{empty}"], "has no complete trial yet (1 fail)"),
    (["--storage", "{mo}", "--trial", "9"], "--trial 9: study 'mo' has trials 0..3"),
    (["--storage", "{mo}", "--trial", "3", "--export", "{tmp}/out/train.yaml"],
     "named like the app's config"),
    (["--storage", "{mo}", "--export", "{tmp}/out/best.txt"], "name the file <name>.yaml"),
]


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, tuple[Path, subprocess.CompletedProcess[str]]]:
    """Each bad command line of ``python -m hpo.best`` in its own folder, all in one process
    (tests/apps/cli_batch.py)."""
    runs = {}
    for args, _ in BAD_INPUT:
        tmp = tmp_path_factory.mktemp("bad")
        values = {"tmp": str(tmp), "empty": _storage_with_empty_study(tmp),
                  "mo": f"sqlite:///{tmp / 'mo.db'}"}
        _multi_study(values["mo"])
        runs[" ".join(args)] = (["-m", "hpo.best", *(a.format(**values) for a in args)], tmp,
                                None)
    return {key: (runs[key][1], p) for key, p in run_cli_batch(runs).items()}


@pytest.mark.parametrize(("args", "message"), BAD_INPUT)
def test_bad_input_is_one_line_and_writes_nothing(
    bad_runs: dict[str, tuple[Path, subprocess.CompletedProcess[str]]], args: list[str],
    message: str
) -> None:
    tmp_path, proc = bad_runs[" ".join(args)]
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "missing.db").exists()


def test_export_refuses_a_trial_without_overrides(tmp_path: Path) -> None:
    trial = create_trial(params={"x": 1.0}, distributions={"x": FloatDistribution(0, 2)},
                         value=1.0)
    with pytest.raises(ConfigError, match="no stored overrides"):
        export_config(App.hpo_train(), trial, tmp_path / "best.yaml")
    assert not (tmp_path / "best.yaml").exists()


# ---------------------------------------------------------------------------- the sweeper


@pytest.mark.slow
def test_every_sweep_writes_optimization_results(quadratic_app: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    run_cli([quadratic_app, "-m", "x=interval(-4, 4)", "y=range(0, 2)",
             f"hydra.sweeper.storage={url}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
             "hydra.sweeper.n_trials=4", "hydra.sweeper.seed=0"],
            cwd=tmp_path, env=clean_env())
    study = optuna.load_study(study_name="quadratic", storage=url)
    res = OmegaConf.load(tmp_path / "sweep" / RESULTS_FILE)
    assert res.name == "optuna"
    assert dict(res.best_params) == study.best_trial.params
    assert res.best_value == study.best_value
    assert shlex.split(res.command)[:2] == ["python", quadratic_app]


def test_several_studies_show_the_latest_and_name_the_others(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    for name, value in (("older", 1.0), ("newer", 2.0)):
        study = optuna.create_study(study_name=name, storage=url, direction="maximize")
        study.add_trial(create_trial(params={"x": value},
                                     distributions={"x": FloatDistribution(0, 3)}, value=value))
    proc = run_cli(["-m", "hpo.best", "--storage", url], cwd=tmp_path)
    assert "showing the latest, 'newer' (--study NAME for another: 'older')" in proc.stderr
    assert "2.0" in proc.stdout and "'older'" not in proc.stdout
