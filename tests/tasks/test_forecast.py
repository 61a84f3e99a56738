"""Forecasting: the synthetic series, ETTh1-format CSV files, the window data module, the
transformer (a short fit beats a naive forecast), and (slow) a CLI sweep of the forecast config."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import optuna
import pytest
import torch

from conftest import clean_env, run_cli
from hpo.attrs import trial_output_dir
from hpo.errors import ConfigError, DataUnavailableError
from hpo.tasks.forecast import ForecastModule
from hpo.tasks.series import (
    ETT_COLUMNS,
    SeriesDataModule,
    read_series_csv,
    synthetic_series,
    write_series_csv,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_synthetic_series_is_seeded_and_seasonal() -> None:
    dates, columns, values = synthetic_series(n_steps=24 * 7 * 4, seed=1)
    assert columns == list(ETT_COLUMNS[1:])
    assert values.shape == (24 * 7 * 4, 7)
    assert dates[0] == "2016-07-01 00:00:00" and dates[25] == "2016-07-02 01:00:00"
    again = synthetic_series(n_steps=24 * 7 * 4, seed=1)[2]
    assert np.array_equal(values, again)
    assert not np.array_equal(values, synthetic_series(n_steps=24 * 7 * 4, seed=2)[2])
    # a daily cycle: the target correlates with itself 24 hours later more than 12 hours later
    ot = values[:, -1] - np.convolve(values[:, -1], np.ones(24) / 24, mode="same")
    lag = {k: float(np.corrcoef(ot[100:-100], ot[100 + k:len(ot) - 100 + k])[0, 1])
           for k in (12, 24)}
    assert lag[24] > 0.5 > lag[12]


# rows as ETTh1.csv writes them: its header, its date format, full float32 decimals
ETTH1_HEAD = (
    "date,HUFL,HULL,MUFL,MULL,LUFL,LULL,OT\n"
    "2016-07-01 00:00:00,5.827000141143799,2.009000062942505,1.5989999771118164,"
    "0.4620000123977661,4.203000068664552,1.3400000333786009,30.5310001373291\n"
    "2016-07-01 01:00:00,5.692999839782715,2.075999975204468,1.4919999837875366,"
    "0.4259999990463257,4.142000198364259,1.371000051498413,27.78700065612793\n"
)


def test_etth1_rows_parse(tmp_path: Path) -> None:
    path = tmp_path / "ETTh1.csv"
    path.write_text(ETTH1_HEAD)
    dates, columns, values = read_series_csv(path)
    assert dates == ["2016-07-01 00:00:00", "2016-07-01 01:00:00"]
    assert columns == list(ETT_COLUMNS[1:])
    assert values.shape == (2, 7) and values[1, -1] == pytest.approx(27.787)


def test_ett_csv_loads_and_windows(tmp_path: Path) -> None:
    dates, columns, values = synthetic_series(n_steps=600, seed=0)
    path = write_series_csv(tmp_path / "ETTh1.csv", dates, columns, values)
    assert path.read_text().splitlines()[0] == ",".join(ETT_COLUMNS)
    d2, c2, v2 = read_series_csv(path)
    assert d2 == dates and c2 == columns and np.allclose(v2, values, rtol=1e-5)

    dm = SeriesDataModule(path=path, features="MS", input_len=48, pred_len=12, batch_size=8)
    assert (dm.input_dim, dm.time_dim, dm.target_index) == (7, 4, 6)  # known before setup
    dm.setup("fit")
    assert dm.mean is not None and dm.std is not None
    assert np.allclose(dm.mean, values[:360].mean(axis=0), rtol=1e-4)  # train rows only
    x, x_time, y_time, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 48, 7) and x_time.shape == (8, 48, 4)
    assert y_time.shape == (8, 12, 4) and y.shape == (8, 12)
    # windows tile the time-ordered split: train 0.6, val 0.2, test the rest
    assert len(dm.train_set) == 360 - 48 - 12 + 1  # type: ignore[arg-type]
    assert len(dm.val_set) == len(dm.test_set) == 120 - 12 + 1  # type: ignore[arg-type]
    vx, _, _, vy = dm.val_set[0]  # type: ignore[index]
    # the first validation window's input ends where the training rows end
    scaled = (values - dm.mean) / dm.std
    assert torch.allclose(vx[-1], torch.as_tensor(scaled[359], dtype=torch.float32), atol=1e-4)
    assert torch.allclose(vy[0], torch.tensor(scaled[360, -1], dtype=torch.float32), atol=1e-4)

    single = SeriesDataModule(path=path, features="S", input_len=48, pred_len=12,
                              time_features=False)
    assert (single.input_dim, single.time_dim, single.target_index) == (1, 0, 0)


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        ({}, ConfigError, "give data.path"),
        ({"path": "/nonexistent/ETTh1.csv"}, DataUnavailableError, "does not exist"),
        ({"synthetic": True, "target": "XX"}, ConfigError, "target='XX' is not a column"),
        ({"synthetic": True, "features": "M"}, ConfigError, "features='M' is unknown"),
        ({"synthetic": True, "train_fraction": 0.9, "val_fraction": 0.2}, ConfigError,
         "sum of at most 1"),
        ({"synthetic": True, "pred_len": 0}, ConfigError, "pred_len=0 must be at least 1"),
    ],
)
def test_series_rejects_bad_config(kwargs: dict[str, Any], error: type, needle: str) -> None:
    with pytest.raises(error, match=needle):
        SeriesDataModule(**kwargs)


def test_too_short_series_and_bad_csv(tmp_path: Path) -> None:
    dm = SeriesDataModule(synthetic=True, synthetic_steps=100, input_len=96, pred_len=24)
    with pytest.raises(ConfigError, match="the train part has 0 forecast rows"):
        dm.setup()
    bad = tmp_path / "bad.csv"
    bad.write_text("time,OT\n1,2\n")
    with pytest.raises(ConfigError, match="does not start with a 'date' column"):
        SeriesDataModule(path=bad)
    bad.write_text("date,OT\n2016-07-01 00:00:00,\n")
    with pytest.raises(ConfigError, match="line 2 has a value that is not a number"):
        read_series_csv(bad)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"d_model": 30, "n_heads": 4}, "d_model=30 is not divisible by n_heads=4"),
     ({"label_len": 100}, "label_len=100 is outside"),
     ({"dropout": 1.0}, "dropout=1.0 is outside"),
     ({"e_layers": 0}, "e_layers=0 must be at least 1")],
)
def test_forecast_module_rejects_bad_args(kwargs: dict[str, Any], needle: str) -> None:
    args: dict[str, Any] = dict(optimizer=functools.partial(torch.optim.Adam), input_dim=1,
                                time_dim=4, input_len=48, pred_len=12, label_len=24)
    with pytest.raises(ConfigError, match=needle):
        ForecastModule(**{**args, **kwargs})


class _ValCurve(L.Callback):
    def __init__(self) -> None:
        self.mse: list[float] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.mse.append(float(trainer.callback_metrics["val/mse"]))


def test_short_fit_learns_and_beats_naive_forecast() -> None:
    L.seed_everything(0, verbose=False)
    dm = SeriesDataModule(synthetic=True, synthetic_steps=24 * 7 * 8, input_len=48,
                          pred_len=12, batch_size=32, stride=2)
    model = ForecastModule(
        optimizer=functools.partial(torch.optim.AdamW, lr=3e-3), input_dim=dm.input_dim,
        time_dim=dm.time_dim, input_len=48, pred_len=12, label_len=24, d_model=16, n_heads=2,
        e_layers=1, d_layers=1, d_ff=32, dropout=0.0,
    )
    curve = _ValCurve()
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[curve],
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    assert len(curve.mse) == 2
    assert curve.mse[1] < curve.mse[0]
    naive = dm.naive_mse("val")  # repeat the last observed value
    assert curve.mse[1] < naive, (curve.mse, naive)
    metrics = trainer.callback_metrics
    assert {"train/loss", "val/mse", "val/mae", "val/loss", "model/params"} <= set(metrics)
    assert float(metrics["model/params"]) == model.num_parameters


@pytest.mark.slow
def test_cli_forecast_sweep(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    run_cli(
        ["-m", "hpo.train", "--config-name", "forecast", "-m", "trainer=debug", "agent=none",
         "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage=sqlite:///{db}",
         f"hydra.sweep.dir={tmp_path / 'sweep'}", "data.synthetic_steps=1200",
         "data.batch_size=16", "trainer.detect_anomaly=false"],
        cwd=tmp_path, env=clean_env(), timeout=600,
    )
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{db}")
    assert study.direction.name == "MINIMIZE"
    assert study.metric_names == ["val/mse"]
    for t in study.trials:
        assert t.state.name == "COMPLETE"
        assert 0.0 < t.value < 10.0
        assert "model.d_model" in t.params and "data.input_len" in t.params
        assert t.user_attrs["curves"]["val/mse"]
        out = Path(str(trial_output_dir(t.number, t.user_attrs, study.user_attrs)))
        assert (out / "metrics.csv").is_file() and (out / "checkpoints" / "best.ckpt").is_file()
    assert study.trials[0].params["model.d_model"] == 64  # the baseline: config defaults
