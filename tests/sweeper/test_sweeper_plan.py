"""The sweeper's planning step: a frozen SweepPlan from options, config and command line.

No Hydra job, launcher or storage: the config is built with OmegaConf, the group options come
from a dict.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import optuna
import pytest
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hpo.errors import ConfigError, SearchSpaceError
from hpo.naming import default_study_name
from hydra_plugins.hpo_sweeper._dryrun import describe
from hydra_plugins.hpo_sweeper._plan import (
    LauncherFacts,
    SweepPlan,
    absolute_storage_url,
    build_plan,
)
from hydra_plugins.hpo_sweeper.config import HPOSweeperConf

GROUPS = {"model": ["cnn", "mlp", "resnet9"], "optimizer": ["adam", "sgd"]}
IN_PROCESS = LauncherFacts()
SLURM = LauncherFacts(name="SlurmLauncher", in_process=False, fast=False, remote=True,
                      executor="slurm", params={"partition": "debug"})


def app_config(subdir: str = "${hydra.job.num}", **extra: Any) -> DictConfig:
    """A composed-looking config: the app's keys plus the bits of ``hydra`` the plan reads."""
    cfg = {
        "model": {"name": "mlp", "hidden": 64, "net": {"channels": 16}},
        "optimizer": {"lr": 0.001, "momentum": 0.9},
        "trainer": {"max_epochs": 5},
        "seed": 0,
        "hydra": {
            "sweep": {"dir": "multirun/sweep", "subdir": subdir},
            "runtime": {"choices": {"model": "mlp", "optimizer": "adam",
                                    "hydra/launcher": "basic"}},
            "job": {"num": 0},
        },
        **extra,
    }
    return OmegaConf.create(cfg)


def plan_of(*arguments: str, config: DictConfig | None = None,
            launcher: LauncherFacts = IN_PROCESS, **options: Any) -> SweepPlan:
    return build_plan(HPOSweeperConf(**options), list(arguments), config or app_config(),
                      group_options=lambda g: GROUPS[g], launcher=launcher)


def test_plan_holds_the_space_defaults_and_fixed_overrides() -> None:
    plan = plan_of(
        "optimizer.lr=tag(log, interval(1e-5, 1e-1))", "model=mlp,cnn", "seed=3",
        "+trainer.extra=int(interval(1, 8))",
        params={"optimizer.momentum": "interval(0.5, 0.99)", "optimizer.lr": "interval(0, 1)"},
        descriptions={"optimizer.lr": "step size"}, n_trials=7, n_jobs=2,
    )
    assert plan.distributions == {
        "optimizer.momentum": FloatDistribution(0.5, 0.99),
        "optimizer.lr": FloatDistribution(1e-5, 1e-1, log=True),  # the command line wins
        "model": CategoricalDistribution(["mlp", "cnn"]),
        "trainer.extra": IntDistribution(1, 8),
    }
    specs = {s.name: s for s in plan.space}
    assert specs["optimizer.lr"].default == 0.001 and specs["optimizer.lr"].description == (
        "step size")
    assert specs["model"].default == "mlp"  # the group's choice in this run
    assert specs["trainer.extra"].default is None  # not in the config
    assert plan.fixed == ("seed=3",)
    assert plan.budget.n_trials == 7 and plan.slots == 2 and plan.folds == 1
    overrides = plan.trial_overrides({"optimizer.lr": 0.01, "model": "cnn", "trainer.extra": 4})
    assert overrides == ["seed=3", "optimizer.lr=0.01", "model=cnn", "+trainer.extra=4"]
    assert plan.sampler.fidelity == "up to 5 epochs per trial"
    assert plan.sampler.agent is None and plan.sampler.sensitive == {}


def test_plan_is_a_frozen_value() -> None:
    plan = plan_of("optimizer.lr=interval(0, 1)")
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.slots = 4  # type: ignore[misc]


def test_jobs_carry_the_trial_context_and_folds() -> None:
    plan = plan_of("optimizer.lr=interval(0, 1)")
    (job,) = plan.jobs(["optimizer.lr=0.5"], number=3, trial_id=11)
    assert job == ["optimizer.lr=0.5", "++hydra.job.env_set.HPO_TRIAL_NUMBER=3",
                   "++hydra.job.env_set.HPO_TRIAL_ID=11"]
    cv = plan_of("optimizer.lr=interval(0, 1)", config=app_config(cv={"folds": 3}))
    jobs = cv.jobs(["optimizer.lr=0.5"], number=3, trial_id=11)
    assert [j[-2:] for j in jobs] == [
        [f"cv.fold={i}", f"hydra.sweep.subdir=trial_3/fold_{i}"] for i in range(3)
    ]
    # every fold job finds the trial: its own per-class scores and curves, prune checks
    # (only fold 0 reports intermediate values: the job side decides that)
    assert all("++hydra.job.env_set.HPO_TRIAL_ID=11" in j for j in jobs)


