"""hpo: hyperparameter and architecture search with Hydra + Optuna, proposals from an LLM chain."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
