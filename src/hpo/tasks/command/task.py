"""The command task's run: hand over the params, supervise the program, read and report."""

from __future__ import annotations

import logging
import math

from omegaconf import DictConfig

from hpo import trial_context
from hpo.tasks import output_dir
from hpo.tasks.command.metrics import CurvesFile, MetricsTable, read_metrics
from hpo.tasks.command.params import prepare
from hpo.tasks.command.process import failure, supervise
from hpo.tasks.command.spec import CommandSpec

__all__ = ["run"]

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float | list[float]:
    """Run ``cfg.command`` once for this trial and return its objective value(s).

    The task function of ``conf/command.yaml`` (``task._target_``); see :mod:`hpo.tasks.command`
    for how parameters reach the program and how its metrics are read.

    Args:
        cfg: The whole job config; uses ``command``, ``objective``, ``seed`` and ``cv``.

    Returns:
        One float, or a list of floats (one per objective) for multi-objective studies.

    Raises:
        ConfigError: The ``command`` node is invalid.
        CommandFailedError: The program exited non-zero; the message has the exit code and the
            last lines of its standard error.
        CommandTimeoutError: It ran past ``command.timeout_s``.
        MetricNotFoundError: An objective is not in its metrics file.
        optuna.TrialPruned: The pruner stopped it.
    """
    spec = CommandSpec.from_cfg(cfg)
    out_dir = output_dir().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = trial_context.current()
    cv = cfg.get("cv") or {}
    fold = trial_context.job_fold(cv)
    call = prepare(
        spec, out_dir, trial_number=None if ctx is None else ctx.trial_number,
        seed=cfg.get("seed"), fold=int(cv.get("fold", 0) or 0),
        folds=int(cv.get("folds", 1) or 1),
    )
    metrics_path = out_dir / spec.metrics_file
    curves = None if spec.curves_file is None else CurvesFile(out_dir / spec.curves_file)
    # a stale file of an earlier run in a reused directory must not be read as this run's
    metrics_path.unlink(missing_ok=True)
    if curves is not None:
        curves.path.unlink(missing_ok=True)

    log.info("running in %s: %s", out_dir, call.shown)
    reporter = trial_context.TrialReporter(ctx, fold=fold, prune=spec.prune,
                                           job="the command")
    reporter.open()
    report_key = spec.report_key or spec.objective_keys[0]

    last_step = [0]  # of the curves so far (a fold other than 0 reports no values)

    def on_poll() -> bool:
        table = curves.poll() if curves is not None and reporter.active else None
        if table is None or not table.rows:
            return False
        last_step[0] = table.step_of(len(table.rows) - 1)
        return _report(reporter, table, report_key)

    end = supervise(
        call.args, cwd=out_dir, env=call.env, timeout_s=spec.timeout_s, poll_s=spec.poll_s,
        on_poll=on_poll, secrets=_secret_values(),
        echo_level=logging.INFO if ctx is None else logging.DEBUG,  # a sweep: program.log
    )
    if end.stopped:
        import optuna

        step = max(reporter.reported) if reporter.reported else last_step[0]
        reporter.mark_pruned(step)
        log.debug("pruned at step %d: the command was stopped", step)
        raise optuna.TrialPruned(f"pruned at step {step}")
    if end.code != 0:
        last = curves.read() if curves is not None and reporter.active else None
        if last is not None:
            _report(reporter, last, report_key, ask_pruner=False)  # the curves up to the end
        raise failure(end)

    metrics = read_metrics(metrics_path, spec.objective_keys, reduce=spec.reduce)
    table = metrics.table
    if table is None and curves is not None:
        table = curves.read()
    if table is not None:
        _report(reporter, table, report_key)  # rows written after the last poll
    if metrics.per_class:
        reporter.store_per_class(metrics.per_class)
    shown = ", ".join(f"{k}={v:.6g}" for k, v in zip(spec.objective_keys, metrics.values,
                                                     strict=True))
    log.log(logging.INFO if ctx is None else logging.DEBUG, "objective: %s", shown)
    if any(not math.isfinite(v) for v in metrics.values):
        log.warning("objective is not finite: %s", shown)
    return metrics.values[0] if len(metrics.values) == 1 else metrics.values


def _report(reporter: trial_context.TrialReporter, table: MetricsTable, key: str, *,
            ask_pruner: bool = True) -> bool:
    """Report ``table``'s rows not reported yet and store its curves; True when the pruner
    says stop (asked only after new values)."""
    if not reporter.active or not table.rows:
        return False
    j = table.column(key)
    new = False
    if j is not None:
        for i, row in enumerate(table.rows):
            new = reporter.report(row[j], table.step_of(i)) or new
    reporter.store_curves(table.curves())
    return new and ask_pruner and reporter.should_prune()


def _secret_values() -> list[str]:
    from hpo.secrets import secret_values

    return secret_values()


