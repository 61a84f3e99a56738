"""The LightningModule that trains any classification net built by a factory."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from hpo.errors import ConfigError
from hpo.tasks._optim import optimizers_from_factories

__all__ = ["ClassifierModule"]

log = logging.getLogger(__name__)

NetFactory = Callable[..., nn.Module]
OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


class ClassifierModule(L.LightningModule):
    """Cross-entropy training of ``net`` with accuracy and macro-F1 tracking.

    Logged metrics (epoch means): ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``,
    ``val/f1`` (macro F1), ``lr`` (learning rate of the first parameter group at epoch start),
    ``model/params`` (parameter count of the net, with each validation: an objective for
    accuracy-versus-size searches), and ``test/loss``, ``test/acc``, ``test/f1`` when testing.
    ``val/loss`` is plain cross entropy (without label smoothing), so it compares across trials.
    After each validation epoch ``per_class`` holds that epoch's per-class F1 and accuracy
    (recall), keyed by class name.

    Args:
        net: Factory of the network, called as ``net(input_shape=..., num_classes=...)``; with
            Hydra a config with ``_partial_: true``.
        optimizer: Factory of the optimizer, called with ``self.parameters()``.
        input_shape: Shape of one example (from the data module).
        num_classes: Number of classes (from the data module).
        scheduler: None, or a factory of a learning-rate scheduler called with the optimizer.
        scheduler_interval: Step the scheduler every ``"epoch"`` or every ``"step"``.
        label_smoothing: Label smoothing of the training loss, in [0, 1).
        class_names: Names of the classes for ``per_class``; by default taken from the
            trainer's data module (``class_names``) or the class indices.
    """

    def __init__(
        self,
        *,
        net: NetFactory,
        optimizer: OptimizerFactory,
        input_shape: Sequence[int],
        num_classes: int,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        label_smoothing: float = 0.0,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if not callable(net):
            raise ConfigError(f"net={net!r} is not callable: give a factory (Hydra "
                              "`_partial_: true`) called as net(input_shape=..., num_classes=...)")
        if not callable(optimizer):
            raise ConfigError(f"optimizer={optimizer!r} is not callable: give a factory (Hydra "
                              "`_partial_: true`) called with the model parameters")
        if scheduler is not None and not callable(scheduler):
            raise ConfigError(f"scheduler={scheduler!r} is not callable: give None or a factory "
                              "(Hydra `_partial_: true`) called with the optimizer")
        if scheduler_interval not in ("epoch", "step"):
            raise ConfigError(f"scheduler_interval={scheduler_interval!r} is invalid: use "
                              "'epoch' or 'step'")
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing={label_smoothing!r} is outside [0, 1): pass "
                              "e.g. 0.1")
        num_classes = int(num_classes)
        if num_classes < 2:
            raise ConfigError(f"num_classes={num_classes!r} must be at least 2: take it from "
                              "the data module")
        input_shape = tuple(int(d) for d in input_shape)
        class_names = None if class_names is None else [str(c) for c in class_names]
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(f"class_names has {len(class_names)} names but num_classes="
                              f"{num_classes}: pass one name per class or none")
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])

        self.net = net(input_shape=input_shape, num_classes=num_classes)
        self._optimizer_factory = optimizer
        self._scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.label_smoothing = float(label_smoothing)
        self.num_classes = num_classes
        self.class_names = class_names

        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_f1 = MulticlassF1Score(num_classes, average="macro")
        self.val_f1_per_class = MulticlassF1Score(num_classes, average=None)
        self.val_acc_per_class = MulticlassAccuracy(num_classes, average=None)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_f1 = MulticlassF1Score(num_classes, average="macro")
        self.per_class: dict[str, dict[str, float]] = {}

    @property
    def num_parameters(self) -> int:
        """Number of parameters of the net (trainable or not)."""
        return sum(p.numel() for p in self.net.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(N, num_classes)``."""
        return self.net(x)

    def on_train_epoch_start(self) -> None:
        """Log the learning rate the epoch starts with."""
        optimizers = self.trainer.optimizers
        if optimizers:
            self.log("lr", float(optimizers[0].param_groups[0]["lr"]), on_step=False,
                     on_epoch=True)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
                      ) -> torch.Tensor:
        """Cross-entropy loss of one batch."""
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        self.train_acc(logits, y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Update the validation metrics with one batch."""
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.val_acc(logits, y)
        self.val_f1(logits, y)
        self.val_f1_per_class.update(logits, y)
        self.val_acc_per_class.update(logits, y)
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/f1", self.val_f1, on_step=False, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        """Keep this epoch's per-class F1 and accuracy in ``per_class``."""
        f1 = self.val_f1_per_class.compute().tolist()
        acc = self.val_acc_per_class.compute().tolist()
        self.val_f1_per_class.reset()
        self.val_acc_per_class.reset()
        if self.trainer.sanity_checking:
            return
        self.log("model/params", float(self.num_parameters), on_step=False, on_epoch=True)
        names = self._class_names()
        self.per_class = {
            "f1": {name: float(v) for name, v in zip(names, f1, strict=True)},
            "acc": {name: float(v) for name, v in zip(names, acc, strict=True)},
        }

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Update the test metrics with one batch."""
        x, y = batch
        logits = self(x)
        self.test_acc(logits, y)
        self.test_f1(logits, y)
        self.log("test/loss", F.cross_entropy(logits, y), on_step=False, on_epoch=True,
                 sync_dist=True)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True)
        self.log("test/f1", self.test_f1, on_step=False, on_epoch=True)

    def _class_names(self) -> list[str]:
        if self.class_names is not None:
            return self.class_names
        datamodule = getattr(self.trainer, "datamodule", None)
        names = getattr(datamodule, "class_names", None)
        if names is not None and len(names) == self.num_classes:
            return [str(n) for n in names]
        return [str(i) for i in range(self.num_classes)]

    def configure_optimizers(self) -> Any:
        """The optimizer from its factory, with the scheduler when one is configured."""
        return optimizers_from_factories(self, plateau_monitor="val/loss")
