"""Architecture search with conditional parameters, k-fold cross-validation, per-class scores in
trial attrs and the accuracy-versus-size two-objective study: short CLI sweeps of hpo.train on
the bundled digits (CPU, trainer=debug), plus the data modules' fold splits."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf

from conftest import REPO_ROOT, clean_env, run_cli_batch
from hpo.attrs import launch_overrides
from hpo.errors import ConfigError

optuna.logging.set_verbosity(optuna.logging.WARNING)

# the parameters each model family may carry in search_space=nas
COMMON = {"model", "model.net.dropout", "optimizer.lr"}
OWN = {
    "mlp": {"model.net.hidden_dim", "model.net.depth"},
    "cnn": {"model.net.depth", "model.net.channels", "model.net.kernel_size"},
    "resnet9": {"model.net.width"},
}


SWEEPS = {  # study name: its overrides; the three sweeps run in one process (module fixture)
    "nas": ("search_space=nas", "hydra.sweeper.n_trials=5"),
    "cv": ("cv.folds=3", "hydra.sweeper.n_trials=2",
           "optimizer.lr=tag(log, interval(1e-3, 1e-2))"),
    "acc_vs_size": ("+experiment=acc_vs_size", "hydra.sweeper.n_trials=4"),
}


def sweep_args(tmp: Path, study: str, *overrides: str) -> list[str]:
    return ["-m", "hpo.train", "-m", "trainer=debug", "agent=none",
            f"hydra.sweeper.storage=sqlite:///{tmp / 's.db'}", f"hydra.sweep.dir={tmp / 'sweep'}",
            f"hydra.sweeper.study_name={study}", "hydra.sweeper.seed=3", *overrides]


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, optuna.Study]]:
    """The three short sweeps, one after the other in ONE process (tests/apps/cli_batch.py):
    each its own folder, storage and command line, as separate ``python -m hpo.train -m``."""
    dirs = {name: tmp_path_factory.mktemp(name) for name in SWEEPS}
    done = run_cli_batch({n: (sweep_args(dirs[n], n, *o), dirs[n], clean_env())
                          for n, o in SWEEPS.items()}, timeout=1200)
    out = {}
    for name, proc in done.items():
        tmp = dirs[name]
        assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{proc.stderr[-4000:]}"
        out[name] = tmp, optuna.load_study(study_name=name, storage=f"sqlite:///{tmp / 's.db'}")
    return out


# --- folds of the data modules -----------------------------------------------------------------


def test_digits_folds_partition_the_data() -> None:
    from hpo.tasks.data import DigitsDataModule

    seen: list[int] = []
    for fold in range(3):
        dm = DigitsDataModule(folds=3, fold=fold, seed=5)
        dm.setup("fit")
        assert dm.train_set is not None and dm.val_set is not None
        assert len(dm.train_set) + len(dm.val_set) == 1797  # type: ignore[arg-type]
        x_val = dm.val_set.tensors[0]  # type: ignore[attr-defined]
        y_val = dm.val_set.tensors[1]  # type: ignore[attr-defined]
        assert int(y_val.bincount(minlength=10).min()) >= 55  # stratified
        # identify examples by their pixels: folds are disjoint and cover the data
        seen += [hash(row.numpy().tobytes()) for row in x_val]
    assert len(seen) == 1797
    plain = DigitsDataModule(seed=5)  # folds=1: the existing val_fraction split
    plain.setup("fit")
    assert len(plain.val_set) == pytest.approx(0.2 * 1797, abs=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(("folds", "fold", "needle"),
                         [(0, 0, "folds=0 must be at least 1"),
                          (3, 3, "fold=3 is outside [0, folds=3)"),
                          (3, -1, "fold=-1 is outside")])
def test_bad_folds_are_rejected(folds: int, fold: int, needle: str) -> None:
    from hpo.tasks.data import DigitsDataModule, TorchvisionDataModule

    with pytest.raises(ConfigError, match=re.escape(needle)):
        DigitsDataModule(folds=folds, fold=fold)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        TorchvisionDataModule(name="mnist", download=False, folds=folds, fold=fold)


def test_data_configs_read_cv_with_a_fallback() -> None:
    for path in sorted((REPO_ROOT / "conf" / "data").glob("*.yaml")):
        node = OmegaConf.load(path)
        assert node.folds == 1 and node.fold == 0, path  # no cv node: plain split
        with_cv = OmegaConf.merge({"cv": {"folds": 4, "fold": 2}, "seed": 0}, {"d": node})
        assert with_cv.d.folds == 4 and with_cv.d.fold == 2, path


# --- sweeps ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_nas_trials_carry_only_their_models_params(
    swept: dict[str, tuple[Path, optuna.Study]]
) -> None:
    _, study = swept["nas"]
    trials = study.trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 5
    models = set()
    for t in trials:
        model = t.params["model"]
        models.add(model)
        assert set(t.params) == COMMON | OWN[model], (t.number, t.params)
        # the job ran with those parameters (and no other model's)
        overrides = launch_overrides(t.user_attrs) or []
        assert f"model={model}" in overrides
        other = set().union(*OWN.values()) - OWN[model]
        assert not [o for o in overrides if o.lstrip("+").split("=")[0] in other]
        # per-class scores of the classification task reach the trial (for the analyst)
        per_class = t.user_attrs["per_class"]
        assert sorted(per_class) == ["acc", "f1"]
        assert sorted(per_class["f1"], key=int) == [str(i) for i in range(10)]
    assert trials[0].params["model"] == "mlp"  # the baseline: the config's defaults
    assert len(models) >= 2, models


@pytest.mark.slow
def test_kfold_cv_tells_the_mean_and_keeps_folds(
    swept: dict[str, tuple[Path, optuna.Study]]
) -> None:
    tmp_path, study = swept["cv"]
    for t in study.trials:
        assert t.state.name == "COMPLETE"
        folds = t.user_attrs["folds"]
        assert len(folds) == 3
        assert t.value == pytest.approx(statistics.fmean(folds))
        assert t.user_attrs["fold_std"] == pytest.approx(statistics.stdev(folds))
        for i in range(3):  # each fold job saw its own cv.fold
            cfg = OmegaConf.load(
                tmp_path / "sweep" / f"trial_{t.number}" / f"fold_{i}" / ".hydra" / "config.yaml"
            )
            assert cfg.cv.fold == i and cfg.cv.folds == 3
            assert cfg.data.fold == i and cfg.data.folds == 3
            # each fold keeps its own per-class scores and curves (nothing overwritten)
            assert sorted(t.user_attrs[f"per_class_fold_{i}"]) == ["acc", "f1"]
            assert t.user_attrs[f"curves_fold_{i}"]["epoch"] == [0]


@pytest.mark.slow
def test_acc_vs_size_gives_a_pareto_front(swept: dict[str, tuple[Path, optuna.Study]]) -> None:
    _, study = swept["acc_vs_size"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val/acc", "model/params"]
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 4
    for t in done:
        acc, size = t.values
        assert 0.0 <= acc <= 1.0
        assert size >= 100 and size == int(size)  # a parameter count
    front = study.best_trials
    assert front
    # nothing on the front is dominated by another completed trial
    for f in front:
        assert not any(o.values[0] >= f.values[0] and o.values[1] <= f.values[1]
                       and o.values != f.values for o in done)
