"""``python -m hpo.train``: one Lightning training run, or (``-m``) an LLM-guided sweep of them.

The task function builds data, model and optimizer from the composed config with
``hydra.utils.instantiate``, trains, and returns the objective metric(s) named by
``objective`` (measured on the best checkpoint), which the ``hpo`` sweeper tells Optuna.
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from hpo.errors import MetricNotFoundError

log = logging.getLogger(__name__)


def config_dir() -> str:
    """Where ``conf/`` is: inside the installed package (wheel) or at the repository root."""
    here = Path(__file__).resolve().parent
    packaged = here / "conf"
    if packaged.is_dir():
        return str(packaged)
    return str(here.parents[1] / "conf")


def objective_names(cfg: DictConfig) -> list[str]:
    obj = cfg.get("objective", "val/acc")
    return [str(o) for o in obj] if OmegaConf.is_list(obj) else [str(obj)]


def _output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()


def build_callbacks(cfg: DictConfig, out_dir: Path, objectives: list[str]) -> list[Any]:
    """Early stopping, checkpointing, objective check, Optuna reporting, metrics files."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from hpo.callbacks import Heartbeat, MetricsWriter, OptunaReporter

    callbacks: list[Any] = [ObjectiveCheck(objectives)]
    es = cfg.get("early_stopping") or {}
    if es.get("patience"):
        callbacks.append(
            EarlyStopping(monitor=es.monitor, mode=es.mode, patience=int(es.patience))
        )
    ck = cfg.get("checkpoint") or {}
    if ck.get("enabled", True):
        callbacks.append(
            ModelCheckpoint(
                dirpath=out_dir / "checkpoints",
                filename="best",
                monitor=ck.get("monitor", objectives[0]),
                mode=ck.get("mode", "max"),
                save_top_k=1,
                save_last=True,
            )
        )
    callbacks += [
        OptunaReporter(monitor=objectives[0]), Heartbeat(), MetricsWriter(out_dir=out_dir)
    ]
    return callbacks


@functools.cache
def _objective_check_class() -> type:
    from lightning.pytorch.callbacks import Callback

    class _ObjectiveCheck(Callback):
        """Fail after the first validation if an objective metric is never logged."""

        def __init__(self, names: list[str]) -> None:
            self.names = names

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.sanity_checking:
                return
            missing = [n for n in self.names if n not in trainer.callback_metrics]
            if missing:
                raise MetricNotFoundError(
                    f"objective metric {missing[0]!r} is never logged; logged metrics: "
                    f"{', '.join(sorted(trainer.callback_metrics))}; set objective= to one of them"
                )

    return _ObjectiveCheck


def ObjectiveCheck(names: list[str]) -> Any:
    return _objective_check_class()(names)


def train(cfg: DictConfig) -> float | list[float]:
    """Train once with ``cfg``; return the objective value(s)."""
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.loggers import CSVLogger

    objectives = objective_names(cfg)
    L.seed_everything(int(cfg.get("seed", 0)), workers=True, verbose=False)
    out_dir = _output_dir()
    datamodule = instantiate(cfg.data)
    optimizer = instantiate(cfg.optimizer)
    sched_cfg = cfg.get("scheduler")
    scheduler = instantiate(sched_cfg) if sched_cfg and "_target_" in sched_cfg else None
    model = instantiate(
        cfg.model,
        optimizer=optimizer,
        scheduler=scheduler,
        input_shape=tuple(datamodule.input_shape),
        num_classes=int(datamodule.num_classes),
    )
    loggers: list[Any] = [CSVLogger(save_dir=str(out_dir), name="csv", version="")]
    if (cfg.get("logger") or {}).get("tensorboard"):
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(out_dir), name="tb", version=""))
    trainer = instantiate(
        cfg.trainer,
        callbacks=build_callbacks(cfg, out_dir, objectives),
        logger=loggers,
        default_root_dir=str(out_dir),
    )
    trainer.fit(model, datamodule=datamodule)
    metrics = dict(trainer.callback_metrics)
    if trainer.checkpoint_callback is not None and getattr(
        trainer.checkpoint_callback, "best_model_path", ""
    ):
        # the objective is measured on the best checkpoint, not on the epoch early stopping hit
        (best,) = trainer.validate(model, datamodule=datamodule, ckpt_path="best", verbose=False)
        metrics.update(best)
    values = []
    for name in objectives:
        if name not in metrics:
            raise MetricNotFoundError(
                f"objective metric {name!r} is never logged; logged metrics: "
                f"{', '.join(sorted(metrics))}; set objective= to one of them"
            )
        values.append(float(metrics[name]))
    shown = ", ".join(f"{n}={v:.6g}" for n, v in zip(objectives, values, strict=True))
    print(f"objective: {shown}", flush=True)
    if any(not math.isfinite(v) for v in values):
        log.warning("objective is not finite: %s", shown)
    return values[0] if len(values) == 1 else values


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | list[float]:
    """Entry point of ``python -m hpo.train``."""
    return train(cfg)


if __name__ == "__main__":
    main()
