"""Your own LightningModule and LightningDataModule, trained and swept by ``hpo.train``.

``conf/model/tiny.yaml`` and ``conf/data/moons.yaml`` point ``_target_`` at these classes; run
from this folder (it is then on ``sys.path``) with ``--config-dir conf``. What hpo passes and what
it expects back: docs/your-project.md, "Your own LightningModule".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from sklearn.datasets import make_moons
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class MoonsDataModule(L.LightningDataModule):
    """Two interleaved half-moons (scikit-learn, no download): 2 features, 2 classes."""

    def __init__(self, *, batch_size: int = 64, n_samples: int = 1000, noise: float = 0.25,
                 seed: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size  # hpo halves it on out-of-memory and sweeps it
        self.n_samples, self.noise, self.seed = n_samples, noise, seed

    def model_kwargs(self) -> dict[str, Any]:
        """What the model needs from the data: hpo passes these to the model's constructor."""
        return {"in_features": 2, "num_classes": 2}

    def setup(self, stage: str | None = None) -> None:
        x, y = make_moons(n_samples=self.n_samples, noise=self.noise, random_state=self.seed)
        data = TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y))
        n_val = self.n_samples // 5
        gen = torch.Generator().manual_seed(self.seed)
        self.train_set, self.val_set = torch.utils.data.random_split(
            data, [self.n_samples - n_val, n_val], generator=gen)

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.val_set, batch_size=256)


class TinyClassifier(L.LightningModule):
    """An MLP that logs ``val/acc`` and ``val/loss`` (hpo's default objective and monitors).

    Args:
        optimizer: From ``optimizer=adamw|adam|sgd``: a factory, called with the parameters.
        in_features, num_classes: From the data module's ``model_kwargs()``.
        scheduler: From ``scheduler=...``: a factory called with the optimizer, or None.
        hidden, depth: This model's own sizes (``model.hidden``, ``model.depth``): sweep them.
    """

    def __init__(self, *, optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
                 in_features: int, num_classes: int, scheduler: Any = None, hidden: int = 32,
                 depth: int = 2) -> None:
        super().__init__()
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, num_classes))
        self.loss = nn.CrossEntropyLoss()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss(self.net(x), y)
        self.log("train/loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.log("val/loss", self.loss(logits, y), on_epoch=True)
        self.log("val/acc", (logits.argmax(-1) == y).float().mean(), on_epoch=True)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}
