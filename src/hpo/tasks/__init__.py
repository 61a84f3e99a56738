"""Tasks: data modules, networks, the classification and forecasting modules, the command task.

Exports load lazily: the external-command task (``hpo.tasks.command``) must not pay for
importing torch and Lightning in every trial job.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CNN": "hpo.tasks.nets",
    "MLP": "hpo.tasks.nets",
    "ResNet9": "hpo.tasks.nets",
    "ClassifierModule": "hpo.tasks.classifier",
    "DigitsDataModule": "hpo.tasks.data",
    "TorchvisionDataModule": "hpo.tasks.data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hpo.tasks' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