def test_conditions_are_set_on_the_specs_not_written_into_descriptions() -> None:
    plan = plan_of(
        "model=mlp,cnn", "model.hidden=int(interval(16, 256))",
        "model.net.channels=int(interval(8, 64))",
        conditions={"model.hidden": "model=mlp", "model.net.channels": "model=cnn, resnet9"},
        descriptions={"model.hidden": "width of the MLP"},
    )
    specs = {s.name: s for s in plan.space}
    assert specs["model.hidden"].condition == ("model", ("mlp",))
    assert specs["model.net.channels"].condition == ("model", ("cnn", "resnet9"))
    assert specs["model"].condition is None
    assert specs["model.hidden"].description == "width of the MLP"
    assert plan.conditions == {"model.hidden": ("model", frozenset({"mlp"})),
                               "model.net.channels": ("model", frozenset({"cnn", "resnet9"}))}
    # one composition without the conditional params, then one per branch that enables some
    points = plan.validation_points()
    assert points[0] == {"model": "mlp"}
    assert {"model": "mlp", "model.hidden": 64} in points
    assert {"model": "cnn", "model.net.channels": 16} in points
    assert {"model": "resnet9", "model.net.channels": 16} in points


@pytest.mark.parametrize(
    ("arguments", "options", "error", "needle"),
    [
        ((), {"n_trials": 0}, ConfigError, "n_trials=0 must be an integer >= 1"),
        ((), {"n_trials": True}, ConfigError, "n_trials=True must be an integer"),
        ((), {"n_jobs": 0}, ConfigError, "n_jobs=0 must be an integer >= 1"),
        ((), {"max_failure_rate": 1.5}, ConfigError, "max_failure_rate=1.5 must be within"),
        ((), {"heartbeat_interval_s": 60, "heartbeat_grace_s": 30}, ConfigError,
         "heartbeat_grace_s=30 must be >="),
        ((), {"direction": "maximise"}, ConfigError, "'maximise' is not minimize or maximize"),
        ((), {"direction": []}, ConfigError, "direction is empty"),
        ((), {"pruner": "medain"}, ConfigError, "pruner='medain' is unknown"),
        (("model=mlp,vit",), {}, ConfigError, "model=vit is not an option of config group"),
        (("seed=1",), {}, SearchSpaceError, "nothing to search"),
        (("x=interval(5, -5)",), {}, SearchSpaceError, "low > high"),
        ((), {"conditions": {"model.hidden": "model=mlp"}}, ConfigError,
         "names 'model.hidden', which is not searched"),
        (("model.hidden=int(interval(1, 9))",), {"conditions": {"model.hidden": "model"}},
         ConfigError, "write '<searched param>=value[,value]'"),
        ((), {"direction": ["maximize", "minimize"]}, ConfigError,
         "names 1 metric(s) but hydra.sweeper.direction"),
    ],
)
def test_bad_sweeps_fail_with_one_line(
    arguments: tuple[str, ...], options: dict[str, Any], error: type[Exception], needle: str
) -> None:
    config = app_config(objective="val/acc")
    args = arguments or ("optimizer.lr=interval(0, 1)",)
    with pytest.raises(error) as info:
        plan_of(*args, config=config, **options)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_objectives_and_directions() -> None:
    plan = plan_of("optimizer.lr=interval(0, 1)", direction=["maximize", "minimize"],
                   config=app_config(objective=["val/acc", "params"]))
    assert plan.directions == ("maximize", "minimize")
    assert plan.objective_names == ("val/acc", "params")
    assert [d.name for d in plan.study_directions] == ["MAXIMIZE", "MINIMIZE"]
    generic = plan_of("optimizer.lr=interval(0, 1)", direction=["maximize", "minimize"])
    assert generic.objective_names == ("objective_0", "objective_1")


def test_storage_url_is_absolute_and_wal_only_when_jobs_share_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert absolute_storage_url("sqlite:///out/hpo.db") == f"sqlite:///{tmp_path}/out/hpo.db"
    assert absolute_storage_url("sqlite:///out/hpo.db?journal_mode=delete") == (
        f"sqlite:///{tmp_path}/out/hpo.db?journal_mode=delete")
    assert absolute_storage_url("sqlite:////abs/hpo.db") == "sqlite:////abs/hpo.db"
    assert absolute_storage_url("journal://j/hpo.log") == f"journal://{tmp_path}/j/hpo.log"
    assert absolute_storage_url("memory") == "memory"
    local = plan_of("optimizer.lr=interval(0, 1)", storage="sqlite:///o/h.db")
    assert local.sqlite_wal and not local.in_memory
    assert local.storage_url == f"sqlite:///{tmp_path}/o/h.db"
    remote = plan_of("optimizer.lr=interval(0, 1)", launcher=SLURM)
    assert not remote.sqlite_wal
    assert plan_of("optimizer.lr=interval(0, 1)", storage="memory").in_memory


