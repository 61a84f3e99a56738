"""Lightning callbacks connecting a trial job to its Optuna trial and its output directory."""

from __future__ import annotations

from hpo.callbacks.metrics_writer import MetricsWriter
from hpo.callbacks.optuna_reporter import OptunaReporter
from hpo.callbacks.progress import EpochProgress

__all__ = ["EpochProgress", "MetricsWriter", "OptunaReporter"]
