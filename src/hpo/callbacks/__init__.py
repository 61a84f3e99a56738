"""Lightning callbacks connecting a trial job to its Optuna trial and its output directory."""

from __future__ import annotations

from hpo.callbacks.heartbeat import Heartbeat
from hpo.callbacks.metrics_writer import MetricsWriter
from hpo.callbacks.optuna_reporter import OptunaReporter

__all__ = ["Heartbeat", "MetricsWriter", "OptunaReporter"]
