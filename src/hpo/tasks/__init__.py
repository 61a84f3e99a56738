"""Lightning tasks: data modules, networks and the classification module."""

from __future__ import annotations

from hpo.tasks.classifier import ClassifierModule
from hpo.tasks.data import DigitsDataModule, TorchvisionDataModule
from hpo.tasks.nets import CNN, MLP, ResNet9

__all__ = [
    "CNN",
    "MLP",
    "ClassifierModule",
    "DigitsDataModule",
    "ResNet9",
    "TorchvisionDataModule",
]
