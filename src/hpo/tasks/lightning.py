"""The Lightning runner: one trial's fit, from the composed config to its objective value(s).

:func:`run` (the task of ``hpo.train`` and ``conf/forecast.yaml``) builds data, model,
optimizer and trainer from the config with ``hydra.utils.instantiate``, trains with hpo's
callbacks (Optuna reporting and pruning, ``metrics.csv``/``curves.png``/``summary.json``, early
stopping, the best checkpoint), resumes an interrupted trial from its last checkpoint, and
returns the objective(s) named by ``objective``, measured on the best checkpoint. Out of memory,
it halves the batch size and tries again inside the same trial (:func:`run_with_oom_stepdown`).

Output: ``trainer.quiet`` (default true) silences Lightning's banners and tips (GPU/TPU
availability, the litlogger tip, ``LOCAL_RANK`` lines, checkpoint restore notes); a run outside a
sweep logs one line per epoch instead (:class:`hpo.callbacks.EpochProgress`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hpo import trial_context
from hpo.attrs import BATCH_SIZE_USED, OOM_BATCH_SIZES, RESUMED_FROM_EPOCH
from hpo.errors import ConfigError, HPOError, MetricNotFoundError
from hpo.tasks import output_dir

__all__ = [
    "OutOfMemoryError",
    "build_callbacks",
    "fit",
    "is_oom",
    "model_kwargs",
    "next_batch_size",
    "objective_names",
    "quiet_lightning",
    "run",
    "run_with_oom_stepdown",
]

log = logging.getLogger(__name__)

# loggers whose INFO lines are Lightning's banners, tips and notes (their children inherit)
_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")


class OutOfMemoryError(HPOError, RuntimeError):
    """Out of memory even at the smallest batch size allowed."""


def objective_names(cfg: DictConfig) -> list[str]:
    """The metric name(s) of ``objective``, one per direction."""
    obj = cfg.get("objective", "val/acc")
    return [str(o) for o in obj] if OmegaConf.is_list(obj) else [str(obj)]


# --------------------------------------------------------------------------- OOM step-down


def run(cfg: DictConfig) -> float | list[float]:
    """Fit once (stepping the batch size down on out-of-memory); return the objective(s)."""
    return run_with_oom_stepdown(cfg)


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` says the accelerator (or the host) ran out of memory."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def next_batch_size(batch_size: int, min_batch_size: int) -> int | None:
    """The batch size to retry with after an OOM at ``batch_size``: half of it, or None when
    half is below ``min_batch_size`` (the step-down stops)."""
    half = batch_size // 2
    return half if half >= max(min_batch_size, 1) else None


def run_with_oom_stepdown(
    cfg: DictConfig, *, fit_fn: Callable[[DictConfig], float | list[float]] | None = None
) -> float | list[float]:
    """Fit; on out-of-memory halve ``data.batch_size`` (doubling gradient accumulation, so the
    effective batch stays) down to ``oom.min_batch_size`` and retry inside the same trial.

    The batch sizes that ran out of memory are stored as the trial attr ``hpo:oom_batch_sizes``
    and the one that fitted as ``hpo:batch_size_used``.

    Args:
        cfg: The job's config (left unchanged: the step-down works on a copy).
        fit_fn: What one attempt runs; :func:`fit` by default.

    Raises:
        OutOfMemoryError: Out of memory at the smallest batch size allowed.
    """
    fit_fn = fit if fit_fn is None else fit_fn
    oom = cfg.get("oom") or {}
    min_bs = int(oom.get("min_batch_size", 1) or 1)
    tried: list[int] = []
    copy = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))  # one we may change
    assert isinstance(copy, DictConfig)
    cfg = copy
    _apply_batch_split(cfg)
    while True:
        try:
            result = fit_fn(cfg)
        except Exception as exc:
            if not is_oom(exc):
                raise
            batch = int(cfg.data.batch_size)
            tried.append(batch)
            smaller = next_batch_size(batch, min_bs)
            if smaller is None:
                trial_context.record_attrs({OOM_BATCH_SIZES: tried}, job="the trial")
                raise OutOfMemoryError(
                    f"out of memory at data.batch_size={batch} and oom.min_batch_size={min_bs} "
                    "stops the step-down: use a smaller model or more memory"
                ) from exc
            log.warning("out of memory at data.batch_size=%d: retrying with %d", batch, smaller)
            cfg.data.batch_size = smaller
            cfg.trainer.accumulate_grad_batches = (
                int(cfg.trainer.accumulate_grad_batches) * (batch // smaller)
            )
            _free_accelerator_memory()
            continue
        if tried:
            trial_context.record_attrs(
                {OOM_BATCH_SIZES: tried, BATCH_SIZE_USED: int(cfg.data.batch_size)},
                job="the trial",
            )
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


def _free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- one fit


def fit(cfg: DictConfig) -> float | list[float]:
    """Train once with ``cfg``; return the objective value(s)."""
    import lightning as L
    from hydra.utils import instantiate

    objectives = objective_names(cfg)
    L.seed_everything(int(cfg.get("seed", 0)), workers=True, verbose=False)
    out_dir = output_dir()
    ctx = trial_context.current()
    datamodule = instantiate(cfg.data)
    optimizer = instantiate(cfg.optimizer)
    sched_cfg = cfg.get("scheduler")
    scheduler = instantiate(sched_cfg) if sched_cfg and "_target_" in sched_cfg else None
    model = instantiate(
        cfg.model, optimizer=optimizer, scheduler=scheduler, **model_kwargs(datamodule)
    )
    callbacks = build_callbacks(cfg, out_dir, objectives, in_sweep=ctx is not None)
    simulate = (cfg.get("oom") or {}).get("simulate_above")
    if simulate is not None:
        callbacks.append(_simulated_oom_callback(int(simulate), int(cfg.data.batch_size)))
    trainer_cfg, quiet = trainer_config(cfg)
    with quiet_lightning(quiet):
        trainer = instantiate(
            trainer_cfg, callbacks=callbacks, logger=_loggers(cfg, out_dir),
            default_root_dir=str(out_dir),
        )
        resume = _resume_checkpoint(out_dir, ctx)
        if resume:
            import torch

            epoch = int(torch.load(resume, map_location="cpu", weights_only=False)
                        .get("epoch", 0))
            log.info("resuming this trial from %s (epoch %d)", resume, epoch)
            trial_context.record_attrs({RESUMED_FROM_EPOCH: epoch}, job="the trial")
        _mark_checkpoints(out_dir, ctx)
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume)
        metrics = dict(trainer.callback_metrics)
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and str(getattr(checkpoint, "best_model_path", "") or ""):
            # the objective is measured on the best checkpoint, not on the epoch early stopping
            # hit
            (best,) = trainer.validate(model, datamodule=datamodule, ckpt_path="best",
                                       verbose=False)
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
    # a sweep's driver logs each trial's result itself
    log.log(logging.DEBUG if ctx is not None else logging.INFO, "objective: %s", shown)
    if any(not math.isfinite(v) for v in values):
        log.warning("objective is not finite: %s", shown)
    return values[0] if len(values) == 1 else values


def trainer_config(cfg: DictConfig) -> tuple[DictConfig, bool]:
    """The ``trainer`` node to instantiate (``lightning.pytorch.Trainer`` arguments) and its
    ``quiet`` flag (hpo's own key, default true), taken out of it."""
    node = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(node, dict)
    quiet = node.pop("quiet", True)
    if not isinstance(quiet, bool):
        raise ConfigError(f"trainer.quiet={quiet!r} is not a boolean: write true or false")
    return OmegaConf.create(node), quiet


@contextlib.contextmanager
def quiet_lightning(quiet: bool = True) -> Iterator[None]:
    """Lightning's output for the duration: only its warnings when ``quiet``, else as it is.

    Lightning's own stdout handlers are always removed (with Hydra's every line came twice);
    ``quiet`` raises its loggers to WARNING and restores their levels afterwards.
    """
    loggers = [logging.getLogger(name) for name in _LIGHTNING_LOGGERS]
    for lg in loggers:
        lg.handlers.clear()
    warnings.filterwarnings("ignore", message=".*`srun` command is available.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    levels = [lg.level for lg in loggers]
    if quiet:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _loggers(cfg: DictConfig, out_dir: Path) -> list[Any] | bool:
    """TensorBoard when ``logger.tensorboard``; no Lightning CSV logger: ``metrics.csv`` is
    :class:`hpo.callbacks.MetricsWriter`'s."""
    if (cfg.get("logger") or {}).get("tensorboard"):
        from lightning.pytorch.loggers import TensorBoardLogger

        return [TensorBoardLogger(save_dir=str(out_dir), name="tb", version="")]
    return False


def build_callbacks(cfg: DictConfig, out_dir: Path, objectives: list[str], *,
                    in_sweep: bool = True) -> list[Any]:
    """Objective check, early stopping, checkpointing, Optuna reporting, metrics files, and
    (outside a sweep) per-epoch progress lines."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from hpo.callbacks import EpochProgress, MetricsWriter, OptunaReporter

    callbacks: list[Any] = [ObjectiveCheck(objectives)]
    es = cfg.get("early_stopping") or {}
    patience = es.get("patience")
    if patience:
        callbacks.append(EarlyStopping(
            monitor=str(es.get("monitor")), mode=str(es.get("mode", "min")),
            patience=int(patience),
        ))
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
    fold = trial_context.job_fold(cfg.get("cv"))
    callbacks += [OptunaReporter(monitor=objectives[0], fold=fold), MetricsWriter(out_dir=out_dir)]
    if not in_sweep:
        callbacks.append(EpochProgress(("train/loss", "val/loss", *objectives)))
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
    """A callback failing after the first validation when an objective is never logged."""
    return _objective_check_class()(names)


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


def _resume_checkpoint(out_dir: Path, ctx: trial_context.TrialContext | None) -> str | None:
    """``last.ckpt`` of an interrupted run of THIS trial (a requeued SLURM job), else None."""
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


def _mark_checkpoints(out_dir: Path, ctx: trial_context.TrialContext | None) -> None:
    if ctx is None:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ".hpo_trial.json").write_text(
        json.dumps({"study": ctx.study_name, "trial_id": ctx.trial_id})
    )


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
