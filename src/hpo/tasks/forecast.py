"""Time-series forecasting: a small encoder-decoder transformer and its task function.

``python -m hpo.train --config-name forecast`` trains :class:`ForecastModule` on a
:class:`~hpo.tasks.series.SeriesDataModule` (an ETTh1-format CSV, or a synthetic seasonal
series) and returns ``val/mse`` (minimize); ``-m`` sweeps it (``conf/search_space/forecast.yaml``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from hpo.errors import ConfigError
from hpo.tasks._optim import optimizers_from_factories

__all__ = ["ForecastModule", "run"]

log = logging.getLogger(__name__)

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


def _positional(length: int, d_model: int) -> torch.Tensor:
    """Sinusoidal position codes of shape ``(length, d_model)``."""
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32)
                    * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : d_model // 2]
    return pe


class _Embedding(nn.Module):
    """Value projection + time-feature projection + position code (Informer's data embedding,
    with plain linear layers)."""

    def __init__(self, input_dim: int, time_dim: int, d_model: int, max_len: int,
                 dropout: float) -> None:
        super().__init__()
        self.value = nn.Linear(input_dim, d_model)
        self.time = nn.Linear(time_dim, d_model) if time_dim > 0 else None
        self.register_buffer("pe", _positional(max_len, d_model), persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, marks: torch.Tensor) -> torch.Tensor:
        pe: torch.Tensor = self.pe  # type: ignore[assignment]
        h = self.value(x) + pe[: x.shape[1]]
        if self.time is not None:
            h = h + self.time(marks)
        return self.dropout(h)


class ForecastModule(L.LightningModule):
    """An encoder-decoder transformer forecasting ``pred_len`` steps of one target (MSE loss).

    Informer-style, with full attention: the encoder reads ``input_len`` steps; the decoder gets
    the last ``label_len`` known steps followed by ``pred_len`` zero placeholders (with their
    time features), attends causally to itself and fully to the encoder, and emits the whole
    forecast in one pass.

    Logged metrics (epoch means, on the standardized scale): ``train/loss`` (MSE), ``val/mse``,
    ``val/mae``, ``val/loss`` (= ``val/mse``, for the metrics file and curves), ``model/params``,
    and ``test/mse``, ``test/mae`` when testing.

    Args:
        optimizer: Factory of the optimizer, called with ``self.parameters()``.
        input_dim: Features per input step (from the data module).
        time_dim: Time features per step, 0 for none (from the data module).
        input_len: Steps of history (from the data module).
        pred_len: Steps to forecast (from the data module).
        target_index: Column of the target among the input features (from the data module).
        label_len: Known steps that start the decoder input, at most ``input_len``.
        d_model: Width of the model; divisible by ``n_heads``.
        n_heads: Attention heads.
        e_layers: Encoder layers.
        d_layers: Decoder layers.
        d_ff: Width of the feed-forward blocks.
        dropout: Dropout rate, in [0, 1).
        scheduler: None, or a factory of a learning-rate scheduler called with the optimizer.
        scheduler_interval: Step the scheduler every ``"epoch"`` or every ``"step"``.
    """

    def __init__(
        self,
        *,
        optimizer: OptimizerFactory,
        input_dim: int,
        time_dim: int,
        input_len: int,
        pred_len: int,
        target_index: int = 0,
        label_len: int = 48,
        d_model: int = 64,
        n_heads: int = 4,
        e_layers: int = 2,
        d_layers: int = 1,
        d_ff: int = 128,
        dropout: float = 0.1,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
    ) -> None:
        super().__init__()
        if not callable(optimizer):
            raise ConfigError(f"optimizer={optimizer!r} is not callable: give a factory (Hydra "
                              "`_partial_: true`) called with the model parameters")
        for name, value in (("input_dim", input_dim), ("input_len", input_len),
                            ("pred_len", pred_len), ("d_model", d_model), ("n_heads", n_heads),
                            ("e_layers", e_layers), ("d_layers", d_layers), ("d_ff", d_ff)):
            if int(value) < 1:
                raise ConfigError(f"{name}={value!r} must be at least 1: pass a positive int")
        if int(d_model) % int(n_heads):
            raise ConfigError(f"d_model={d_model} is not divisible by n_heads={n_heads}: pick "
                              "d_model as a multiple of n_heads")
        if not 0 <= int(label_len) <= int(input_len):
            raise ConfigError(f"label_len={label_len!r} is outside [0, input_len={input_len}]: "
                              "pass e.g. input_len // 2")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout={dropout!r} is outside [0, 1): pass e.g. 0.1")
        if not 0 <= int(target_index) < int(input_dim):
            raise ConfigError(f"target_index={target_index!r} is outside [0, input_dim="
                              f"{input_dim}): take it from the data module")
        if scheduler_interval not in ("epoch", "step"):
            raise ConfigError(f"scheduler_interval={scheduler_interval!r} is invalid: use "
                              "'epoch' or 'step'")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.input_len, self.pred_len = int(input_len), int(pred_len)
        self.label_len, self.target_index = int(label_len), int(target_index)
        self._optimizer_factory = optimizer
        self._scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        d_model, n_heads, d_ff = int(d_model), int(n_heads), int(d_ff)
        self.enc_embed = _Embedding(int(input_dim), int(time_dim), d_model, self.input_len,
                                    dropout)
        self.dec_embed = _Embedding(int(input_dim), int(time_dim), d_model,
                                    self.label_len + self.pred_len, dropout)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout, batch_first=True),
            num_layers=int(e_layers), enable_nested_tensor=False,
        )
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(d_model, n_heads, d_ff, dropout, batch_first=True),
            num_layers=int(d_layers),
        )
        self.head = nn.Linear(d_model, 1)
        causal = torch.triu(torch.full((self.label_len + self.pred_len,) * 2, float("-inf")), 1)
        self.register_buffer("causal_mask", causal, persistent=False)

    @property
    def num_parameters(self) -> int:
        """Number of parameters."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor, x_time: torch.Tensor, y_time: torch.Tensor
                ) -> torch.Tensor:
        """Forecast ``(B, pred_len)`` from ``x`` ``(B, input_len, input_dim)`` and time features
        ``x_time`` ``(B, input_len, time_dim)``, ``y_time`` ``(B, pred_len, time_dim)``."""
        memory = self.encoder(self.enc_embed(x, x_time))
        start = x.shape[1] - self.label_len
        dec_x = torch.cat([x[:, start:], x.new_zeros(x.shape[0], self.pred_len, x.shape[2])], 1)
        dec_t = torch.cat([x_time[:, start:], y_time], 1)
        h = self.decoder(self.dec_embed(dec_x, dec_t), memory, tgt_mask=self.causal_mask,
                         tgt_is_causal=True)
        return self.head(h[:, -self.pred_len:]).squeeze(-1)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        """MSE of one batch."""
        x, x_time, y_time, y = batch
        loss = F.mse_loss(self(x, x_time, y_time), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, ...], prefix: str) -> None:
        x, x_time, y_time, y = batch
        pred = self(x, x_time, y_time)
        mse = F.mse_loss(pred, y)
        self.log(f"{prefix}/mse", mse, on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{prefix}/mae", F.l1_loss(pred, y), on_step=False, on_epoch=True)
        if prefix == "val":
            self.log("val/loss", mse, on_step=False, on_epoch=True)

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        """Validation MSE and MAE of one batch."""
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        """Log the parameter count (an objective for accuracy-versus-size searches)."""
        if not self.trainer.sanity_checking:
            self.log("model/params", float(self.num_parameters), on_step=False, on_epoch=True)

    def test_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        """Test MSE and MAE of one batch."""
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> Any:
        """The optimizer from its factory, with the scheduler when one is configured."""
        return optimizers_from_factories(self, plateau_monitor="val/mse")


def run(cfg: DictConfig) -> float | list[float]:
    """Train the forecaster of ``cfg`` once; return the objective value(s).

    The same path as every Lightning task (:func:`hpo.tasks.lightning.run`: Optuna reporting
    and pruning, metrics files, early stopping, best checkpoint, OOM step-down, resume); the
    model gets its shapes from :meth:`SeriesDataModule.model_kwargs`.
    """
    from hpo.tasks.lightning import run as run_lightning

    return run_lightning(cfg)