@pytest.mark.parametrize(
    ("subdir", "folds", "launcher", "expected"),
    [
        ("${hydra.job.num}", 1, IN_PROCESS, "multirun/sweep/{number}"),
        ("trial_${hydra.job.num}", 1, IN_PROCESS, "multirun/sweep/trial_{number}"),
        ("trial_${hydra.job.num}", 3, IN_PROCESS, "multirun/sweep/trial_{number}/fold_0"),
        ("${hydra.job.override_dirname}", 1, IN_PROCESS, None),
        ("${hydra.job.id}", 1, IN_PROCESS, None),
        ("fixed", 1, IN_PROCESS, None),
        ("${hydra.job.num}", 1, SLURM, None),
    ],
)
def test_output_dir_is_derived_only_from_the_job_number(
    subdir: str, folds: int, launcher: LauncherFacts, expected: str | None
) -> None:
    config = app_config(subdir=subdir, cv={"folds": folds})
    plan = plan_of("optimizer.lr=interval(0, 1)", config=config, launcher=launcher)
    if expected is None:
        assert plan.output_dir_pattern is None and plan.output_dir(4) is None
    else:
        assert plan.output_dir_pattern == os.path.abspath(expected)
        assert plan.output_dir(4) == os.path.abspath(expected.replace("{number}", "4"))


def test_an_agent_node_plans_the_llm_sampler_with_anonymized_names() -> None:
    config = app_config(agent={"provider": "openai", "model": "gpt-4o-mini"},
                        data={"name": "digits"})
    with_choice = OmegaConf.merge(config, {"hydra": {"runtime": {"choices": {"data": "digits"}}}})
    plan = plan_of("optimizer.lr=interval(0, 1)", config=with_choice, study_name="secret_study")
    assert plan.sampler.agent is not None and plan.sampler.agent.model == "gpt-4o-mini"
    assert plan.sampler.dump_dir == str(Path("multirun/sweep") / "llm")
    assert "secret_study" in plan.sampler.sensitive and "digits" in plan.sampler.sensitive
    # an explicit sampler wins: the agent node is not used
    explicit = plan_of("optimizer.lr=interval(0, 1)", config=with_choice,
                       sampler={"_target_": "optuna.samplers.RandomSampler"})
    assert explicit.sampler.agent is None


def test_the_dry_run_prints_the_plan_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "s.db"
    plan = plan_of("optimizer.lr=interval(0, 1)", "model=mlp,cnn", "seed=7", study_name=None,
                   storage=f"sqlite:///{db}", n_jobs=2, n_trials=5, fallback_sampler=None)
    batch = describe(plan)
    out = capsys.readouterr().out
    assert not db.exists()  # a study that does not exist yet is not created
    assert len(batch) == 2 and all(b[0] == "seed=7" for b in batch)
    assert f"DRY RUN: study {plan.study_name!r} holds 0 trial(s) of n_trials=5" in out
    assert f"  trial 1: {' '.join(batch[1])}" in out and "sbatch" not in out
    # a study in storage: the dry run starts after its trials, within the budget
    study = optuna.create_study(study_name=plan.study_name, storage=f"sqlite:///{db}")
    for lr in (0.1, 0.2, 0.3, 0.4):
        study.enqueue_trial({"optimizer.lr": lr, "model": "mlp"})
        trial = study.ask(plan.distributions)
        study.tell(trial, lr)
    assert len(describe(plan)) == 1
    assert "holds 4 trial(s) of n_trials=5; the first 1 trial(s)" in capsys.readouterr().out
    # on SLURM the sbatch script of the first trial follows, from the launcher's parameters
    slurm = plan_of("optimizer.lr=interval(0, 1)", launcher=SLURM, storage="memory",
                    fallback_sampler=None)
    describe(slurm)
    out = capsys.readouterr().out
    assert "sbatch script that would be submitted for the first trial:" in out
    assert "debug" in out  # the partition


def test_an_unnamed_study_is_named_by_the_config_and_its_space_and_the_sweep_dir_follows(
) -> None:
    config = app_config()
    config.hydra.sweep.dir = "multirun/${hydra.sweeper.study_name}"
    config.hydra.job.config_name = "train"
    plan = plan_of("optimizer.lr=interval(0, 1)", config=config)
    assert not plan.study_named
    assert plan.study_name == plan.default_study_name == default_study_name(
        "train", plan.distributions)
    assert plan.sweep_dir == f"multirun/{plan.study_name}"
    OmegaConf.update(config, "hydra.sweeper.study_name", "mine", force_add=True)
    named = plan_of("optimizer.lr=interval(0, 1)", config=config, study_name="mine")
    assert named.study_named and named.study_name == "mine"
    assert named.default_study_name == plan.study_name
