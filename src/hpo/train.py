"""``python -m hpo.train``: one Lightning training run, or (``-m``) an LLM-guided sweep of them.

The task function builds data, model and optimizer from the composed config with
``hydra.utils.instantiate``, trains, and returns the objective metric(s) named by
``objective`` (measured on the best checkpoint), which the ``hpo`` sweeper tells Optuna.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from hpo.errors import ConfigError, HPOError, MetricNotFoundError

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
    """Run the configured task once; return the objective value(s).

    ``task._target_`` (a function of the whole config) replaces the built-in Lightning
    classification task, e.g. the external-command task.
    """
    task = cfg.get("task")
    if task and task.get("_target_"):
        from hydra.utils import get_method

        return get_method(str(task._target_))(cfg)
    return fit_with_oom_stepdown(cfg)


def fit_with_oom_stepdown(cfg: DictConfig) -> float | list[float]:
    """Fit; on out-of-memory halve ``data.batch_size`` (doubling gradient accumulation, so the
    effective batch stays) down to ``oom.min_batch_size`` and retry inside the same trial."""
    oom = cfg.get("oom") or {}
    min_bs = int(oom.get("min_batch_size", 1) or 1)
    tried: list[int] = []
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))  # a copy we may change
    _apply_batch_split(cfg)
    while True:
        try:
            result = fit(cfg)
        except Exception as exc:
            if not _is_oom(exc):
                raise
            batch = int(cfg.data.batch_size)
            tried.append(batch)
            if batch // 2 < min_bs:
                _record({"hpo:oom_batch_sizes": tried})
                raise OutOfMemoryError(
                    f"out of memory at data.batch_size={batch} and oom.min_batch_size={min_bs} "
                    "stops the step-down: use a smaller model or more memory"
                ) from exc
            log.warning("out of memory at data.batch_size=%d: retrying with %d", batch, batch // 2)
            cfg.data.batch_size = batch // 2
            cfg.trainer.accumulate_grad_batches = int(cfg.trainer.accumulate_grad_batches) * 2
            _free_accelerator_memory()
            continue
        if tried:
            used = int(cfg.data.batch_size)
            _record({"hpo:oom_batch_sizes": tried, "hpo:batch_size_used": used})
        return result


def _apply_batch_split(cfg: DictConfig) -> None:
    """``batch_split=k``: batch size / k and gradient accumulation * k (same effective batch)."""
    k = int(cfg.get("batch_split", 1) or 1)
    if k <= 1:
        return
    if int(cfg.data.batch_size) % k:
        raise ConfigError(
            f"batch_split={k} does not divide data.batch_size={cfg.data.batch_size}: "
            "use a divisor of the batch size"
        )
    cfg.data.batch_size = int(cfg.data.batch_size) // k
    cfg.trainer.accumulate_grad_batches = int(cfg.trainer.accumulate_grad_batches) * k


class OutOfMemoryError(HPOError, RuntimeError):
    """Out of memory even at the smallest batch size allowed."""


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _record(attrs: dict[str, Any]) -> None:
    """Set user attrs on this job's trial (no-op outside a sweep)."""
    from hpo import trial_context

    ctx = trial_context.current()
    if ctx is None:
        return
    try:
        trial = trial_context.open_trial(ctx)
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
    except Exception as exc:  # attrs are provenance: never fail a trial over them
        log.warning("could not record %s on the trial: %s", sorted(attrs), exc)


def _resume_checkpoint(out_dir: Path) -> str | None:
    """``last.ckpt`` of an interrupted run of THIS trial (a requeued SLURM job), else None."""
    import json

    from hpo import trial_context

    ctx = trial_context.current()
    last = out_dir / "checkpoints" / "last.ckpt"
    marker = out_dir / ".hpo_trial.json"
    if ctx is None or not last.exists() or not marker.exists():
        return None
    try:
        owner = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if owner != {"study": ctx.study_name, "trial_id": ctx.trial_id}:
        return None  # a checkpoint of another study's trial in a reused directory
    return str(last)


def _mark_checkpoints(out_dir: Path) -> None:
    import json

    from hpo import trial_context

    ctx = trial_context.current()
    if ctx is None:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ".hpo_trial.json").write_text(
        json.dumps({"study": ctx.study_name, "trial_id": ctx.trial_id})
    )


def _quiet_lightning() -> None:
    # Lightning adds its own stdout handler: every line came twice (it also reaches Hydra's)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).handlers.clear()
    warnings.filterwarnings("ignore", message=".*`srun` command is available.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def fit(cfg: DictConfig) -> float | list[float]:
    """Train once with ``cfg``; return the objective value(s)."""
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.loggers import CSVLogger

    _quiet_lightning()
    objectives = objective_names(cfg)
    L.seed_everything(int(cfg.get("seed", 0)), workers=True, verbose=False)
    out_dir = _output_dir()
    datamodule = instantiate(cfg.data)
    optimizer = instantiate(cfg.optimizer)
    sched_cfg = cfg.get("scheduler")
    scheduler = instantiate(sched_cfg) if sched_cfg and "_target_" in sched_cfg else None
    model = instantiate(
        cfg.model, optimizer=optimizer, scheduler=scheduler, **model_kwargs(datamodule)
    )
    loggers: list[Any] = [CSVLogger(save_dir=str(out_dir), name="csv", version="")]
    if (cfg.get("logger") or {}).get("tensorboard"):
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(out_dir), name="tb", version=""))
    callbacks = build_callbacks(cfg, out_dir, objectives)
    simulate = (cfg.get("oom") or {}).get("simulate_above")
    if simulate is not None:
        callbacks.append(_simulated_oom_callback(int(simulate), int(cfg.data.batch_size)))
    trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers, default_root_dir=str(out_dir)
    )
    resume = _resume_checkpoint(out_dir)
    if resume:
        import torch

        epoch = int(torch.load(resume, map_location="cpu", weights_only=False).get("epoch", 0))
        log.info("resuming this trial from %s (epoch %d)", resume, epoch)
        _record({"hpo:resumed_from_epoch": epoch})
    _mark_checkpoints(out_dir)
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume)
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


def model_kwargs(datamodule: Any) -> dict[str, Any]:
    """What the model needs from the data: the data module's ``model_kwargs()`` when it has
    one (e.g. forecasting: input_dim, input_len, pred_len, ...), else the classifier's."""
    hook = getattr(datamodule, "model_kwargs", None)
    if callable(hook):
        return dict(hook())
    return {
        "input_shape": tuple(datamodule.input_shape),
        "num_classes": int(datamodule.num_classes),
    }


def _simulated_oom_callback(limit: int, batch_size: int) -> Any:
    """Fault injection (``oom.simulate_above``): an OOM at train start above ``limit``."""
    import torch
    from lightning.pytorch.callbacks import Callback

    class _SimulatedOOM(Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            if batch_size > limit:
                raise torch.cuda.OutOfMemoryError(
                    f"CUDA out of memory (simulated: batch {batch_size} > {limit})"
                )

    return _SimulatedOOM()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | list[float]:
    """Entry point of ``python -m hpo.train``."""
    return train(cfg)


if __name__ == "__main__":
    # Run the function of the importable module, not of __main__: launchers that pickle the
    # task (submitit) then pickle a reference to hpo.train.main instead of its code.
    from hpo.train import main as _main

    _main()
