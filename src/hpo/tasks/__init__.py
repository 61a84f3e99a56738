"""Tasks: data modules, networks, the classification and forecasting modules, the Lightning
runner (``hpo.tasks.lightning``) and the external-command task (``hpo.tasks.command``).

Exports load lazily: the external-command task (``hpo.tasks.command``) must not pay for
importing torch and Lightning in every trial job.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

_EXPORTS = {
    "CNN": "hpo.tasks.nets",
    "MLP": "hpo.tasks.nets",
    "ResNet9": "hpo.tasks.nets",
    "ClassifierModule": "hpo.tasks.classifier",
    "DigitsDataModule": "hpo.tasks.data",
    "TorchvisionDataModule": "hpo.tasks.data",
}

__all__ = [*sorted(_EXPORTS), "output_dir"]


def output_dir() -> Path:
    """This job's output directory: Hydra's run or sweep dir, else the working directory."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hpo.tasks' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
