"""hpo: hyperparameter and architecture search with Hydra + Optuna, proposals from an LLM chain."""

from __future__ import annotations

from hpo._logging import install_log_redaction

__version__ = "0.1.0"
__all__ = ["__version__"]

# Every log record of the process, whatever its logger, is redacted (hpo._logging explains why
# a record factory, installed once here, and not a filter).
install_log_redaction()
