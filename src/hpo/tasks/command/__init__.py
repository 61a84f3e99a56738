"""The external-command task: tune any program that reads parameters and writes metrics.

``python -m hpo.train --config-name command -m command.params.lr=...`` runs, for each trial,
``command.argv`` (no shell) or ``command.shell`` (``/bin/sh -c``) with the trial's parameters
(``command.params``) handed over as placeholders, environment variables and optionally a file
(:mod:`~hpo.tasks.command.params`).

The child runs in the job's output directory, in a session of its own (so a timeout kills its
whole process group), without the LLM providers' API keys in its environment; its output is
copied to ``program.log`` (:mod:`~hpo.tasks.command.process`). While it runs, new rows of the
curves CSV become intermediate values and the sweep's pruner may stop it; when it ends, the
objective(s) are read from ``command.metrics_file`` (:mod:`~hpo.tasks.command.metrics`).
Per-class scores become the trial user attr ``per_class`` and the CSV rows ``curves`` (per fold
under ``cv.folds > 1``: see :mod:`hpo.trial_context`), through the same
:class:`~hpo.trial_context.TrialReporter` as Lightning trials.

Modules: ``spec`` (the ``command`` node), ``params`` (handing params to the program),
``metrics`` (reading its results), ``process`` (supervising it), ``task`` (:func:`run`).
"""

from __future__ import annotations

from hpo.tasks.command.errors import CommandError, CommandFailedError, CommandTimeoutError
from hpo.tasks.command.metrics import CurvesFile, Metrics, MetricsTable, read_metrics
from hpo.tasks.command.params import env_name, format_value, render_args
from hpo.tasks.command.process import LOG_FILE
from hpo.tasks.command.spec import REDUCES, CommandSpec, flatten
from hpo.tasks.command.task import run

__all__ = [
    "LOG_FILE",
    "REDUCES",
    "CommandError",
    "CommandFailedError",
    "CommandSpec",
    "CommandTimeoutError",
    "CurvesFile",
    "Metrics",
    "MetricsTable",
    "env_name",
    "flatten",
    "format_value",
    "read_metrics",
    "render_args",
    "run",
]
